"""Generation in the challenge's submission layout: S generated x per given y, pairs (x, given y)."""

from __future__ import annotations

import torch

from .data import Pairs
from .models import CVAE


def generate_pairs(model: CVAE, y: torch.Tensor, n: int, seed: int = 0, batch: int = 8192) -> Pairs:
    """n samples for each given y (M, P, k), in batches; rows ordered y by y, n rows each."""
    gen = torch.Generator().manual_seed(seed)
    x = model.generate(y, n, batch=batch, generator=gen).cpu()  # (M, n, P, 2)
    m = y.shape[0]
    y_rep = y.cpu().unsqueeze(1).expand(m, n, *y.shape[1:]).reshape(m * n, *y.shape[1:])
    return Pairs(x.reshape(m * n, *x.shape[2:]), y_rep.contiguous())


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys
    import time
    from pathlib import Path

    from .checkpoints import load_checkpoint
    from .data import load_pairs, save_pairs
    from .errors import UserError
    from .files import atomic_write_text
    from .problems import resolve_problem
    from .train import resolve_device

    ap = argparse.ArgumentParser(
        prog="python -m cvae_opt.generate",
        description="Draw samples for given conditions and write a challenge-format submission.",
        epilog="example: python -m cvae_opt.generate --checkpoint best_model.pt "
        "--conditions ../shared/challenge-data/scoring_dataset.pt --samples 30 --out submission.pt",
    )
    ap.add_argument("--checkpoint", required=True, help="checkpoint written by a trial, report or retrain")
    ap.add_argument("--conditions", required=True, help="challenge-format file whose y are the given conditions")
    ap.add_argument("--samples", type=int, default=30, help="samples per given y (default 30)")
    ap.add_argument("--out", required=True, help="output .pt file: TensorDataset of (x, given y), (N*S, 1, 50, 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=8192, help="samples per decoder pass")
    args = ap.parse_args(argv)
    if args.samples < 1:
        raise UserError(f"--samples must be a positive integer, got {args.samples}")
    model, cfg, _ = load_checkpoint(args.checkpoint, resolve_device(args.device))
    problem = resolve_problem(cfg.data.problem)
    cond = load_pairs(args.conditions, problem)
    t0 = time.perf_counter()
    pairs = generate_pairs(model, cond.y, args.samples, seed=args.seed, batch=args.batch)
    seconds = time.perf_counter() - t0
    save_pairs(args.out, pairs)
    meta = {
        "checkpoint": args.checkpoint, "conditions": args.conditions, "samples_per_condition": args.samples,
        "n_conditions": len(cond), "seed": args.seed, "seconds": seconds, "refine_steps": 0, "oversample": 1,
    }
    atomic_write_text(Path(str(args.out) + ".json"), json.dumps(meta, indent=2) + "\n")
    print(f"wrote {args.out}: {len(pairs)} samples ({len(cond)} conditions x {args.samples}) in {seconds:.2f}s")
    return 0


if __name__ == "__main__":
    import sys

    from .cli import run_main

    sys.exit(run_main(main))
