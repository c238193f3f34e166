"""Score a challenge-format submission: `python -m cvae_opt.evaluate --submission FILE`.

A submission holds (generated x, given y) pairs, several generated x per given y. Pairs are grouped by
their given y (in order of first appearance) and scored with `cvae_opt.metrics`; the result is one JSON
object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys

from .cli import run_main
from .problems import resolve_problem
from .submissions import evaluate_file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cvae_opt.evaluate",
        description="Print the metrics of a challenge-format submission as one JSON object.",
        epilog="example: python -m cvae_opt.evaluate --submission two_birds:scoring",
    )
    ap.add_argument("--submission", required=True, help="TensorDataset of (generated x, given y), each (N, 1, 50, 2), or a built-in name such as two_birds:submission-sample")
    ap.add_argument("--problem", default="two_birds", help="built-in name or package.module:callable (default two_birds)")
    ap.add_argument("--truth", help="file of (true x, y) pairs (or two_birds:scoring), for truth_recall when y alone is ambiguous")
    args = ap.parse_args(argv)
    result = evaluate_file(args.submission, resolve_problem(args.problem), args.truth)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
