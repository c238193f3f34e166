"""Choose a pruner from recorded learning curves: replay the per-epoch values of an unpruned study
through Optuna's own pruners, in many trial orders, and print for each candidate the share of epochs
it saves and how often it keeps the study's best trial (an equal best value).

A live comparison (`benchmarks/pruning.py`) costs two studies per candidate and one trial order; a
replay costs seconds per candidate, so many pruners and warm-ups can be compared on the same curves.
What it leaves out: with pruning, the sampler sees different results and proposes different trials.
Make the curves with the sampler that the replay stands for, without a pruner:

    python -m cvae_opt.run --study cvae_re --study-name bank --trials 40 --epochs 12 --train-size 5000 \\
        --sampler random --pruner none --storage sqlite:///storage/bank.db
    python benchmarks/pruner_replay.py --storage sqlite:///storage/bank.db --study bank
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line  # noqa: E402
from cvae_opt.samplers import make_pruner  # noqa: E402

CANDIDATES = [
    "median n_startup_trials=4 n_warmup_steps=10",
    "median n_startup_trials=4 n_warmup_steps=4",
    "median n_startup_trials=4 n_warmup_steps=2",
    "percentile percentile=25 n_startup_trials=4 n_warmup_steps=2",
    "percentile percentile=25 n_startup_trials=4 n_warmup_steps=4",
    "percentile percentile=33 n_startup_trials=4 n_warmup_steps=3",
    "successive_halving min_resource=1 reduction_factor=3",
    "successive_halving min_resource=2 reduction_factor=3",
    "successive_halving min_resource=2 reduction_factor=4",
    "successive_halving min_resource=3 reduction_factor=3",
    "hyperband min_resource=1 reduction_factor=3",
    "hyperband min_resource=2 reduction_factor=3",
]


def parse(text: str) -> dict:
    name, *pairs = text.split()
    args = {}
    for p in pairs:
        k, v = p.split("=")
        args[k] = int(v) if v.lstrip("-").isdigit() else float(v)
    return {"name": name, "args": args}


def smooth(curve: list[float], how: str) -> list[float]:
    """The reported values: as measured, the best so far, or an exponential moving average."""
    if how == "raw":
        return curve
    out, acc = [], None
    for v in curve:
        if how == "cummax":
            acc = v if acc is None else max(acc, v)
        else:  # ema
            acc = v if acc is None else 0.5 * acc + 0.5 * v
        out.append(acc)
    return out


def replay(curves: list[list[float]], finals: list[float], spec: dict, order: list[int], how: str, maximize: bool):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize" if maximize else "minimize", pruner=make_pruner(spec),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    epochs, kept = 0, []
    for i in order:
        trial = study.ask()
        pruned = False
        for step, v in enumerate(smooth(curves[i], how), 1):
            trial.report(v, step)
            epochs += 1
            if trial.should_prune():
                pruned = True
                break
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, finals[i])
            kept.append(finals[i])
    return epochs, (max(kept) if maximize else min(kept)) if kept else math.nan


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--orders", type=int, default=200, help="random trial orders per candidate")
    ap.add_argument("--smooth", nargs="+", default=["raw", "cummax", "ema"], choices=["raw", "cummax", "ema"])
    ap.add_argument("--candidates", nargs="+", default=CANDIDATES, help='pruner specs, e.g. "median n_warmup_steps=4"')
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.intermediate_values]
    n_epochs = max(len(t.intermediate_values) for t in done)
    done = [t for t in done if len(t.intermediate_values) == n_epochs]  # unpruned, full curves only
    curves = [[t.intermediate_values[k] for k in sorted(t.intermediate_values)] for t in done]
    finals = [t.value for t in done]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    best = max(finals) if maximize else min(finals)
    total = len(curves) * n_epochs
    rng = random.Random(0)
    orders = [rng.sample(range(len(curves)), len(curves)) for _ in range(args.orders)]
    print(machine_line(f"pruner replay: {len(curves)} curves of {n_epochs} epochs from study {args.study!r}, "
                       f"{args.orders} trial orders; best final value {best:.4g}"))
    print("| pruner | reported | epochs saved | best trial kept | best value kept (median, worst) |")
    print("| --- | --- | --- | --- | --- |")
    for text in args.candidates:
        spec = parse(text)
        for how in args.smooth:
            runs = [replay(curves, finals, spec, o, how, maximize) for o in orders]
            saved = 1 - statistics.mean(e for e, _ in runs) / total
            kept = sum(b == best for _, b in runs) / len(runs)
            values = [b for _, b in runs]
            worst = min(values) if maximize else max(values)
            print(f"| {text} | {how} | {saved:.0%} | {kept:.0%} | {statistics.median(values):.4g}, {worst:.4g} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
