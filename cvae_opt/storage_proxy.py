"""`python -m cvae_opt.storage_proxy`: forwards to the command, `cvae_opt.commands.storage_proxy` (the same as `cvae-opt storage-proxy`)."""

import sys

from .commands.common import run_main
from .commands.storage_proxy import main

if __name__ == "__main__":
    sys.exit(run_main(main))
