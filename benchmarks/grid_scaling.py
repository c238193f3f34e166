"""How training and sampling time grow with the gravity grid: 16 x 32 (512 cells, 32 stations), 32 x 64
(2,048 cells, 64 stations) and 64 x 128 (8,192 cells, 128 stations, timing only: no exact posterior).

For each grid, the committed gravity best (`studies/best/gravity_re.yaml`: cvae_re, Gaussian latent,
structured decoder noise) with its MLP body, the same networks with the strided-convolution body
(channels 16, 32; kernels 5, 5: two stride-2 layers, each halving both sides), and the MLP body with the
fixed decoder scale (no full covariance of x to keep up to date). Each is trained for 2 epochs of
`--pairs` fresh pairs (the `train` a trial runs); the second epoch's seconds are scaled to an epoch of the
config's 20,000 pairs. Then the time to draw 200 samples for each of 50 surveys, the time to draw one
epoch's 20,000 prior pairs (models and their data), and, where the grid has one, 200 exact-posterior
draws for each of the 50 surveys.

    python benchmarks/grid_scaling.py                  # every grid (about 10 minutes on 2 cores)
    python benchmarks/grid_scaling.py --grids default 32x64 --pairs 2560
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line  # noqa: E402

from cvae_opt.config import Config  # noqa: E402
from cvae_opt.data import draw_pairs  # noqa: E402
from cvae_opt.gravity import GEOMETRIES  # noqa: E402
from cvae_opt.posterior import Posterior  # noqa: E402
from cvae_opt.problems import resolve_problem  # noqa: E402
from cvae_opt.train import train  # noqa: E402

PROBLEMS = {"default": "gravity2d", "32x64": "gravity2d_32x64", "64x128": "gravity2d_64x128"}
VARIANTS = {  # label -> overrides of the committed best's model section
    "MLP body, structured noise (the best)": {},
    "conv body, structured noise": {"body": "conv", "channels": [16, 32], "kernels": [5, 5]},
    "MLP body, fixed scale": {"decoder_scale": "fixed"},
}


def timed(fn, repeats: int = 3) -> float:  # noqa: ANN001
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grids", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    ap.add_argument("--pairs", type=int, default=5120, help="pairs per timed epoch (scaled to 20,000)")
    ap.add_argument("--config", default=str(ROOT / "studies/best/gravity_re.yaml"))
    args = ap.parse_args(argv)
    base = Config.from_yaml_file(args.config)
    full = base.data.train_size
    print(machine_line(f"grid scaling, {args.config}, {torch.get_num_threads()} threads; "
                       f"epoch = {full:,} pairs (timed on {args.pairs:,}), sampling 50 surveys x 200"))
    print("| grid | cells | stations | model | parameters | epoch (s) | 50 x 200 samples (s) |"
          " 20,000 prior pairs (s) | 50 x 200 exact posterior (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for grid in args.grids:
        problem = resolve_problem(PROBLEMS[grid])
        geo = GEOMETRIES[grid]
        gen = torch.Generator().manual_seed(0)
        y = draw_pairs(problem, 50, gen, noise=problem.noise).y.float()
        prior_s = timed(lambda: draw_pairs(problem, full, torch.Generator().manual_seed(1), noise=problem.noise), 2)
        exact_s = (f"{timed(lambda: problem.posterior.sample(y, 200, seed=0), 2):.2f}"
                   if problem.posterior is not None else "left out (dense 8,192-cell covariance)")
        for label, overrides in VARIANTS.items():
            cfg = Config.from_dict(base.to_dict())
            cfg.data.problem, cfg.data.train_size, cfg.data.val_size = PROBLEMS[grid], args.pairs, 100
            cfg.train.epochs, cfg.train.eval_conditions = 2, 0
            for k, v in overrides.items():
                setattr(cfg.model, k, v)
            res = train(cfg)
            epoch = res.history[1]["epoch_seconds"] * full / args.pairs
            n_par = sum(p.numel() for p in res.model.parameters())
            post = Posterior(res.model, res.problem)
            with torch.no_grad():
                sample_s = timed(lambda: post.sample(y, 200, seed=0), 2)
            print(f"| {geo.nz} x {geo.nx} | {geo.nz * geo.nx:,} | {geo.n_stations} | {label} | {n_par / 1e6:.1f} M | "
                  f"{epoch:.1f} | {sample_s:.2f} | {prior_s:.2f} | {exact_s} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
