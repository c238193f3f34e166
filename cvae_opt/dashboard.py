"""`python -m cvae_opt.dashboard`: forwards to the command, `cvae_opt.commands.dashboard` (the same as `cvae-opt dashboard`)."""

import sys

from .commands.common import run_main
from .commands.dashboard import main

if __name__ == "__main__":
    sys.exit(run_main(main))
