"""`python -m cvae_opt.evaluate`: forwards to the command, `cvae_opt.commands.evaluate` (the same as `cvae-opt evaluate`)."""

import sys

from .commands.common import run_main
from .commands.evaluate import main

if __name__ == "__main__":
    sys.exit(run_main(main))
