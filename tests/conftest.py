"""Shared fixtures: real PostgreSQL servers on loopback, started for the test session.

* ``pg_primary`` — a throwaway primary cluster for the whole session.
* ``pg_replica`` — a streaming replica of ``pg_primary`` (``pg_basebackup -R``).
* ``dsn`` — a fresh database on the primary for one test (dropped afterwards),
  so tests never see each other's data.  ``replica_dsn`` is the same database
  seen through the replica (the fixture waits until the replica has it).
* ``make_pg`` — a factory of private clusters for tests that stop, restart or
  break their server (so the shared primary is never disturbed).
* ``wait_replay`` — wait until the replica has replayed everything the primary
  has written so far.
* ``make_pair`` — a private primary + streaming replica for one test, which the
  test may promote, stop or demote (failover tests); stopped afterwards.

Every test has a pytest-timeout (pyproject.toml); fixtures bound their waits too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import psycopg2
import pytest
from _pg_pair import PgPair

from gdbpool import EmbeddedPostgres, make_psycopg_green

make_psycopg_green()  # raw psycopg2.connect() in tests is cooperative too


@pytest.fixture(scope="session")
def pg_primary() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_replica(pg_primary: EmbeddedPostgres) -> Iterator[EmbeddedPostgres]:
    replica = pg_primary.create_replica()
    try:
        _wait_streaming(pg_primary, timeout=30)
        yield replica
    finally:
        replica.stop()


def _wait_streaming(primary: EmbeddedPostgres, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sql = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        if primary.psql(sql) != "0":
            return
        time.sleep(0.05)
    raise TimeoutError(f"replica did not start streaming within {timeout:.0f}s")


def _current_lsn(dsn: str) -> str:
    # The insert position, not pg_current_wal_lsn(): with synchronous_commit=off
    # (fast throwaway clusters) the write position can still be short of a
    # commit that has already returned.
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_current_wal_insert_lsn()::text")
        lsn = cur.fetchone()[0]
    conn.close()
    return str(lsn)


def wait_replayed(primary_dsn: str, replica_dsn: str, timeout: float = 15.0) -> None:
    """Block until the replica has replayed the primary's current WAL position."""
    target = _current_lsn(primary_dsn)
    deadline = time.monotonic() + timeout
    conn = psycopg2.connect(replica_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,))
                if cur.fetchone()[0]:
                    return
                time.sleep(0.02)
    finally:
        conn.close()
    raise TimeoutError(f"replica did not replay up to {target} within {timeout}s")


@pytest.fixture
def wait_replay() -> Callable[..., None]:
    return wait_replayed


@pytest.fixture
def dbname(pg_primary: EmbeddedPostgres) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(pg_primary.dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def dsn(pg_primary: EmbeddedPostgres, dbname: str) -> str:
    return pg_primary.dsn(dbname)


@pytest.fixture
def replica_dsn(pg_primary: EmbeddedPostgres, pg_replica: EmbeddedPostgres, dbname: str) -> str:
    wait_replayed(pg_primary.dsn(), pg_replica.dsn())
    return pg_replica.dsn(dbname)


@pytest.fixture
def make_pg() -> Iterator[Callable[..., EmbeddedPostgres]]:
    made: list[EmbeddedPostgres] = []

    def factory(**kwargs: object) -> EmbeddedPostgres:
        server = EmbeddedPostgres(**kwargs).start()  # type: ignore[arg-type]
        made.append(server)
        return server

    try:
        yield factory
    finally:
        for server in reversed(made):
            server.stop()


@pytest.fixture
def make_pair() -> Iterator[Callable[..., PgPair]]:
    """``make_pair(sync=False)``: a fresh primary + replica that a test may promote.

    ``sync=True`` makes the replica synchronous (every acknowledged commit is on
    it too, so a test may check that no acknowledged write is lost). Both
    commit with ``synchronous_commit=on`` (``_pg_pair.wait_caught_up`` relies on
    it) and have ``full_page_writes`` and ``wal_keep_size`` set so that
    ``make_standby_of`` can rewind either; standbys retry streaming every 100 ms.
    """
    made: list[EmbeddedPostgres] = []

    def factory(sync: bool = False) -> PgPair:
        settings = {
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "wal_keep_size": "'128MB'",
            "wal_retrieve_retry_interval": "'100ms'",
        }
        primary_settings = dict(settings)
        if sync:
            primary_settings["synchronous_standby_names"] = "'*'"
        primary = EmbeddedPostgres(settings=primary_settings)
        made.append(primary)
        primary.start()
        replica = EmbeddedPostgres(
            replica_of=primary, fast=True, settings={**settings, "synchronous_standby_names": "''"}
        )
        made.append(replica)
        replica.start()
        _wait_streaming(primary, timeout=30)
        return PgPair(primary, replica)

    try:
        yield factory
    finally:
        for server in reversed(made):
            server.stop(mode="immediate")
