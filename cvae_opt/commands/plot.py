"""Samples figure for any checkpoint: `python -m cvae_opt.plot --checkpoint FILE --conditions FILE --out FILE`.

For the first few given y: the generated x0/x1 lines with the exact solutions dashed (where they can be
enumerated), or for grid problems the true model (from a file of pairs), samples, mean and standard
deviation maps beside the exact posterior's (where known); and each given y against forward(x_hat).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..api import conditions, load_generator, plot_samples
from .common import add_checkpoint_trust_args, add_sampling_args, checkpoint_trust, run_main, sampling_options
from ..errors import UserError
from ..files import check_out_path
from ..figures import save_figure


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
    add_checkpoint_trust_args(ap)
    args = ap.parse_args(argv)
    if args.n < 1 or args.samples < 1:
        raise UserError("--n and --samples must be positive")
    check_out_path(args.out)  # before the work, not after it
    gen = load_generator(args.checkpoint, **checkpoint_trust(args))
    y = conditions(args.conditions, gen.problem)[: args.n]
    samples = gen.sample(y, args.samples, seed=args.seed, **sampling_options(args))
    how = "raw" if not (args.refine or args.oversample > 1) else (
        f"refine {args.refine} {args.refine_method}, oversample x{args.oversample}")
    if gen.model.latent.has_components:
        how += f", {args.draw}" + (f" T={args.temperature:g}" if args.temperature != 1.0 else "")
    if args.within != "mean":
        how += f", within {args.within}"
    if args.max_spread is not None:
        how += f", max spread {args.max_spread:g}"
    truth = None
    if not str(args.conditions).lower().endswith(".csv"):
        truth = args.conditions  # a file of pairs: its x are the true models, shown where the family's figure shows them
    fig = plot_samples(samples, args.n, truth=truth, title=f"{Path(args.checkpoint).name}: {args.samples} samples per given y ({how})")
    save_figure(fig, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
