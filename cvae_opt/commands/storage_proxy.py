"""Optuna's gRPC storage proxy in front of a database: `cvae-opt storage-proxy --storage URL`.

Dozens of workers on many machines then hold one set of database connections between them (the
proxy's) instead of a pool each: point them at `--storage grpc://HOST:PORT`. Every command that takes
a storage accepts that URL. It listens on 127.0.0.1 unless --host says otherwise (the protocol has no
authentication: expose it only on a trusted network).
"""

from __future__ import annotations

import argparse
import sys

from .common import run_main
from ..errors import UserError
from ..storage import DEFAULT_STORAGE, STORAGE_ENV, default_storage, mask_url, serve_grpc_proxy


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="cvae-opt storage-proxy",
        description="Serve a study database to many workers through Optuna's gRPC storage proxy.",
        epilog="example: cvae-opt storage-proxy --storage postgresql://user:pw@db/cvae --host 0.0.0.0 --port 13000\n"
        "then, on every worker: cvae-opt run --study cvae_re --storage grpc://PROXY_HOST:13000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--storage", default=default_storage(),
                    help=f"SQLAlchemy URL of the database (default: ${STORAGE_ENV} if set, else {DEFAULT_STORAGE})")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=13000, help="port to listen on (default 13000)")
    ap.add_argument("--threads", type=int, default=16, help="requests served at once (default 16)")
    args = ap.parse_args(argv)
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {args.port}")
    if args.threads < 1:
        raise UserError(f"--threads must be a positive integer, got {args.threads}")
    print(f"storage proxy for {mask_url(args.storage)} on grpc://{args.host}:{args.port} "
          f"({args.threads} threads); stop with Ctrl-C", flush=True)
    serve_grpc_proxy(args.storage, args.host, args.port, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
