"""The refined pipeline's two levers, measured side by side on the 50 scoring conditions:

1. the solver: Adam steps vs Levenberg-Marquardt iterations, from the same random prior lines
   (share of refined samples that are valid, recall of the whole pool, seconds);
2. the starting points: a checkpoint's draws vs random prior lines, both refined with LM and
   reduced to 30 per y by the diverse selection (precision, recall, misfit, seconds).

    python benchmarks/refine.py                                        # solvers only
    python benchmarks/refine.py --checkpoint storage/retrain/cvae_re/checkpoint.pt --oversample 10 30
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line  # noqa: E402
from cvae_opt.checkpoints import load_checkpoint  # noqa: E402
from cvae_opt.data import load_pairs, resolve_data_path, draw_models  # noqa: E402
from cvae_opt.posterior import Posterior, SamplingOptions  # noqa: E402
from cvae_opt.metrics import enumerate_solutions, evaluate_samples  # noqa: E402
from cvae_opt.problems import TWO_BIRDS  # noqa: E402
from cvae_opt.refine import refine, select_diverse  # noqa: E402

SCORING = "two_birds:scoring"  # the package's copy (CVAE_OPT_CHALLENGE_DATA overrides)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starts", type=int, default=100, help="random starts per y for the solver comparison")
    ap.add_argument("--solvers", nargs="+", default=["adam:600", "lm:30", "lm:40", "lm:60"], help="METHOD:STEPS")
    ap.add_argument("--checkpoint", help="also compare this model's draws with random starts")
    ap.add_argument("--steps", type=int, default=40, help="LM iterations for the starting-point comparison")
    ap.add_argument("--oversample", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--scoring", default=SCORING)
    args = ap.parse_args()
    problem = TWO_BIRDS
    scoring = load_pairs(args.scoring, problem)
    sols = enumerate_solutions(problem, scoring.y)
    m = len(scoring)
    print(machine_line(f"refinement, {resolve_data_path(args.scoring).name}, {m} conditions"))
    print(f"\nsolvers, {args.starts} random prior starts per y:")
    print("| solver | seconds | valid share | pool recall |")
    print("| --- | --- | --- | --- |")
    x0 = draw_models(problem, m * args.starts, torch.Generator().manual_seed(0)).reshape(m, args.starts, 50, 2)
    for spec in args.solvers:
        method, _, steps = spec.partition(":")
        t0 = time.perf_counter()
        x = refine(problem, x0, scoring.y, int(steps), method=method)
        dt = time.perf_counter() - t0
        r = evaluate_samples(problem, x, scoring.y, sols)
        print(f"| {method} {steps} | {dt:.1f} | {r['valid_fraction']:.3f} | {r['mode_recall']:.3f} |", flush=True)
    if not args.checkpoint:
        return 0
    model, _, _ = load_checkpoint(args.checkpoint, torch.device("cpu"))
    print(f"\nstarting points, LM {args.steps}, 30 kept per y (diverse selection):")
    print("| starts | oversample | seconds | misfit RMSE | precision | recall |")
    print("| --- | --- | --- | --- | --- | --- |")
    for k in args.oversample:
        t0 = time.perf_counter()
        x = Posterior(model, problem).sample(scoring.y, 30, SamplingOptions(refine_steps=args.steps, oversample=k), seed=0)
        rows = [("model draws", time.perf_counter() - t0, evaluate_samples(problem, x, scoring.y, sols))]
        t0 = time.perf_counter()
        xr = draw_models(problem, m * 30 * k, torch.Generator().manual_seed(0)).reshape(m, 30 * k, 50, 2)
        xr = select_diverse(problem, refine(problem, xr, scoring.y, args.steps), scoring.y, 30)
        rows.append(("random prior lines", time.perf_counter() - t0, evaluate_samples(problem, xr, scoring.y, sols)))
        for name, dt, r in rows:
            print(f"| {name} | {k} | {dt:.1f} | {r['misfit_rmse']:.4f} | {r['mode_precision']:.3f} | {r['mode_recall']:.3f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
