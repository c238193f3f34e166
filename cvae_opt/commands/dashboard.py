"""optuna-dashboard on the study storage with the artifact store, so every trial page shows its
checkpoint and samples plot: `python -m cvae_opt.dashboard`, then open http://127.0.0.1:8080.

The same as `optuna-dashboard sqlite:///storage/cvae_opt.db --artifact-dir storage/artifacts`, with
the project's defaults. It listens on 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import sys

from .common import run_main
from ..errors import UserError
from ..storage import DEFAULT_ARTIFACTS, STORAGE_HELP, artifact_store, default_storage, mask_url, open_storage


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cvae_opt.dashboard",
        description="Browse studies, trials and their artifacts in optuna-dashboard.",
        epilog="example: python -m cvae_opt.dashboard --port 8080   # then open http://127.0.0.1:8080",
    )
    ap.add_argument("--storage", default=default_storage(), help=STORAGE_HELP)
    ap.add_argument("--artifacts", default=DEFAULT_ARTIFACTS, help=f"artifact folder (default {DEFAULT_ARTIFACTS})")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args(argv)
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {args.port}")
    import optuna_dashboard

    storage = open_storage(args.storage, create=False)  # a viewer: a storage that does not exist is refused
    print(f"optuna-dashboard for {mask_url(args.storage)} (artifacts {args.artifacts}) on http://{args.host}:{args.port}/", flush=True)
    try:
        optuna_dashboard.run_server(storage, host=args.host, port=args.port, artifact_store=artifact_store(args.artifacts))
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
