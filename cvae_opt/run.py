"""`python -m cvae_opt.run`: forwards to the command, `cvae_opt.commands.run` (the same as `cvae-opt run`)."""

import sys

from .commands.common import run_main
from .commands.run import main

if __name__ == "__main__":
    sys.exit(run_main(main))
