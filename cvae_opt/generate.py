"""Generation in the challenge's submission layout: S generated x per given y, pairs (x, given y)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .checkpoints import load_checkpoint
from .cli import add_sampling_args, check_sampling, run_main, sampling_options
from .data import load_pairs, save_pairs
from .devices import resolve_device
from .errors import UserError
from .files import atomic_write_text
from .problems import resolve_problem
from .refine import generate_pairs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cvae_opt.generate",
        description="Draw samples for given conditions and write a challenge-format submission.",
        epilog="example: python -m cvae_opt.generate --checkpoint best_model.pt "
        "--conditions two_birds:scoring --samples 30 --out submission.pt",
    )
    ap.add_argument("--checkpoint", required=True, help="checkpoint written by a trial, report or retrain")
    ap.add_argument("--conditions", required=True, help="challenge-format file whose y are the given conditions, or a built-in name: two_birds:scoring, two_birds:validation")
    ap.add_argument("--samples", type=int, default=30, help="samples per given y (default 30)")
    ap.add_argument("--out", required=True, help="output .pt file: TensorDataset of (x, given y), (N*S, 1, 50, 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=8192, help="samples per decoder pass")
    add_sampling_args(ap)
    args = ap.parse_args(argv)
    if args.samples < 1:
        raise UserError(f"--samples must be a positive integer, got {args.samples}")
    options = sampling_options(args)  # bad values rejected before the checkpoint is read
    model, cfg, _ = load_checkpoint(args.checkpoint, resolve_device(args.device))
    problem = resolve_problem(cfg.data.problem)
    check_sampling(model, problem, options)
    cond = load_pairs(args.conditions, problem)
    t0 = time.perf_counter()
    pairs = generate_pairs(
        model, cond.y, args.samples, seed=args.seed, batch=args.batch, problem=problem, **options,
    )
    seconds = time.perf_counter() - t0
    save_pairs(args.out, pairs)
    meta = {
        "checkpoint": args.checkpoint, "conditions": args.conditions, "samples_per_condition": args.samples,
        "n_conditions": len(cond), "seed": args.seed, "seconds": seconds, **options,
        "mode": "raw" if not (args.refine or args.oversample > 1) else "refined",
        "latent_type": cfg.model.latent_type,
    }
    atomic_write_text(Path(str(args.out) + ".json"), json.dumps(meta, indent=2) + "\n")
    opts = f", refined {args.refine} {args.refine_method} steps" if args.refine else ""
    opts += f", oversampled x{args.oversample}" if args.oversample > 1 else ""
    opts += f", {args.draw} draws" + (f" at temperature {args.temperature:g}" if args.temperature != 1.0 else "")
    print(f"wrote {args.out}: {len(pairs)} samples ({len(cond)} conditions x {args.samples}{opts}) in {seconds:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
