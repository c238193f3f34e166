"""Quality of trained generators on the 50 scoring conditions x 30 samples: raw and refined, and what
the model contributes to the refined pipeline.

Retrains each config with several seeds (the same `train` a trial and `retrain` run) and measures, on
`scoring_dataset.pt`:

- raw posterior draws (one decoder pass per sample; `generate` by default);
- raw coverage draws (`generate --draw coverage`: every distinct hypothesis first; component latents);
- with `--max-spread S ...`, both of those from only the hypotheses at most S broad (`generate --max-spread`);
- the refined pipeline at each `--oversample` K (`generate --refine STEPS --oversample K`), from model
  draws (coverage draws for component latents, posterior for Gaussian ones; for hypotheses latents also
  `--draw coverage --within spread --temperature 0 [--min-weight 0.001]`: K distinct starts per hypothesis,
  every hypothesis of weight >= 0.01 [0.001] alike) and, at the same LM budget and K, from random prior lines: the difference is what the model
  contributes;
- next to them, the limits of the exact posterior: the expected mode recall of S independent draws
  (`metrics.expected_recall`, T = 1) and of distinct draws (every mode of a y with at most S modes).

Prints mean ± std over seeds, one row per source and draw, then raw recall split by how many exact
solutions a y has (1-8, 9-15, 16 or more) beside the exact posterior's there, and writes per-seed
figures as JSON.

    python benchmarks/quality.py --configs studies/best/cvae_re.yaml studies/best/cvae.yaml
    python benchmarks/quality.py --configs studies/best/cvae_re.yaml --seeds 0 --epochs 2   # quick look
    python benchmarks/quality.py --trained storage/retrain/cvae_re/checkpoint.pt            # a retrained model

With `--trained CHECKPOINT ...` the models are not trained again: each checkpoint (from `retrain`, a
trial or the report) is scored as one seed of its file's folder name.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line  # noqa: E402
from cvae_opt.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402
from cvae_opt.config import Config  # noqa: E402
from cvae_opt.data import load_pairs, resolve_data_path, draw_models  # noqa: E402
from cvae_opt.metrics import enumerate_solutions, evaluate_samples, expected_recall, mode_weights, solutions_found  # noqa: E402
from cvae_opt.problems import LineProblem as Problem, resolve_problem  # noqa: E402
from cvae_opt.posterior import Posterior, SamplingOptions  # noqa: E402
from cvae_opt.refine import refine, select_diverse  # noqa: E402
from cvae_opt.train import train  # noqa: E402

DEFAULT_CONFIGS = ["studies/best/cvae_re.yaml", "studies/best/cvae.yaml"]
SCORING = "two_birds:scoring"  # the package's copy (CVAE_OPT_CHALLENGE_DATA overrides)
COLUMNS = [("mode_precision", "precision"), ("mode_recall", "recall"), ("valid_fraction", "valid"),
           ("misfit_rmse", "misfit RMSE"), ("r2", "R²"), ("slope_signs", "slopes"), ("seconds", "seconds")]


def random_lines_refined(problem: Problem, y: torch.Tensor, n: int, oversample: int, steps: int, seed: int) -> torch.Tensor:
    """The refined pipeline from random prior lines instead of model draws: same LM budget, same selection."""
    m = y.shape[0]
    x = draw_models(problem, m * n * oversample, torch.Generator().manual_seed(10_000 + seed))
    x = refine(problem, x.view(m, n * oversample, *x.shape[1:]), y, steps)
    return select_diverse(problem, x, y, n) if oversample > 1 else x


CROWDING = [(1, 8), (9, 15), (16, math.inf)]  # solutions per y: the buckets recall is split by


def crowding_rows(name: str, x: torch.Tensor, sols: list[np.ndarray], w: list[np.ndarray], samples: int) -> list[dict]:
    """Recall split by how many exact solutions a y has, beside the exact posterior's expected recall
    there: pooled recall counts every solution once, so the crowded conditions (16 to 29 solutions on
    the scoring set) weigh most, and that is where the misses were (docs/findings.md section W)."""
    found = solutions_found(x, sols)
    out = []
    for lo, hi in CROWDING:
        idx = [g for g, s in enumerate(sols) if lo <= len(s) <= hi]
        n_sol = sum(len(sols[g]) for g in idx)
        if n_sol:
            out.append({"row": name, "solutions_per_y": f"{lo}-{hi}" if hi < math.inf else f">= {lo}",
                        "conditions": len(idx), "solutions": n_sol,
                        "recall": sum(int(found[g].sum()) for g in idx) / n_sol,
                        "exact_posterior": expected_recall([w[g] for g in idx], samples)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, help="override every config's epochs (quick looks only)")
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--refine", type=int, default=40, help="LM iterations of the refined pipeline")
    ap.add_argument("--oversample", nargs="+", type=int, default=[1, 2, 3, 30])
    ap.add_argument("--scoring", default=SCORING, help="conditions file or built-in name (two_birds:validation to choose configs)")
    ap.add_argument("--first", type=int, help="only the first N conditions of that file")
    ap.add_argument("--out", default="reports/quality.json")
    ap.add_argument("--checkpoints", help="folder to save each trained model in (NAME-seedS.pt), for plots")
    ap.add_argument("--trained", nargs="+", help="score these checkpoints instead of training --configs")
    ap.add_argument("--max-spread", nargs="*", type=float, default=[],
                    help="also raw posterior and coverage draws of only the hypotheses at most this broad "
                         "(`generate --max-spread`; hypotheses latents), one pair of rows per value")
    args = ap.parse_args()
    rows: dict[str, list[dict]] = {}
    crowding: list[dict] = []

    def add(name: str, m: dict) -> None:
        rows.setdefault(name, []).append(m)

    def measure(name: str, problem: Problem, y: torch.Tensor, sols: list, fn, split: str = "",
                weights: list | None = None) -> dict:
        """One row's metrics; with `split` (its label there) and the solutions' `weights` also its recall by
        crowding."""
        t0 = time.perf_counter()
        x = fn()
        m = evaluate_samples(problem, x, y, sols)
        m["seconds"] = time.perf_counter() - t0
        add(name, m)
        if split:
            crowding.extend(crowding_rows(split, x, sols, weights, args.samples))
        return m

    limits: dict[str, float] = {}
    sources = args.trained or args.configs
    for path in sources:
        if not Path(path).is_file():
            print(f"skipping {path}: no such file", flush=True)
            continue
        trained = None
        if args.trained:
            trained = load_checkpoint(path)
            base = trained[1]
        else:
            base = Config.from_yaml_file(path)
        problem = resolve_problem(base.data.problem)
        y = load_pairs(args.scoring, problem).y[: args.first]
        sols = enumerate_solutions(problem, y)
        w = mode_weights(problem, sols)
        limits = {
            f"exact posterior, {args.samples} independent draws (expected recall)": expected_recall(w, args.samples),
            f"exact posterior at T = 0.5, {args.samples} draws": expected_recall(w, args.samples, 0.5),
            f"distinct modes, {args.samples} per y (coverage limit)":
                sum(min(len(s), args.samples) for s in sols) / sum(len(s) for s in sols),
        }
        name = Path(path).parent.name if trained else Path(path).stem
        for seed in [base.train.seed] if trained else args.seeds:
            cfg = Config.from_dict(base.to_dict())
            cfg.train.seed = seed
            if args.epochs:
                cfg.train.epochs = args.epochs
            t0 = time.perf_counter()
            model = trained[0] if trained else train(cfg).model
            train_s = time.perf_counter() - t0
            if trained:  # the retrain's own training seconds (metrics.json beside the checkpoint), if it wrote them
                meta = Path(path).parent / "metrics.json"
                train_s = float(json.loads(meta.read_text()).get("seconds", "nan")) if meta.is_file() else float("nan")
            if args.checkpoints:
                save_checkpoint(Path(args.checkpoints) / f"{Path(path).stem}-seed{seed}.pt", model, cfg)
            comp = model.latent.has_components
            raw = measure(f"{name} raw, posterior", problem, y, sols,
                          lambda: Posterior(model, problem).sample(y, args.samples, seed=seed),
                          split=f"{name} seed {seed}, posterior", weights=w)
            raw["train_seconds"] = train_s
            line = f"{name} seed {seed}: trained {train_s:.0f}s; raw posterior precision {raw['mode_precision']:.3f} " \
                   f"recall {raw['mode_recall']:.3f} misfit {raw['misfit_rmse']:.3f}"
            draw = "coverage" if comp else "posterior"
            if comp:
                cov = measure(f"{name} raw, coverage", problem, y, sols,
                              lambda: Posterior(model, problem).sample(y, args.samples, SamplingOptions(draw="coverage"), seed=seed),
                              split=f"{name} seed {seed}, coverage", weights=w)
                line += f"; coverage precision {cov['mode_precision']:.3f} recall {cov['mode_recall']:.3f}"
            for s_max in args.max_spread if model.latent.has_spread else []:
                for how in ("posterior", "coverage"):
                    row = f"{name} raw, {how}, max spread {s_max:g}"
                    r = measure(row, problem, y, sols, lambda: Posterior(model, problem).sample(
                        y, args.samples, SamplingOptions(draw=how, max_spread=s_max), seed=seed),
                        split=f"{name} seed {seed}, {how}, max spread {s_max:g}", weights=w)
                    line += f"; {how} max spread {s_max:g} precision {r['mode_precision']:.3f} recall {r['mode_recall']:.3f}"
            starts = [(f"{draw} draws", "", {"draw": draw})]
            if model.latent.has_spread:  # distinct starts from one hypothesis: draws within its learnt spread,
                # every hypothesis of weight >= 0.01 alike (temperature 0), chosen on validation (findings P)
                starts.append(("coverage draws within spread at T 0", " within spread",
                               {"draw": "coverage", "within": "spread", "temperature": 0.0}))
                # the same with hypotheses down to weight 0.001 eligible (`--min-weight 0.001`)
                starts.append(("coverage draws within spread at T 0, min weight 0.001", " within spread w>=0.001",
                               {"draw": "coverage", "within": "spread", "temperature": 0.0, "min_weight": 0.001}))
            for label, short, opts in starts:
                for k in args.oversample:
                    r = measure(f"{name} refined, {label}, oversample {k}", problem, y, sols,
                                lambda: Posterior(model, problem).sample(y, args.samples, SamplingOptions(
                                    refine_steps=args.refine, oversample=k, **opts), seed=seed))
                    line += f"; refined{short} x{k} recall {r['mode_recall']:.3f}"
            print(line, flush=True)
        for seed in args.seeds if path == sources[0] else []:
            for k in args.oversample:
                measure(f"random prior lines refined, oversample {k}", problem, y, sols,
                        lambda: random_lines_refined(problem, y, args.samples, k, args.refine, seed))

    print()
    print(machine_line(f"Quality on {resolve_data_path(args.scoring).name}, {args.samples} samples per y, tolerance 0.02, "
                       f"mean ± std over seeds {args.seeds}, refined = LM {args.refine} iterations"))
    print("| source and draw | " + " | ".join(label for _, label in COLUMNS) + " |")
    print("|" + " --- |" * (1 + len(COLUMNS)))
    for name, ms in rows.items():
        cells = []
        for key, _ in COLUMNS:
            v = np.array([m[key] for m in ms])
            cells.append(f"{v.mean():.3f} ± {v.std():.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for label, v in limits.items():
        print(f"| {label} | | {v:.3f} | | | | | |")
    if crowding:
        print("\nRaw recall by how many exact solutions a y has (exact posterior: expected recall of as many "
              "independent draws):")
        print("| model and draw | solutions per y | conditions | solutions | recall | exact posterior |")
        print("| --- | --- | --- | --- | --- | --- |")
        for c in crowding:
            print(f"| {c['row']} | {c['solutions_per_y']} | {c['conditions']} | {c['solutions']} | {c['recall']:.3f} | "
                  f"{c['exact_posterior']:.3f} |")
    train_s = {n: [m["train_seconds"] for m in ms] for n, ms in rows.items() if "train_seconds" in ms[0]}
    for n, v in train_s.items():
        print(f"training seconds, {n.removesuffix(' raw, posterior')}: {np.mean(v):.0f} ± {np.std(v):.0f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "limits": limits, "crowding": crowding}, indent=2))
    print(f"\nper-seed figures: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
