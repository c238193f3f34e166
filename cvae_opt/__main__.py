"""`cvae-opt COMMAND ...` (or `python -m cvae_opt COMMAND ...`): one entry point for every tool."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "run": "run (or resume) a hyperparameter study",
    "report": "write an offline HTML report of a study",
    "export": "write the best trial's config as YAML",
    "retrain": "train from scratch with a config file",
    "generate": "draw samples for given conditions (challenge format)",
    "evaluate": "score a challenge-format submission",
    "plot": "draw a checkpoint's samples against the given measurements",
    "dashboard": "browse studies and artifacts in optuna-dashboard",
    "storage-proxy": "serve a study database to many workers (Optuna's gRPC proxy)",
}


def usage() -> str:
    lines = ["usage: cvae-opt COMMAND [options]   (cvae-opt COMMAND --help for each)", "", "commands:"]
    lines += [f"  {name:<14} {text}" for name, text in COMMANDS.items()]
    lines += ["", "example: cvae-opt run --study cvae_re --trials 200 && cvae-opt report --study cvae_re"]
    return "\n".join(lines)


def module_name(command: str) -> str:
    """The module of a command: `storage-proxy` lives in commands/storage_proxy.py."""
    return command.replace("-", "_")


def main(argv: list[str] | None = None) -> int:
    from .commands.common import EXIT_BAD_INPUT, run_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; use one of {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    module = importlib.import_module(f"cvae_opt.commands.{module_name(argv[0])}")
    sys.argv[0] = f"cvae-opt {argv[0]}"
    return run_main(module.main, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
