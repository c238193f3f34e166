"""What every command-line entry point shares: one error line and exit 2 for bad input, 130 on Ctrl-C."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Callable

from .errors import UserError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
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
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
