"""Which early value predicts the full-budget value: the fidelity measurement a multi-fidelity pruner
needs (issue 25). Random configs from a study's search space are trained to a full budget, every epoch
recorded; for each candidate objective metric the table gives Spearman's rank correlation, over the
configs, between its value at each rung and its value at the full budget (and with the final mode
recall, what users judge). A pruner's rung is only as good as that correlation.

    python benchmarks/fidelity.py --study cvae_re --configs 20 --epochs 100 --train-size 5000
    python benchmarks/fidelity.py --from reports/fidelity.json      # the table again from the curves
    python benchmarks/fidelity.py --from-study cvae_re --storage sqlite:///storage/cvae_opt.db

`--from-study` reads a study's own curves (its objective's reported values): for each pair of rungs,
the rank correlation between the values at the lower rung and at the higher one over the trials that
reached the higher one, and, at each rung, the best trial of each latent type there: what its pruner
saw when it promoted or stopped them.

Curves are written to --out after every config, so a run stopped early (--max-seconds) still gives a
table of the configs it finished.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line  # noqa: E402

CANDIDATES = ("score", "mode_precision", "mode_recall", "mode_pr", "val_loss")


def with_combinations(m: dict[str, float]) -> dict[str, float]:
    out = {k: float(m[k]) for k in CANDIDATES if k in m}
    if "mode_precision" in m and "mode_recall" in m:
        out["mode_pr"] = math.sqrt(max(m["mode_precision"], 0.0) * max(m["mode_recall"], 0.0))  # as metrics.py
    return out


def record(args: argparse.Namespace) -> list[dict]:
    import torch

    from cvae_opt.studies import load_study_file, suggest_config
    from cvae_opt.train import Training

    torch.set_num_threads(max(1, torch.get_num_threads()))
    spec = load_study_file(args.study)
    sampler = optuna.samplers.RandomSampler(seed=args.seed)
    study = optuna.create_study(sampler=sampler)
    curves: list[dict] = []
    t_start = time.perf_counter()
    for i in range(args.configs):
        if args.max_seconds and time.perf_counter() - t_start > args.max_seconds:
            print(f"stopped after {i} configs: --max-seconds {args.max_seconds} reached", flush=True)
            break
        trial = study.ask()
        cfg = suggest_config(trial, spec)
        cfg.train.epochs, cfg.data.train_size, cfg.train.device = args.epochs, args.train_size, "cpu"
        t0 = time.perf_counter()
        history = [with_combinations(m) for m in Training(cfg).epochs()]
        study.tell(trial, history[-1].get("score", 0.0))
        curves.append({"params": trial.params, "history": history, "seconds": time.perf_counter() - t0})
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"epochs": args.epochs, "train_size": args.train_size,
                                              "study": args.study, "curves": curves}))
        last = history[-1]
        print(f"config {i + 1}/{args.configs}: {trial.params.get('latent_type')}, {curves[-1]['seconds']:.0f} s, final "
              f"precision {last.get('mode_precision', float('nan')):.3f} recall {last.get('mode_recall', float('nan')):.3f} "
              f"score {last.get('score', float('nan')):.4f}; elapsed {time.perf_counter() - t_start:.0f} s", flush=True)
    return curves


def table(curves: list[dict], rungs: list[int]) -> None:
    from scipy.stats import spearmanr

    n_epochs = min(len(c["history"]) for c in curves)
    rungs = [r for r in rungs if r <= n_epochs]
    print(f"| metric (n = {len(curves)} configs) | " + " | ".join(f"epoch {r}" for r in rungs)
          + f" | epoch {rungs[-1] if rungs else '-'} vs final mode recall |")
    print("| --- | " + " | ".join("---" for _ in rungs) + " | --- |")
    for m in CANDIDATES:
        final = [c["history"][n_epochs - 1].get(m, math.nan) for c in curves]
        recall = [c["history"][n_epochs - 1].get("mode_recall", math.nan) for c in curves]
        cells = []
        for r in rungs:
            early = [c["history"][r - 1].get(m, math.nan) for c in curves]
            rho = spearmanr(early, final, nan_policy="omit").statistic
            cells.append(f"{rho:.2f}")
        last = [c["history"][rungs[-1] - 1].get(m, math.nan) for c in curves] if rungs else []
        sign = -1.0 if m == "val_loss" else 1.0  # lower is better
        rho_recall = spearmanr([sign * v for v in last], recall, nan_policy="omit").statistic if rungs else math.nan
        print(f"| {m} | " + " | ".join(cells) + f" | {rho_recall:.2f} |")


def study_table(name: str, storage: str, rungs: list[int]) -> None:
    from scipy.stats import spearmanr

    study = optuna.load_study(study_name=name, storage=storage)
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    print(machine_line(f"fidelity from study {name!r}: {len(trials)} trials with reported values, "
                       f"objective {study.metric_names or ['value']}"))
    print("| from rung | to rung | trials reaching it | Spearman |")
    print("| --- | --- | --- | --- |")
    for i, r in enumerate(rungs):
        for big in rungs[i + 1:]:
            both = [t for t in trials if r in t.intermediate_values and big in t.intermediate_values]
            if len(both) >= 3:
                rho = spearmanr([t.intermediate_values[r] for t in both], [t.intermediate_values[big] for t in both]).statistic
                print(f"| {r} | {big} | {len(both)} | {rho:.2f} |")
    print()
    print("| rung | trials | best value by latent type (trial) |")
    print("| --- | --- | --- |")
    for r in rungs:
        at = [t for t in trials if r in t.intermediate_values]
        best: dict[str, tuple[float, int]] = {}
        for t in at:
            # searched, or fixed by the study file (then only in the trial's recorded config)
            kind = str(t.params.get("latent_type") or t.user_attrs.get("config", {}).get("model", {}).get("latent_type", "-"))
            if kind not in best or t.intermediate_values[r] > best[kind][0]:
                best[kind] = (t.intermediate_values[r], t.number)
        cells = ", ".join(f"{k} {v:.4f} ({n})" for k, (v, n) in sorted(best.items(), key=lambda kv: -kv[1][0]))
        print(f"| {r} | {len(at)} | {cells} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="cvae_re")
    ap.add_argument("--configs", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=100, help="the full budget")
    ap.add_argument("--train-size", type=int, default=5000, help="fresh pairs per epoch")
    ap.add_argument("--rungs", nargs="+", type=int, default=[1, 3, 9, 27, 81])
    ap.add_argument("--seed", type=int, default=0, help="the random sampler's seed")
    ap.add_argument("--max-seconds", type=float, help="start no new config after this many seconds")
    ap.add_argument("--out", default="reports/fidelity.json")
    ap.add_argument("--from", dest="source", help="print the table from recorded curves instead of training")
    ap.add_argument("--from-study", help="print the rung-to-rung table of this study's own curves (with --storage)")
    ap.add_argument("--storage", default="sqlite:///storage/cvae_opt.db")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.from_study:
        study_table(args.from_study, args.storage, args.rungs)
        return 0
    if args.source:
        data = json.loads(Path(args.source).read_text())
        curves = [c | {"history": [with_combinations(m) for m in c["history"]]} for c in data["curves"]]
        print(machine_line(f"fidelity, study {data['study']}, {len(curves)} random configs x {data['epochs']} epochs "
                           f"of {data['train_size']} fresh pairs (recorded)"))
    else:
        print(machine_line(f"fidelity, study {args.study}, {args.configs} random configs x {args.epochs} epochs "
                           f"of {args.train_size} fresh pairs"), flush=True)
        curves = record(args)
    if len(curves) >= 3:
        table(curves, args.rungs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
