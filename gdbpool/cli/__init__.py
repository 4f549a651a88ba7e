"""The ``gdbpool`` command.

Each subcommand lives in its own ``cmd_*`` function, registered in
:func:`build_parser`: ``demo`` here, ``postgres`` in :mod:`gdbpool.cli.postgres`, ``bridge``,
``subscribe`` and ``notify`` in :mod:`gdbpool.cli.notify`, ``keys`` (CURVE key
pairs; where the commands read keys from) in :mod:`gdbpool.cli.keys`, ``bench`` in
:mod:`gdbpool.cli.bench`.  Exit codes: 0 success, 1 runtime failure (server
down, query failed), 2 bad usage or bad input (argparse's convention), 130 on
Ctrl-C; ``bench NAME`` exits with its benchmark's code.

The foreground commands (``postgres``, ``bridge``, ``subscribe``) stop cleanly
on SIGTERM (exit 0: being asked to stop is normal under a process manager such
as honcho) and on SIGINT (exit 130).  Passwords never reach the output: DSNs
and driver messages go through :func:`gdbpool.logging.redact`.  Nor need they
be on the command line, where any local user can read them (``ps``): DSNs
without ``password=`` use ``PGPASSWORD`` (libpq's own rule), and ``gdbpool
postgres`` reads its password from ``PGPASSWORD`` or ``--password-env VAR``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gdbpool.cli.args import BadInput, check_dsn, positive, tcp_port
from gdbpool.cli.bench import cmd_bench
from gdbpool.cli.keys import SECRET_ENV, SERVER_ENV, cmd_keys
from gdbpool.cli.notify import cmd_bridge, cmd_notify, cmd_subscribe
from gdbpool.cli.postgres import PASSWORD_ENV, REPLICA_WAIT, cmd_postgres
from gdbpool.errors import GDBPoolError

__all__ = ["build_parser", "main"]

# -- subcommands --------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job end to end (see :mod:`gdbpool.cli.demo`)."""
    from gdbpool.cli.demo import run_demo

    if args.dsn is not None:
        check_dsn(args.dsn)  # bad input exits 2 before the tour prints anything

    return run_demo(dsn=args.dsn, json_logs=args.json_logs)


