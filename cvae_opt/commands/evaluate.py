"""Score a challenge-format submission: `python -m cvae_opt.evaluate --submission FILE`.

A submission holds (generated x, given y) pairs, several generated x per given y. Pairs are grouped by
their given y (in order of first appearance) and scored with `cvae_opt.metrics`; the result is one JSON
object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys

from .common import run_main
from ..submissions import evaluate_file, submission_problem


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cvae_opt.evaluate",
        description="Print the metrics of a challenge-format submission as one JSON object.",
        epilog="example: python -m cvae_opt.evaluate --submission two_birds:scoring",
    )
    ap.add_argument("--submission", required=True, help="TensorDataset of (generated x, given y), each (N, 1, 50, 2), or a built-in name such as two_birds:submission-sample")
    ap.add_argument("--problem", help="built-in name or package.module:callable (default: the one in the submission's "
                    "metadata, SUBMISSION.json, else two_birds); metadata naming an import path is used only when "
                    "--problem gives the same one")
    ap.add_argument("--truth", help="file of (true x, y) pairs (or two_birds:scoring, gravity2d:test): truth_recall for line "
                    "problems, calibration (interval coverage, SBC, energy score) for field problems")
    args = ap.parse_args(argv)
    result = evaluate_file(args.submission, submission_problem(args.submission, args.problem), args.truth)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
