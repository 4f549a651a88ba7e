"""A pytest plugin for applications' own tests: real PostgreSQL servers as fixtures.

Installed with gdbpool and loaded by pytest through the ``pytest11`` entry point
(or ``-p gdbpool.pytest_plugin``).  Fixtures, all named ``gdbpool_*`` so they
never clash with an application's own:

* ``gdbpool_primary``: an embedded throwaway primary for the test session.
* ``gdbpool_replica``: a streaming replica of it, for the session.
* ``gdbpool_dsn``: a fresh database on the primary for one test, dropped afterwards.
* ``gdbpool_ipool``: a :class:`~gdbpool.DBInteractionPool` on ``gdbpool_dsn``,
  closed afterwards.

The servers need PostgreSQL's server binaries (see docs/guide/testing.md).
Nothing starts until a test asks for a fixture.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

__all__ = ["gdbpool_dsn", "gdbpool_ipool", "gdbpool_primary", "gdbpool_replica"]

#: Seconds ``gdbpool_replica`` waits for the replica to stream.
REPLICA_WAIT = 30.0

if TYPE_CHECKING:
    from gdbpool import DBInteractionPool, EmbeddedPostgres


@pytest.fixture(scope="session")
def gdbpool_primary() -> Iterator[EmbeddedPostgres]:
    """A throwaway embedded PostgreSQL primary on loopback, for the whole session."""
    from gdbpool import EmbeddedPostgres

    server = EmbeddedPostgres().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gdbpool_replica(gdbpool_primary: EmbeddedPostgres) -> Iterator[EmbeddedPostgres]:
    """A streaming replica of ``gdbpool_primary``, streaming before the first test uses it."""
    replica = gdbpool_primary.create_replica()
    try:
        deadline = time.monotonic() + REPLICA_WAIT
        sql = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        while gdbpool_primary.psql(sql) == "0":
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica did not stream within {REPLICA_WAIT:g} s")
            time.sleep(0.05)
        yield replica
    finally:
        replica.stop()


@pytest.fixture
def gdbpool_dsn(gdbpool_primary: EmbeddedPostgres) -> Iterator[str]:
    """A DSN to a fresh database on ``gdbpool_primary``, dropped after the test."""
    import psycopg2
    from psycopg2 import sql

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(gdbpool_primary.dsn())
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield gdbpool_primary.dsn(name)
        with admin.cursor() as cur:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    finally:
        admin.close()


@pytest.fixture
def gdbpool_ipool(gdbpool_dsn: str) -> Iterator[DBInteractionPool]:
    """A :class:`~gdbpool.DBInteractionPool` on ``gdbpool_dsn``, closed after the test."""
    from gdbpool import DBInteractionPool

    ipool = DBInteractionPool(gdbpool_dsn, pool_size=2)
    try:
        yield ipool
    finally:
        ipool.close()
