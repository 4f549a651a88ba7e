"""Changing roles: promote a standby, turn an old primary into a standby of the new one."""

from __future__ import annotations

from collections.abc import Callable

import psycopg2
import pytest
from _pg_pair import PgPair, wait_caught_up

from gdbpool import EmbeddedPostgres, EmbeddedPostgresError


def _one(dsn: str, sql: str) -> object:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0] if cur.description else None
    finally:
        conn.close()


def test_promote_returns_once_writable(make_pair: Callable[..., PgPair]) -> None:
    pair = make_pair()
    pair.replica.promote()
    assert _one(pair.replica.dsn(), "SELECT pg_is_in_recovery()") is False
    _one(pair.replica.dsn(), "CREATE TABLE after_promote (v int)")  # writable at once


def test_promote_refuses_a_primary(make_pg: Callable[..., EmbeddedPostgres]) -> None:
    server = make_pg()
    with pytest.raises(EmbeddedPostgresError, match="not a standby"):
        server.promote()


def test_old_primary_after_a_crash_comes_back_as_standby_of_the_new_one(
    make_pair: Callable[..., PgPair],
) -> None:
    pair = make_pair()
    _one(pair.primary.dsn(), "CREATE TABLE t (v int)")
    wait_caught_up(pair.primary, pair.replica)
    pair.primary.halt(mode="immediate")
    pair.replica.promote()
    _one(pair.replica.dsn(), "INSERT INTO t VALUES (1)")
    pair.primary.make_standby_of(pair.replica)  # pg_rewind, standby.signal, primary_conninfo
    assert _one(pair.primary.dsn(), "SELECT pg_is_in_recovery()") is True
    wait_caught_up(pair.replica, pair.primary)
    assert _one(pair.primary.dsn(), "SELECT count(*) FROM t") == 1


def test_a_forked_old_primary_is_rewound(
    make_pair: Callable[..., PgPair],
) -> None:
    pair = make_pair()
    _one(pair.primary.dsn(), "CREATE TABLE t (v int)")
    wait_caught_up(pair.primary, pair.replica)
    pair.replica.promote()  # split brain for a moment: both take writes, histories fork
    _one(pair.primary.dsn(), "INSERT INTO t SELECT generate_series(1, 1000)")
    _one(pair.replica.dsn(), "INSERT INTO t VALUES (-1)")
    pair.primary.make_standby_of(pair.replica)
    wait_caught_up(pair.replica, pair.primary)
    assert _one(pair.primary.dsn(), "SELECT array_agg(v) FROM t") == [-1]
