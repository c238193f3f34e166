"""`python -m cvae_opt.generate`: forwards to the command, `cvae_opt.commands.generate` (the same as `cvae-opt generate`)."""

import sys

from .commands.common import run_main
from .commands.generate import main

if __name__ == "__main__":
    sys.exit(run_main(main))
