"""Quality of gravity generators on held-out surveys, next to the limits: the exact posterior's own
samples (gaussian prior), prior draws (the floor) and a Tikhonov least-squares inversion (one model).

On the 50 held-out conditions of `PROBLEM:test` (gravity2d, gravity2d_blocks and their 32 x 64 grids; never used for training or
choosing configs), S samples each (default 200), every metric of `cvae_opt.field_metrics`. Also the
time to draw 200 samples for one survey after loading (median of 50 calls, one thread and all threads).

    python benchmarks/gravity.py --problem gravity2d --checkpoint runs/gravity_re/checkpoint.pt
    python benchmarks/gravity.py --problem gravity2d_blocks --checkpoint runs/gravity_re_blocks/checkpoint.pt
    python benchmarks/gravity.py --problem gravity2d          # the reference rows only
    python benchmarks/gravity.py --problem gravity2d --conditions validation --checkpoint ...   # to choose

`--conditions validation`: the first 50 validation truths the studies choose on (the data config's
validation draw, seed 0, 1,000 pairs), for comparing configs; the test set gives the final figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line  # noqa: E402

from cvae_opt.api import conditions, load_generator  # noqa: E402
from cvae_opt.config import DataConfig  # noqa: E402
from cvae_opt.data import load_pairs, load_validation  # noqa: E402
from cvae_opt.field_metrics import evaluate_field_samples  # noqa: E402
from cvae_opt.problems import resolve_problem  # noqa: E402

SHOWN = ["chi2_median", "chi2_le2", "mean_error", "std_ratio_p10", "std_ratio_p90", "coverage_50_constrained",
         "coverage_90_constrained", "coverage_50", "coverage_90", "sbc_ks", "energy_score", "crps", "diversity"]


def tikhonov(problem, y: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """The damped least-squares model: argmin |Gx - y|^2 / noise^2 + |x|^2 / scale^2, one per y: (M, 1, ...)."""
    G = problem.forward.G.double().numpy()
    lam = (problem.noise / problem.x_scale) ** 2
    yy = y.double().reshape(len(y), -1).numpy()
    x = yy @ np.linalg.solve(G @ G.T + lam * np.eye(len(G)), G)  # G^T (G G^T + lam I)^-1 y, row-wise
    return torch.from_numpy(x).reshape(len(y), 1, *problem.x_shape)


def generation_ms(gen, y: torch.Tensor, n: int = 200, repeats: int = 50) -> float:  # noqa: ANN001
    gen.sample(y[:1], n)  # warm-up
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        gen.sample(y[i % len(y) : i % len(y) + 1], n, seed=i)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problem", default="gravity2d",
                    choices=["gravity2d", "gravity2d_blocks", "gravity2d_32x64", "gravity2d_32x64_blocks"])
    ap.add_argument("--checkpoint", nargs="*", default=[], help="trained generators to score (raw samples)")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--conditions", choices=["test", "validation"], default="test",
                    help="test: the 50 held-out truths (final figures); validation: the first 50 the studies choose on")
    args = ap.parse_args(argv)
    problem = resolve_problem(args.problem)
    if args.conditions == "test":
        pairs = load_pairs(f"{args.problem}:test", problem)
    else:
        val = load_validation(DataConfig(problem=args.problem, val_size=1000, seed=0), problem)
        pairs = type(val)(val.x[:50], val.y[:50])
    y, truth = pairs.y, pairs.x
    s = args.samples
    where = "held-out" if args.conditions == "test" else "validation"
    print(machine_line(f"gravity quality, {args.problem}, {len(y)} {where} conditions x {s} samples"))
    rows: dict[str, dict[str, float]] = {}
    for ckpt in args.checkpoint:
        gen = load_generator(ckpt)
        samples = gen.sample(conditions(y, problem), s, seed=0)
        rows[f"CVAE {Path(ckpt).parent.name or ckpt}"] = evaluate_field_samples(problem, samples.x, y, truth)
        threads = torch.get_num_threads()
        ms_all = generation_ms(gen, y)
        torch.set_num_threads(1)
        ms_one = generation_ms(gen, y)
        torch.set_num_threads(threads)
        rows[f"CVAE {Path(ckpt).parent.name or ckpt}"]["ms_200_samples"] = ms_all
        print(f"{ckpt}: 200 samples for one survey in {ms_all:.2f} ms ({threads} threads), {ms_one:.2f} ms (1 thread)")
    if problem.posterior is not None:
        rows["exact posterior (limit)"] = evaluate_field_samples(problem, problem.posterior.sample(y, s, seed=1), y, truth)
    prior = problem.draw_prior(len(y) * s, torch.Generator().manual_seed(5), torch.float64).view(len(y), s, *problem.x_shape)
    rows["prior draws (floor)"] = evaluate_field_samples(problem, prior, y, truth)
    rows["Tikhonov (one model)"] = evaluate_field_samples(problem, tikhonov(problem, y), y, truth)
    shown = [k for k in SHOWN if any(k in r for r in rows.values())]
    width = max(len(r) for r in rows) + 2
    print(" " * width + "".join(f"{k[:14]:>15}" for k in shown))
    for name, r in rows.items():
        print(f"{name:<{width}}" + "".join(f"{r[k]:>15.3f}" if k in r else f"{'-':>15}" for k in shown))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
