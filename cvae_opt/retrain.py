"""Retrain from a config file: `python -m cvae_opt.retrain --config best.yaml`.

Runs the same `train` as a trial, then writes checkpoint.pt, config.yaml and metrics.json to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .checkpoints import save_checkpoint
from .cli import run_main
from .config import Config
from .errors import UserError
from .files import atomic_write_text
from .train import train


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
    cfg = Config.from_yaml_file(args.config)
    if args.epochs is not None:
        if args.epochs < 1:
            raise UserError(f"--epochs must be a positive integer, got {args.epochs}")
        cfg.train.epochs = args.epochs
    if args.seed is not None:
        cfg.train.seed = args.seed
    if args.device:
        cfg.train.device = args.device
    out = Path(args.out or Path("storage") / "retrain" / Path(args.config).stem)
    out.mkdir(parents=True, exist_ok=True)
    log = None if args.quiet else (lambda line: print(line, flush=True))
    result = train(cfg, log=log)
    save_checkpoint(out / "checkpoint.pt", result.model, cfg, result.last)
    atomic_write_text(out / "config.yaml", cfg.to_yaml())
    atomic_write_text(
        out / "metrics.json",
        json.dumps({"final": result.last, "history": result.history, "seconds": result.seconds}, indent=2) + "\n",
    )
    last = result.last
    print(
        f"trained {cfg.train.epochs} epochs in {result.seconds:.1f}s: score {last.get('score', float('nan')):.4f}, "
        f"misfit {last.get('misfit_rmse', float('nan')):.4f}; wrote {out}/checkpoint.pt, config.yaml, metrics.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
