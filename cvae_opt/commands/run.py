"""Run a study: `python -m cvae_opt.run --study cvae_re --trials 200`.

TPE (or the study file's sampler) with pruning, trials stored in SQLite (or any SQLAlchemy URL, or the
gRPC storage proxy), checkpoints and sample plots in the artifact store. Running the same command again
resumes the study. `--jobs N` starts N worker processes on the same storage. The work is
`runner.run_study`, which `cvae_opt.run_study` calls too.
"""

from __future__ import annotations

import argparse
import sys
import threading

from .common import EXIT_INTERRUPTED, run_main
from ..interrupts import install_interrupt_handler
from ..workers import RunOptions, run_study
from ..storage import DEFAULT_ARTIFACTS, HEARTBEAT_SECONDS, STORAGE_HELP, default_storage


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m cvae_opt.run",
        description="Run (or resume) a hyperparameter study of a CVAE.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m cvae_opt.run --study cvae_re --trials 200\n"
        "  CVAE_OPT_STORAGE=postgresql://user:pw@db/cvae python -m cvae_opt.run --study both --trials 50 --jobs 2\n"
        "  python -m cvae_opt.run --study cvae --trials 3 --epochs 1 --train-size 2000   # smoke run",
    )
    ap.add_argument("--study", required=True, help="study name in studies/ (cvae, cvae_re, both) or a path to a study file")
    ap.add_argument("--trials", "--n-trials", dest="trials", type=int, default=200, help="trials to add (default 200)")
    ap.add_argument("--storage", default=default_storage(),
                    help=f"{STORAGE_HELP}; set the variable to keep a password out of the command line")
    ap.add_argument("--study-name", help="name in the storage (default: the study file's name)")
    ap.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    ap.add_argument("--jobs", "--n-jobs", dest="jobs", type=int, default=1,
                    help="worker processes on the same storage (at most --trials)")
    ap.add_argument("--seed", type=int, help="sampler seed (worker i uses seed + i) and training/data seed")
    ap.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the study's, auto)")
    ap.add_argument("--sampler", help="override the study's sampler: tpe, random, cmaes, gp, qmc, nsgaii, nsgaiii")
    ap.add_argument("--pruner", help="override the study's pruner: median, percentile, hyperband, successive_halving, threshold, patient, wilcoxon, none")
    ap.add_argument("--n-startup-trials", type=int, help="random trials before the sampler models the results")
    ap.add_argument("--epochs", type=int, help="override the study's epoch budget (smoke runs)")
    ap.add_argument("--train-size", type=int, help="override the number of training pairs (smoke runs)")
    ap.add_argument("--artifacts", default=DEFAULT_ARTIFACTS, help=f"artifact folder (default {DEFAULT_ARTIFACTS})")
    ap.add_argument("--heartbeat", type=int, default=HEARTBEAT_SECONDS,
                    help=f"seconds between worker heartbeats (default {HEARTBEAT_SECONDS}); a trial silent for 3x this "
                    "long is marked failed and retried once")
    ap.add_argument("--quiet", action="store_true", help="print only the summary")
    ap.add_argument("--allow-changed-space", action="store_true",
                    help="resume a study whose recorded study file searches another space (refused without it)")
    ap.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options = RunOptions(**vars(parser().parse_args(argv)))
    if threading.current_thread() is threading.main_thread():
        install_interrupt_handler()  # Ctrl-C / SIGTERM: the running trial failed and re-queued, exit 130
    result = run_study(options)
    return EXIT_INTERRUPTED if result.interrupted else (1 if result.failed_workers else 0)


if __name__ == "__main__":
    sys.exit(run_main(main))
