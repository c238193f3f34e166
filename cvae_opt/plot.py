"""`python -m cvae_opt.plot`: forwards to the command, `cvae_opt.commands.plot` (the same as `cvae-opt plot`)."""

import sys

from .commands.common import run_main
from .commands.plot import main

if __name__ == "__main__":
    sys.exit(run_main(main))
