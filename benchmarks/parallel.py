"""Trials per hour with 1 and with N worker processes on one SQLite file, side by side.

By default every trial trains the same architecture (the study file is copied with only lr and beta
left in its search space), so both runs do the same work: with the full space, each worker's TPE
draws different architectures whose cost varies tenfold, and the ratio measures that draw, not the
parallelism. `--full-space` runs the study file as it is.

    python benchmarks/parallel.py                     # --jobs 1 vs --jobs 2, 8 trials each
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line  # noqa: E402


def thread_scaling(study: str, jobs: int, train_size: int) -> tuple[float, float]:
    """Epoch time of the study's base model with 1 and with `jobs` torch threads (median of 2 each):
    the ceiling for worker processes is jobs / (the intra-op speed-up of one worker)."""
    import statistics

    import torch

    from cvae_opt.problems import resolve_problem
    from cvae_opt.studies import load_study_file
    from cvae_opt.data import load_data
    from cvae_opt.train import train

    cfg = load_study_file(study).base_config()
    cfg.data.train_size, cfg.train.epochs, cfg.train.eval_conditions = train_size, 1, 0
    data = load_data(cfg.data, resolve_problem(cfg.data.problem))
    before = torch.get_num_threads()
    times: dict[int, list[float]] = {1: [], jobs: []}
    try:
        for threads in (1, jobs, 1, jobs):
            torch.set_num_threads(threads)
            times[threads].append(train(cfg, data=data).history[0]["epoch_seconds"])
    finally:
        torch.set_num_threads(before)
    return statistics.median(times[1]), statistics.median(times[jobs])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="cvae_re")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-size", type=int, default=20000)
    ap.add_argument("--full-space", action="store_true", help="search the study's whole space (costs differ per trial)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from cvae_opt.studies import find_study_file

    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        study = args.study
        if not args.full_space:
            raw = yaml.safe_load(find_study_file(args.study).read_text())
            raw["search"] = {k: v for k, v in raw["search"].items() if k in ("lr", "beta")}
            study = os.path.join(tmp, "same_cost.yaml")
            Path(study).write_text(yaml.safe_dump(raw, sort_keys=False))
        for jobs in (1, args.jobs):
            url = f"sqlite:///{tmp}/jobs{jobs}.db"
            cmd = [sys.executable, "-m", "cvae_opt.run", "--study", study, "--trials", str(args.trials),
                   "--jobs", str(jobs), "--epochs", str(args.epochs), "--train-size", str(args.train_size),
                   "--storage", url, "--artifacts", f"{tmp}/art{jobs}", "--seed", "0", "--pruner", "none", "--quiet"]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            rates[jobs] = args.trials / (time.perf_counter() - t0) * 3600
    ceiling = thread_scaling(args.study, args.jobs, args.train_size)
    space = "full search space" if args.full_space else "same architecture every trial (lr, beta searched)"
    print(machine_line(f"parallel, study {args.study} ({space}), {args.trials} trials x {args.epochs} epochs, {args.train_size} pairs"))
    print("| workers | trials per hour |")
    print("| --- | --- |")
    for jobs, r in rates.items():
        print(f"| {jobs} | {r:.0f} |")
    print(f"speed-up with {args.jobs} workers: {rates[args.jobs] / rates[1]:.2f}x")
    t1, tn = ceiling
    print(f"one epoch of the study's base model with 1 torch thread: {t1:.2f} s, with {args.jobs}: {tn:.2f} s "
          f"(one worker already runs {t1 / tn:.2f}x faster on all cores), so {args.jobs} single-thread workers "
          f"can reach at most {args.jobs * tn / t1:.2f}x over one worker")
    return 0


if __name__ == "__main__":
    sys.exit(main())
