"""Generation in the challenge's submission layout: S generated x per given y, pairs (x, given y)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .checkpoints import load_checkpoint
from .cli import run_main
from .data import Pairs, load_pairs, save_pairs
from .errors import UserError
from .files import atomic_write_text
from .models import CVAE, DRAWS
from .problems import resolve_problem
from .refine import METHODS, generate_samples
from .train import resolve_device


def generate_pairs(model: CVAE, y: torch.Tensor, n: int, seed: int = 0, batch: int = 8192, **options) -> Pairs:
    """n samples for each given y (M, P, k), in batches; rows ordered y by y, n rows each."""
    x = generate_samples(model, y, n, seed=seed, batch=batch, **options)  # (M, n, P, 2)
    m = y.shape[0]
    y_rep = y.cpu().unsqueeze(1).expand(m, n, *y.shape[1:]).reshape(m * n, *y.shape[1:])
    return Pairs(x.reshape(m * n, *x.shape[2:]), y_rep.contiguous())


def add_refine_args(ap: argparse.ArgumentParser) -> None:
    """The refined pipeline's options, the same for every command that draws samples."""
    ap.add_argument("--refine", type=int, default=0, metavar="STEPS",
                    help="iterations fitting each sample's end points to its y (inside the box, slopes kept); 0 = raw. "
                    "About 40 for lm, 600 for adam")
    ap.add_argument("--refine-method", choices=METHODS, default="lm",
                    help="lm: Levenberg-Marquardt (default, fewer and better iterations); adam: gradient steps")
    ap.add_argument("--refine-lr", type=float, default=0.2, help="initial Adam step size (adam only; cosine decay)")
    ap.add_argument("--oversample", type=int, default=1, metavar="K",
                    help="draw K times the samples, (refine,) keep those that fit, farthest apart; 1 = off")
    ap.add_argument("--draw", choices=DRAWS, default="posterior",
                    help="posterior (default): hypotheses drawn by the model's weights r(c|y), for uncertainty; "
                    "coverage: every distinct hypothesis first, heaviest first, then repeats, for 'show me every "
                    "model that fits' (categorical and mixed latents)")
    ap.add_argument("--temperature", type=float, default=1.0, metavar="T",
                    help="draw hypotheses by weight^T renormalised: 1 = the posterior, 0 = every hypothesis "
                    "alike (categorical and mixed latents)")


def refine_options(args: argparse.Namespace) -> dict:
    """Checked keyword arguments of `generate_samples` from the options of `add_refine_args`."""
    if args.refine < 0 or args.oversample < 1:
        raise UserError("--refine must be >= 0 and --oversample >= 1")
    if args.temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {args.temperature}")
    return {"refine_steps": args.refine, "refine_method": args.refine_method, "refine_lr": args.refine_lr,
            "oversample": args.oversample, "draw": args.draw, "temperature": args.temperature}


def check_draw(model: CVAE, options: dict) -> None:
    """A Gaussian latent has only its posterior: coverage draws and temperatures are one clear error."""
    if not model.cfg.has_components and (options["draw"] != "posterior" or options["temperature"] != 1.0):
        raise UserError(
            f"--draw {options['draw']} --temperature {options['temperature']:g}: this model has a Gaussian latent, "
            "which has only its posterior; coverage draws and temperatures need model.latent_type categorical or mixed"
        )


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
    add_refine_args(ap)
    args = ap.parse_args(argv)
    if args.samples < 1:
        raise UserError(f"--samples must be a positive integer, got {args.samples}")
    options = refine_options(args)  # bad values rejected before the checkpoint is read
    model, cfg, _ = load_checkpoint(args.checkpoint, resolve_device(args.device))
    check_draw(model, options)
    problem = resolve_problem(cfg.data.problem)
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
