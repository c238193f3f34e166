"""`python -m cvae_opt.retrain`: forwards to the command, `cvae_opt.commands.retrain` (the same as `cvae-opt retrain`)."""

import sys

from .commands.common import run_main
from .commands.retrain import main

if __name__ == "__main__":
    sys.exit(run_main(main))
