"""``gdbpool postgres``: an embedded PostgreSQL server in the foreground, for Procfiles.

Its password comes from ``PGPASSWORD`` or ``--password-env VAR`` (never the
command line); ``--replica-of DSN`` makes it a streaming replica of a running
primary, which it waits for first (a Procfile starts both at once).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from gdbpool.cli.args import BadInput, check_dsn
from gdbpool.cli.signals import StopFlag
from gdbpool.server.wait import connect_when_ready, wait_for_server

__all__ = ["PASSWORD_ENV", "REPLICA_WAIT", "cmd_postgres"]

#: Seconds a ``gdbpool postgres --replica-of`` waits for its primary by default.
REPLICA_WAIT = 60.0
#: Where ``gdbpool postgres`` reads its password by default (libpq's own variable).
PASSWORD_ENV = "PGPASSWORD"  # noqa: S105 - a variable name


def cmd_postgres(args: argparse.Namespace) -> int:
    """Run an embedded PostgreSQL server in the foreground until SIGINT/SIGTERM."""
    from gdbpool.logging import redact
    from gdbpool.server.embedded import EmbeddedPostgres

    password = _password(args)
    replica_of = args.replica_of
    stop = StopFlag(green=False)
    if replica_of is not None:
        replica_of = _with_password(check_dsn(replica_of, "--replica-of"), password)
        # Under a Procfile the primary starts at the same time: give it a while.
        wait = REPLICA_WAIT if args.wait is None else args.wait
        wait_for_server(replica_of, wait, pause=stop.pause)
    server = EmbeddedPostgres(
        data_dir=args.data,
        port=args.port,
        fast=args.fast,
        replica_of=replica_of,
        password=password,
    )
    try:
        server.start()
        if replica_of is None:
            _ensure_postgres_role(server)
        role = "replica" if replica_of is not None else "primary"
        print(
            f"gdbpool postgres: {role} ready on {server.host}:{server.port} data={server.data_dir}",
            flush=True,
        )
        print(f"gdbpool postgres: dsn: {redact(server.dsn())}", flush=True)
        while not stop.wait(0.5):
            if not server.is_running:
                print("gdbpool postgres: server exited unexpectedly", file=sys.stderr)
                return 1
    finally:
        server.stop()
        print("gdbpool postgres: stopped", flush=True)
    return stop.code


def _password(args: argparse.Namespace) -> str | None:
    """``--password``, else the variable named by ``--password-env`` (``PGPASSWORD``).

    None (a random password) when neither is given; :class:`BadInput` when
    ``--password-env`` names a variable that is not set.
    """
    if args.password is not None:
        return str(args.password)
    name = args.password_env or PASSWORD_ENV
    value = os.environ.get(name)
    if not value and args.password_env is not None:
        raise BadInput(f"--password-env {name}: the environment variable {name} is not set")
    return value or None


def _with_password(dsn: str, password: str | None) -> str:
    """``dsn`` with ``password`` added when it has none (kept in memory, never in argv)."""
    from psycopg2.extensions import make_dsn, parse_dsn

    if password is None or parse_dsn(dsn).get("password"):
        return dsn
    return str(make_dsn(dsn, password=password))


def _ensure_postgres_role(server: Any) -> None:
    """Make ``postgres`` a login role with the cluster's password.

    A cluster made by a non-root user has that user as superuser; adding
    ``postgres`` lets one DSN (as in the Procfiles) work whoever runs it.
    """
    if server.user == "postgres":
        return
    from psycopg2 import sql

    conn = connect_when_ready(server.dsn(), 0)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'postgres'")
            if cur.fetchone() is None:
                cur.execute(
                    sql.SQL("CREATE ROLE postgres SUPERUSER LOGIN PASSWORD {}").format(
                        sql.Literal(server.password)
                    )
                )
    finally:
        conn.close()
