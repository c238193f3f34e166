"""How much compute pruning saves: the same study (same sampler seed, same trial budget) run with the
study file's pruner and with none, side by side. Prints total epochs trained, wall time and best value,
and the noise of the best value (the best unpruned config retrained with 3 seeds).

    python benchmarks/pruning.py                                   # cvae_re, 30 trials, 10 epochs, 5,000 pairs
    python benchmarks/pruning.py --study both --trials 60 --epochs 20 --train-size 20000
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
from cvae_opt.trials import trial_config  # noqa: E402
from cvae_opt.train import train  # noqa: E402


def one(study: str, pruner: str | None, args, folder: Path) -> tuple[optuna.Study, float]:
    url = f"sqlite:///{folder}/{pruner or 'default'}.db"
    quiet_libraries()
    argv = ["--study", study, "--trials", str(args.trials), "--epochs", str(args.epochs), "--train-size",
            str(args.train_size), "--storage", url, "--artifacts", str(folder / "artifacts"), "--seed", str(args.seed),
            "--quiet"]
    if pruner:
        argv += ["--pruner", pruner]
    t0 = time.perf_counter()
    assert run_cli.main(argv) == 0
    return optuna.load_study(study_name=study, storage=url), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="cvae_re")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--train-size", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pruner", help="pruner of the pruned run (default: the study file's)")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, pruner in ((f"pruner {args.pruner or 'of the study file'}", args.pruner), ("no pruner", "none")):
            study, wall = one(args.study, pruner, args, Path(tmp))
            epochs = sum(len(t.intermediate_values) for t in study.trials)
            pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
            rows.append((label, study, wall, epochs, pruned))
        unpruned = rows[1][1]
        cfg = trial_config(unpruned.best_trial)
        noise = []
        for seed in (1, 2, 3):
            cfg.train.seed = seed
            noise.append(train(cfg).last[unpruned.user_attrs["metrics"][0]])
    print(machine_line(f"pruning, study {args.study}, {args.trials} trials x {args.epochs} epochs, {args.train_size} pairs"))
    print("| run | epochs trained | pruned trials | wall time (s) | best value |")
    print("| --- | --- | --- | --- | --- |")
    for label, study, wall, epochs, pruned in rows:
        print(f"| {label} | {epochs} | {pruned} | {wall:.0f} | {study.best_value:.4f} |")
    saved = 1 - rows[0][3] / rows[1][3]
    sd = statistics.stdev(noise)
    print(f"epochs saved by pruning: {saved:.0%}; best value difference {rows[0][1].best_value - rows[1][1].best_value:+.4f}; "
          f"noise (std of the unpruned best config over training seeds 1-3): {sd:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
