"""Trials per hour with 1 and with N worker processes on one SQLite file, side by side.

    python benchmarks/parallel.py                     # --jobs 1 vs --jobs 2, 8 trials each
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="cvae_re")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-size", type=int, default=5000)
    args = ap.parse_args()
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for jobs in (1, args.jobs):
            url = f"sqlite:///{tmp}/jobs{jobs}.db"
            cmd = [sys.executable, "-m", "cvae_opt.run", "--study", args.study, "--trials", str(args.trials),
                   "--jobs", str(jobs), "--epochs", str(args.epochs), "--train-size", str(args.train_size),
                   "--storage", url, "--artifacts", f"{tmp}/art{jobs}", "--seed", "0", "--pruner", "none", "--quiet"]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            rates[jobs] = args.trials / (time.perf_counter() - t0) * 3600
    print(machine_line(f"parallel, study {args.study}, {args.trials} trials x {args.epochs} epochs, {args.train_size} pairs"))
    print("| workers | trials per hour |")
    print("| --- | --- |")
    for jobs, r in rates.items():
        print(f"| {jobs} | {r:.0f} |")
    print(f"speed-up with {args.jobs} workers: {rates[args.jobs] / rates[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
