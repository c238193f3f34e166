"""Export the best trial's complete config: `python -m cvae_opt.export --study cvae_re`.

The YAML holds problem, data, architecture, every hyperparameter, epochs and seeds, exactly as the trial
trained, so `python -m cvae_opt.retrain --config FILE` takes it as it is.
"""

from __future__ import annotations

import argparse
import sys

from .common import add_study_args, run_main, study_from_args
from ..files import atomic_write_text, check_out_path
from ..trials import best_trial, config_yaml, find_trial


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cvae_opt.export",
        description="Write the best trial's complete config as YAML, ready for retraining.",
        epilog="example: python -m cvae_opt.export --study cvae_re --out best.yaml && python -m cvae_opt.retrain --config best.yaml",
    )
    add_study_args(ap)
    ap.add_argument("--trial", type=int, help="export this trial number instead of the best")
    ap.add_argument("--out", help="output file (default: print to stdout)")
    args = ap.parse_args(argv)
    if args.out:
        check_out_path(args.out)
    study = study_from_args(args)
    trial = find_trial(study, args.trial) if args.trial is not None else best_trial(study)
    text = config_yaml(study, trial, args.storage)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out} (trial {trial.number})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
