"""Quality of trained generators on the 50 scoring conditions x 30 samples, raw and refined.

Retrains each config with several seeds (the same `train` a trial and `retrain` run), generates for
`scoring_dataset.pt`, evaluates the raw generator (one decoder pass per sample) and the refined
pipeline (`generate --refine STEPS --oversample K`) side by side, and prints mean ± std over seeds.

    python benchmarks/quality.py                              # seed recipe and both best configs, 3 seeds
    python benchmarks/quality.py --configs studies/best/cvae_re.yaml --seeds 0 --epochs 2   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cvae_opt.config import Config  # noqa: E402
from cvae_opt.data import load_pairs  # noqa: E402
from cvae_opt.generate import generate_samples  # noqa: E402
from cvae_opt.metrics import enumerate_solutions, evaluate_samples  # noqa: E402
from cvae_opt.problems import resolve_problem  # noqa: E402
from cvae_opt.train import train  # noqa: E402

DEFAULT_CONFIGS = ["studies/baselines/seed_recipe.yaml", "studies/best/cvae.yaml", "studies/best/cvae_re.yaml"]
SCORING = os.environ.get("CVAE_OPT_CHALLENGE_DATA", str(ROOT.parent / "shared" / "challenge-data")) + "/scoring_dataset.pt"
ROWS = [("misfit_rmse", "misfit RMSE"), ("r2", "straightness R²"), ("slope_signs", "slope signs right"),
        ("mode_precision", "mode precision"), ("mode_recall", "mode recall"), ("seconds", "generate 50 x 30 (s)")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, help="override every config's epochs (quick looks only)")
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--refine", type=int, default=40)
    ap.add_argument("--refine-method", default="lm")
    ap.add_argument("--oversample", type=int, default=30)
    ap.add_argument("--scoring", default=SCORING)
    ap.add_argument("--out", default="reports/quality.json")
    args = ap.parse_args()
    results: dict[str, dict[str, list[dict]]] = {}
    for path in args.configs:
        if not Path(path).is_file():
            print(f"skipping {path}: no such file", flush=True)
            continue
        base = Config.from_yaml_file(path)
        problem = resolve_problem(base.data.problem)
        scoring = load_pairs(args.scoring, problem)
        sols = enumerate_solutions(problem, scoring.y)
        name = Path(path).stem
        results[name] = {"raw": [], "refined": []}
        for seed in args.seeds:
            cfg = Config.from_dict(base.to_dict())
            cfg.train.seed = seed
            if args.epochs:
                cfg.train.epochs = args.epochs
            t0 = time.perf_counter()
            res = train(cfg)
            train_s = time.perf_counter() - t0
            for mode, opts in (("raw", {}), ("refined", {"refine_steps": args.refine, "refine_method": args.refine_method,
                                                   "oversample": args.oversample, "problem": problem})):
                t0 = time.perf_counter()
                x = generate_samples(res.model, scoring.y, args.samples, seed=seed, **opts)
                gen_s = time.perf_counter() - t0
                m = evaluate_samples(problem, x, scoring.y, sols)
                m.update(seconds=gen_s, train_seconds=train_s)
                results[name][mode].append(m)
            print(f"{name} seed {seed}: trained {train_s:.0f}s; raw misfit {results[name]['raw'][-1]['misfit_rmse']:.3f} "
                  f"recall {results[name]['raw'][-1]['mode_recall']:.3f}; refined misfit "
                  f"{results[name]['refined'][-1]['misfit_rmse']:.3f} recall {results[name]['refined'][-1]['mode_recall']:.3f}",
                  flush=True)
    print()
    print(f"Quality on {Path(args.scoring).name}: {args.samples} samples per y, tolerance 0.02, mean ± std over seeds "
          f"{args.seeds}; refined = --refine {args.refine} --refine-method {args.refine_method} "
          f"--oversample {args.oversample}. "
          f"{date.today()}, {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}.")
    header = "| metric | " + " | ".join(f"{n} raw | {n} refined" for n in results) + " |"
    print(header)
    print("|" + " --- |" * (1 + 2 * len(results)))
    for key, label in ROWS:
        cells = []
        for n in results:
            for mode in ("raw", "refined"):
                v = np.array([m[key] for m in results[n][mode]])
                cells.append(f"{v.mean():.3f} ± {v.std():.3f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nper-seed figures: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
