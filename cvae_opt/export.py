"""`python -m cvae_opt.export`: forwards to the command, `cvae_opt.commands.export` (the same as `cvae-opt export`)."""

import sys

from .commands.common import run_main
from .commands.export import main

if __name__ == "__main__":
    sys.exit(run_main(main))
