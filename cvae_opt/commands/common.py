"""What the command-line tools share: one error line and exit 2 for bad input, 130 on Ctrl-C, and the
options several commands take (a study in a storage, the sampling pipeline). Commands import this
module, never each other. No torch here: a command that needs none (storage-proxy) starts in a second."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any, Callable

import optuna

from ..config import DRAWS, MIN_WEIGHT, REFINE_METHODS, WITHINS
from ..errors import UserError
from ..storage import STORAGE_HELP, default_storage, load_existing_study, open_storage

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    # commands draw into files only: no GUI backend, even on a desktop (a notebook keeps its own backend)
    os.environ.setdefault("MPLBACKEND", "Agg")
    quiet_libraries()
    try:
        return int(main(argv) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def quiet_libraries() -> None:
    """Optuna's experimental-feature warnings and per-trial INFO lines drown our own progress output."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def add_study_args(ap: argparse.ArgumentParser) -> None:
    """--study and --storage, as every command that reads an existing study takes them."""
    ap.add_argument("--study", required=True, help="study name in the storage")
    ap.add_argument("--storage", default=default_storage(), help=STORAGE_HELP)


def study_from_args(args: argparse.Namespace) -> optuna.Study:
    """The existing study that --study and --storage name (one error line if there is none); a storage
    that does not exist is refused, never created."""
    return load_existing_study(open_storage(args.storage, create=False), args.study, args.storage)


def add_checkpoint_trust_args(ap: argparse.ArgumentParser) -> None:
    """--problem and --latent-type for commands that load a checkpoint: a checkpoint is a file, so an
    import path in its config loads only when the user gives the same spec here."""
    ap.add_argument("--problem", metavar="MODULE:ATTR",
                    help="the checkpoint's problem when its config names one by import path (checked equal to it; "
                    "without it only built-in problems load, since importing runs that module's code)")
    ap.add_argument("--latent-type", metavar="MODULE:CLASS",
                    help="the same for a model.latent_type given by import path")


def checkpoint_trust(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `load_generator` / `load_checkpoint` from `add_checkpoint_trust_args`."""
    return {"problem": args.problem, "latent_type": args.latent_type}


def add_sampling_args(ap: argparse.ArgumentParser) -> None:
    """The sampling pipeline's options, the same for every command that draws samples."""
    ap.add_argument("--refine", type=int, default=0, metavar="STEPS",
                    help="iterations fitting each sample's end points to its y (inside the box, slopes kept); 0 = raw. "
                    "About 40 for lm, 600 for adam")
    ap.add_argument("--refine-method", choices=REFINE_METHODS, default="lm",
                    help="lm: Levenberg-Marquardt (default, fewer and better iterations); adam: gradient steps")
    ap.add_argument("--refine-lr", type=float, default=0.2, help="initial Adam step size (adam only; cosine decay)")
    ap.add_argument("--oversample", type=int, default=1, metavar="K",
                    help="draw K times the samples, (refine,) keep those that fit, farthest apart; 1 = off")
    ap.add_argument("--draw", choices=DRAWS, default="posterior",
                    help="posterior (default): hypotheses drawn by the model's weights r(c|y), for uncertainty; "
                    "coverage: every distinct hypothesis first, heaviest first, then repeats, for 'show me every "
                    "model that fits' (categorical and mixed latents)")
    ap.add_argument("--within", choices=WITHINS, default="mean",
                    help="mean (default): each drawn hypothesis' mean; spread: a draw within its learnt spread "
                    "(hypotheses latent), e.g. distinct starts for refinement")
    ap.add_argument("--max-output-gb", type=float, default=2.0, metavar="GB",
                    help="refuse, before drawing, samples larger than this (conditions x samples x model size x 4 "
                    "bytes, times --oversample); default 2")
    ap.add_argument("--temperature", type=float, default=1.0, metavar="T",
                    help="draw hypotheses by weight^T renormalised: 1 = the posterior, 0 = every hypothesis "
                    "alike (categorical and mixed latents)")
    ap.add_argument("--min-weight", type=float, default=MIN_WEIGHT, metavar="W",
                    help=f"the lightest hypothesis coverage draws and temperatures other than 1 may pick (default "
                    f"{MIN_WEIGHT:g}; e.g. 0.001 with --refine, to start from light hypotheses too)")
    ap.add_argument("--max-spread", type=float, default=None, metavar="S",
                    help="draw only hypotheses whose learnt spread (largest std, x units) is at most S: the ones "
                    "the model has placed on a solution, not its hedges (hypotheses latent; default: all)")


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `Generator.sample` from the options of `add_sampling_args` (it checks them)."""
    if not args.max_output_gb > 0:
        raise UserError(f"--max-output-gb must be > 0, got {args.max_output_gb:g}")
    return {"max_output_bytes": args.max_output_gb * 1e9,
            "refine": args.refine, "refine_method": args.refine_method, "refine_lr": args.refine_lr,
            "oversample": args.oversample, "draw": args.draw, "temperature": args.temperature, "within": args.within,
            "min_weight": args.min_weight, "max_spread": args.max_spread}
