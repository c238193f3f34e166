"""Generation in the submission layout: S generated x per given y, pairs (x, given y), with the metadata
(problem, how the samples were drawn) beside the file."""

from __future__ import annotations

import argparse
import sys

from ..api import load_generator
from .common import add_checkpoint_trust_args, add_sampling_args, checkpoint_trust, run_main, sampling_options
from ..errors import UserError
from ..files import check_out_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cvae_opt.generate",
        description="Draw samples for given conditions and write a challenge-format submission.",
        epilog="example: python -m cvae_opt.generate --checkpoint best_model.pt "
        "--conditions two_birds:scoring --samples 30 --out submission.pt",
    )
    ap.add_argument("--checkpoint", required=True, help="checkpoint written by a trial, report or retrain")
    ap.add_argument("--conditions", required=True, help="file of pairs whose y are the given conditions, a built-in name (two_birds:scoring, two_birds:validation, "
                    "gravity2d:test, gravity2d_blocks:test, gravity2d_32x64:test, gravity2d_32x64_blocks:test, two_moons:observations "
                    "and the other benchmark tasks' observations), or a survey CSV (station position, readings) for gravity2d")
    ap.add_argument("--samples", type=int, default=30, help="samples per given y (default 30)")
    ap.add_argument("--out", required=True, help="output .pt file: TensorDataset of (x, given y): (N*S, 1, 50, 2) for two birds, (N*S, 16, 32) for gravity2d")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=8192, help="samples per decoder pass")
    add_sampling_args(ap)
    add_checkpoint_trust_args(ap)
    args = ap.parse_args(argv)
    if args.samples < 1 or args.batch < 1:
        raise UserError(f"--samples and --batch must be positive integers, got {args.samples} and {args.batch}")
    check_out_path(args.out)  # before the work, not after it
    gen = load_generator(args.checkpoint, args.device, **checkpoint_trust(args))
    samples = gen.sample(args.conditions, args.samples, seed=args.seed, batch=args.batch, **sampling_options(args))
    samples.save(args.out)
    opts = f", refined {args.refine} {args.refine_method} steps" if args.refine else ""
    opts += f", oversampled x{args.oversample}" if args.oversample > 1 else ""
    opts += f", {args.draw} draws" + (f" at temperature {args.temperature:g}" if args.temperature != 1.0 else "")
    m = len(samples.y)
    print(f"wrote {args.out}: {m * args.samples} samples ({m} conditions x {args.samples}{opts}) "
          f"in {samples.metadata['seconds']:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
