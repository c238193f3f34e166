"""Samples figure for any checkpoint: `python -m cvae_opt.plot --checkpoint FILE --conditions FILE --out FILE`.

For the first few given y: the generated x0/x1 lines with the exact solutions dashed (where they can be
enumerated) and, beside them, each given condition against forward(x_hat).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoints import load_checkpoint
from .cli import add_sampling_args, check_sampling, run_main, sampling_options
from .data import load_pairs
from .errors import UserError
from .plots import samples_figure, save_figure
from .problems import resolve_problem
from .refine import generate_samples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cvae_opt.plot",
        description="Draw generated samples against their given measurements.",
        epilog="example: python -m cvae_opt.plot --checkpoint reports/cvae_re/best_model.pt "
        "--conditions two_birds:scoring --out samples.png",
    )
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--conditions", required=True, help="challenge-format file whose y are drawn for, or a built-in name such as two_birds:scoring")
    ap.add_argument("--out", required=True, help="PNG file to write")
    ap.add_argument("--n", type=int, default=4, help="how many given y (rows), default 4")
    ap.add_argument("--samples", type=int, default=30, help="samples per y, default 30")
    ap.add_argument("--seed", type=int, default=0)
    add_sampling_args(ap)
    args = ap.parse_args(argv)
    if args.n < 1 or args.samples < 1:
        raise UserError("--n and --samples must be positive")
    options = sampling_options(args)
    model, cfg, _ = load_checkpoint(args.checkpoint)
    problem = resolve_problem(cfg.data.problem)
    check_sampling(model, problem, options)
    cond = load_pairs(args.conditions, problem)
    y = cond.y[: args.n]
    samples = generate_samples(model, y, args.samples, seed=args.seed, problem=problem, **options)
    how = "raw" if not (args.refine or args.oversample > 1) else (
        f"refine {args.refine} {args.refine_method}, oversample x{args.oversample}")
    if model.cfg.has_components:
        how += f", {args.draw}" + (f" T={args.temperature:g}" if args.temperature != 1.0 else "")
    fig = samples_figure(model, problem, y, samples=samples,
                         title=f"{Path(args.checkpoint).name}: {args.samples} samples per given y ({how})")
    save_figure(fig, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
