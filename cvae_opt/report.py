"""`python -m cvae_opt.report`: forwards to the command, `cvae_opt.commands.report` (the same as `cvae-opt report`)."""

import sys

from .commands.common import run_main
from .commands.report import main

if __name__ == "__main__":
    sys.exit(run_main(main))
