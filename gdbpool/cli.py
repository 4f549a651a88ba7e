"""The ``gdbpool`` command.

Each subcommand lives in its own ``_cmd_*`` function and is registered in
:func:`build_parser`.  Exit codes: 0 success, 1 runtime failure (server down,
query failed), 2 bad usage or bad input (argparse's convention), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from gdbpool.errors import GDBPoolError

__all__ = ["build_parser", "main"]


def _cmd_postgres(args: argparse.Namespace) -> int:
    """Run an embedded PostgreSQL server in the foreground until SIGINT/SIGTERM."""
    from gdbpool.embedded import EmbeddedPostgres

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = EmbeddedPostgres(
        data_dir=args.data,
        port=args.port,
        fast=args.fast,
        replica_of=args.replica_of,
        password=args.password,
    )
    server.start()
    role = "replica" if args.replica_of is not None else "primary"
    print(f"gdbpool postgres: {role} ready on {server.host}:{server.port} data={server.data_dir}",
          flush=True)
    print(f"gdbpool postgres: dsn: {server.dsn().replace(server.password, '***')}", flush=True)
    try:
        while not stop.wait(0.5):
            if not server.is_running:
                print("gdbpool postgres: server exited unexpectedly", file=sys.stderr)
                return 1
    finally:
        server.stop()
        print("gdbpool postgres: stopped", flush=True)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job end to end (see :mod:`gdbpool.demo`)."""
    from gdbpool.demo import run_demo

    return run_demo(dsn=args.dsn, json_logs=args.json_logs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``gdbpool`` command, with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="gdbpool",
        description=(
            "PostgreSQL pooling for gevent, as an actor system, with a ZeroMQ NOTIFY bridge."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser("demo", help="run the end-to-end tour (embedded PostgreSQL unless --dsn)")
    demo.add_argument("--dsn", help="use this server instead of starting an embedded one")
    demo.add_argument("--json-logs", action="store_true", help="log as JSON lines")
    demo.set_defaults(func=_cmd_demo)

    pg = sub.add_parser("postgres", help="run an embedded PostgreSQL server in the foreground")
    pg.add_argument("--data", type=Path, default=None,
                    help="data directory (kept; initialised when empty). Default: throwaway")
    pg.add_argument("--port", type=int, default=5432, help="TCP port on 127.0.0.1 (default 5432)")
    pg.add_argument("--password", default=None,
                    help="superuser password for a new cluster (default: random, printed masked)")
    pg.add_argument("--replica-of", metavar="DSN", default=None,
                    help="start as a streaming replica of the primary at DSN")
    pg.add_argument("--fast", action="store_true",
                    help="fsync off etc. (unsafe; for tests and demos only)")
    pg.set_defaults(func=_cmd_postgres)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gdbpool`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except GDBPoolError as exc:
        print(f"gdbpool {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
