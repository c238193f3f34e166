"""Retrain from a config file: `python -m cvae_opt.retrain --config best.yaml`.

Runs the same `train` as a trial, then writes checkpoint.pt, config.yaml and metrics.json to --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..api import train_config
from .common import run_main
from ..errors import UserError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cvae_opt.retrain",
        description="Train a model from scratch with a config file (e.g. one written by cvae_opt.export).",
        epilog="example: python -m cvae_opt.retrain --config studies/best/cvae_re.yaml --out storage/retrain/cvae_re",
    )
    ap.add_argument("--config", required=True, help="YAML config (data, model, train)")
    ap.add_argument("--epochs", type=int, help="override the number of epochs")
    ap.add_argument("--seed", type=int, help="override the training seed")
    ap.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--out", help="output folder (default storage/retrain/<config name>)")
    ap.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = ap.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be a positive integer, got {args.epochs}")
    out = Path(args.out or Path("storage") / "retrain" / Path(args.config).stem)
    log = None if args.quiet else (lambda line: print(line, flush=True))
    gen = train_config(args.config, epochs=args.epochs, seed=args.seed, device=args.device, out=out, log=log)
    last = gen.metrics
    print(
        f"trained {gen.config.train.epochs} epochs: score {last.get('score', float('nan')):.4f}, "
        f"misfit {last.get('misfit_rmse', float('nan')):.4f}; wrote {out}/checkpoint.pt, config.yaml, metrics.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