# -- the parser ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``gdbpool`` command, with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="gdbpool",
        description=(
            "PostgreSQL pooling for gevent, as an actor system, with a ZeroMQ NOTIFY bridge."
        ),
        epilog="exit codes: 0 ok, 1 runtime failure, 2 bad usage or input, 130 Ctrl-C",
    )
    from gdbpool import __version__

    parser.add_argument("--version", action="version", version=f"gdbpool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser("demo", help="run the end-to-end tour (embedded PostgreSQL unless --dsn)")
    demo.add_argument("--dsn", help="use this server instead of starting an embedded one")
    demo.add_argument("--json-logs", action="store_true", help="log as JSON lines")
    demo.set_defaults(func=cmd_demo)

    pg = sub.add_parser("postgres", help="run an embedded PostgreSQL server in the foreground")
    pg.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data directory (kept; initialised when empty). Default: throwaway",
    )
    pg.add_argument(
        "--port", type=tcp_port, default=5432, help="TCP port on 127.0.0.1 (default 5432)"
    )
    pg.add_argument(
        "--password-env",
        metavar="VAR",
        default=None,
        help=f"read the superuser password of a new cluster from environment "
        f"variable VAR (default {PASSWORD_ENV} when set, else random; "
        f"printed masked). Also used with --replica-of when DSN has none",
    )
    pg.add_argument(
        "--password",
        default=None,
        help="the password itself (visible to local users in ps: prefer --password-env)",
    )
    pg.add_argument(
        "--replica-of",
        metavar="DSN",
        default=None,
        help="start as a streaming replica of the primary at DSN",
    )
    pg.add_argument(
        "--wait",
        type=positive(float, zero=True),
        default=None,
        metavar="SECONDS",
        help=f"with --replica-of: wait up to SECONDS for the primary to accept "
        f"connections (default {REPLICA_WAIT:g})",
    )
    pg.add_argument(
        "--fast", action="store_true", help="fsync off etc. (unsafe; for tests and demos only)"
    )
    pg.set_defaults(func=cmd_postgres)

    dsn_help = "without password=, libpq reads PGPASSWORD (keeps it out of ps)"
    wait_help = (
        "wait up to SECONDS for the server to accept connections, retrying with a "
        "bounded backoff (default 0: fail at once)"
    )
    br = sub.add_parser("bridge", help="publish NOTIFY events on a ZeroMQ PUB socket")
    br.add_argument("--dsn", required=True, help="the primary (LISTEN needs it); " + dsn_help)
    br.add_argument(
        "--channel",
        action="append",
        required=True,
        metavar="C",
        help="a channel to LISTEN on and publish (repeat for more)",
    )
    br.add_argument(
        "--bind",
        default="tcp://127.0.0.1:0",
        metavar="ENDPOINT",
        help="where to publish (default tcp://127.0.0.1:0: loopback, a free port; "
        "any other address only when given here)",
    )
    br.add_argument(
        "--sndhwm",
        type=positive(int, zero=True),
        default=10_000,
        metavar="N",
        help="messages queued per subscriber before ZeroMQ drops (default 10000)",
    )
    br.add_argument(
        "--heartbeat",
        type=positive(float),
        default=1.0,
        metavar="SECONDS",
        help="heartbeat interval (default 1.0)",
    )
    br.add_argument(
        "--replay-size",
        type=positive(int, zero=True),
        default=10_000,
        metavar="N",
        help="messages kept per channel to answer replay requests (default 10000; 0: no replay)",
    )
    br.add_argument(
        "--replay-bind",
        default="tcp://127.0.0.1:0",
        metavar="ENDPOINT",
        help="where to answer replay requests (default tcp://127.0.0.1:0: loopback, a free "
        "port; advertised in every heartbeat)",
    )
    br.add_argument(
        "--curve-secret-file",
        metavar="PATH",
        default=None,
        help=f"encrypt with CURVE: the bridge's key pair (a .key_secret file from gdbpool "
        f"keys; default ${SECRET_ENV} when set, else plaintext)",
    )
    br.add_argument(
        "--allow-file",
        metavar="PATH",
        default=None,
        help="admit only the CURVE public keys listed in PATH, one per line "
        "(default: any CURVE client)",
    )
    br.add_argument(
        "--metrics",
        default=None,
        metavar="HOST:PORT",
        help="serve OpenMetrics text on http://HOST:PORT/metrics (e.g. 127.0.0.1:9187; "
        "port 0 picks a free one; needs the metrics extra). Default: off",
    )
    br.add_argument(
        "--wait", type=positive(float, zero=True), default=0.0, metavar="SECONDS", help=wait_help
    )
    br.add_argument("--json-logs", action="store_true", help="log to stderr as JSON lines")
    br.set_defaults(func=cmd_bridge)

    su = sub.add_parser("subscribe", help="print events from one or more bridges")
    su.add_argument(
        "--connect",
        action="append",
        required=True,
        metavar="ENDPOINT",
        help="a bridge endpoint, e.g. tcp://127.0.0.1:55555 (repeat for more)",
    )
    su.add_argument(
        "--channel",
        action="append",
        required=True,
        metavar="C",
        help="a channel name prefix to follow (repeat for more)",
    )
    su.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line (type, channel, payload, seq, source, pid...)",
    )
    su.add_argument(
        "--count",
        type=positive(int),
        default=None,
        metavar="N",
        help="exit 0 after N notifications",
    )
    su.add_argument(
        "--timeout",
        type=positive(float),
        default=None,
        metavar="SECONDS",
        help="exit 1 when no notification arrives for SECONDS",
    )
    su.add_argument(
        "--heartbeat-timeout",
        type=positive(float),
        default=None,
        metavar="SECONDS",
        help="report a bridge silent after SECONDS without a message "
        "(default: 3 of its own heartbeat intervals)",
    )
    su.add_argument(
        "--resume-file",
        default=None,
        metavar="PATH",
        help="keep the position in PATH (rewritten atomically) and resume from it on start: "
        "what was missed meanwhile is replayed while the bridges still hold it",
    )
    su.add_argument(
        "--max-lateness",
        type=positive(float),
        default=None,
        metavar="SECONDS",
        help="report (once per episode) when messages arrive over SECONDS after being sent",
    )
    su.add_argument(
        "--no-replay",
        action="store_true",
        help="do not ask bridges to replay what was missed (gaps are only reported)",
    )
    su.add_argument(
        "--curve-server-key-file",
        metavar="PATH",
        default=None,
        help=f"the bridges speak CURVE: their public key (a .key file; default ${SERVER_ENV})",
    )
    su.add_argument(
        "--curve-secret-file",
        metavar="PATH",
        default=None,
        help=f"this subscriber's key pair (a .key_secret file; default ${SECRET_ENV}, "
        "else a fresh pair per run)",
    )
    su.add_argument("--json-logs", action="store_true", help="log to stderr as JSON lines")
    su.set_defaults(func=cmd_subscribe)

    ke = sub.add_parser(
        "keys",
        help="write a CURVE key pair (OUT.key_secret 0600, OUT.key) and print the public key",
    )
    ke.add_argument("--out", required=True, metavar="OUT", help="path prefix of the two files")
    ke.set_defaults(func=cmd_keys)

    no = sub.add_parser("notify", help="send one NOTIFY")
    no.add_argument("--dsn", required=True, help=dsn_help)
    no.add_argument("--channel", required=True, metavar="C")
    no.add_argument(
        "--payload",
        required=True,
        metavar="P",
        help="the payload (at most 7999 bytes of UTF-8); '-' reads it from stdin "
        "(trailing newlines removed)",
    )
    no.add_argument(
        "--wait", type=positive(float, zero=True), default=0.0, metavar="SECONDS", help=wait_help
    )
    no.set_defaults(func=cmd_notify)

    be = sub.add_parser(
        "bench",
        help="list the benchmarks, or run one (source checkout only)",
        description="Without NAME, list the benchmarks of the repository's bench/ directory "
        "(a source checkout; not in an installed wheel). With NAME, run bench/NAME.py ARGS... "
        "with this Python in the foreground; its exit code is the command's.",
        epilog="pool and interactions need the bench extra: pip install 'gdbpool[bench]'. "
        "gdbpool bench NAME --help shows a benchmark's own options.",
    )
    be.add_argument("name", nargs="?", metavar="NAME", help="the benchmark to run")
    be.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar="ARGS",
        help="passed to bench/NAME.py untouched (e.g. --seconds 1 --rounds 1)",
    )
    be.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gdbpool`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BadInput as exc:
        print(f"gdbpool {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except GDBPoolError as exc:
        from gdbpool.logging import redact

        print(f"gdbpool {args.command}: error: {redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
