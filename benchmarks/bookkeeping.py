"""Bookkeeping cost: (1) the share of a real trial's wall time spent outside the training loop
(sampler, storage writes, validation metrics, checkpoint and plot artifacts), split into the
validation metrics computed after every epoch (what pruning needs) and the rest; (2) how the per-trial
overhead of Optuna + SQLite grows with the study, with a cheap stand-in objective that reports 10
intermediate values and sets 10 user attributes, timed at trials 1, 100 and 500.

    python benchmarks/bookkeeping.py                 # 3 trials at the study's budget (cvae_re: 40 epochs, 20,000 pairs)
    python benchmarks/bookkeeping.py --epochs 5      # short trials: the fixed per-trial costs weigh more
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line  # noqa: E402
from cvae_opt.commands import run as run_cli  # noqa: E402
from cvae_opt.commands.common import quiet_libraries  # noqa: E402
from cvae_opt.storage import open_storage  # noqa: E402
from cvae_opt.studies import load_study_file  # noqa: E402


def real_trials(args, tmp: Path) -> list[tuple[float, float, float]]:
    url = f"sqlite:///{tmp}/real.db"
    argv = ["--study", args.study, "--trials", str(args.trials), "--storage", url, "--artifacts", str(tmp / "art"),
            "--pruner", "none", "--quiet"]
    if args.epochs:
        argv += ["--epochs", str(args.epochs)]
    if args.train_size:
        argv += ["--train-size", str(args.train_size)]
    assert run_cli.main(argv) == 0
    study = optuna.load_study(study_name=args.study, storage=url)
    out = []
    for t in study.trials:
        wall = (t.datetime_complete - t.datetime_start).total_seconds()
        out.append((wall, t.user_attrs["train_loop_seconds"], t.user_attrs["eval_seconds"]))
    return out


def growth(tmp: Path, marks=(1, 100, 500)) -> dict[int, float]:
    study = optuna.create_study(study_name="stand-in", storage=open_storage(f"sqlite:///{tmp}/growth.db"),
                                sampler=optuna.samplers.TPESampler(seed=0), pruner=optuna.pruners.MedianPruner())

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5, 5)
        y = trial.suggest_float("y", -5, 5)
        for step in range(10):
            trial.report((x - 1) ** 2 + y**2 + 1 / (step + 1), step)
            trial.should_prune()
        for i in range(10):
            trial.set_user_attr(f"m{i}", float(i))
        return (x - 1) ** 2 + y**2

    times: dict[int, float] = {}
    done = 0
    for mark in marks:
        if mark - 1 > done:
            study.optimize(objective, n_trials=mark - 1 - done)
            done = mark - 1
        per = []
        for _ in range(5):
            t0 = time.perf_counter()
            study.optimize(objective, n_trials=1)
            per.append(time.perf_counter() - t0)
        done += 5
        times[mark] = statistics.median(per)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="cvae_re")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--epochs", type=int, help="default: the study's own budget")
    ap.add_argument("--train-size", type=int, help="default: the study's own")
    args = ap.parse_args()
    spec = load_study_file(args.study)
    args.epochs, args.train_size = args.epochs or spec.epochs, args.train_size or spec.data.get("train_size", 20000)
    quiet_libraries()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        real = real_trials(args, Path(tmp))
        grow = growth(Path(tmp))
    print(machine_line(f"bookkeeping, study {args.study}, {args.trials} trials x {args.epochs} epochs, {args.train_size} pairs"))
    shares = [1 - loop / wall for wall, loop, _ in real]
    print("| trial | wall (s) | training loop (s) | validation metrics (s) | the rest (s) | bookkeeping share | of which validation |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for i, ((wall, loop, ev), share) in enumerate(zip(real, shares)):
        print(f"| {i} | {wall:.2f} | {loop:.2f} | {ev:.2f} | {wall - loop - ev:.2f} | {share:.1%} | {ev / wall:.1%} |")
    print(f"median bookkeeping share: {statistics.median(shares):.1%} (validation metrics every epoch: "
          f"{statistics.median([ev / wall for wall, _, ev in real]):.1%}; sampler, storage, checkpoint, plot and "
          f"set-up: {statistics.median([(wall - loop - ev) / wall for wall, loop, ev in real]):.1%})")
    print("| study size (trial number) | Optuna + SQLite overhead per trial (ms), stand-in objective |")
    print("| --- | --- |")
    for mark, t in grow.items():
        print(f"| {mark} | {t * 1000:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
