"""What bounds a pool call: its timeout end to end, killed callers, TCP keepalives (#16)."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import psycopg2
import pytest
from _waits import wait_for
from tcp_proxy import TcpProxy

from gdbpool import (
    DBConnectionPool,
    DBInteractionPool,
    EmbeddedPostgres,
    GDBPoolError,
    Interaction,
    InteractionTimeout,
)

MakePool = Callable[..., DBConnectionPool]


@pytest.fixture
def make_pool() -> Iterator[MakePool]:
    pools: list[DBConnectionPool] = []

    def factory(dsn: str, pool_size: int = 1, **options: Any) -> DBConnectionPool:
        options.setdefault("name", f"b{uuid.uuid4().hex[:8]}")
        options.setdefault("reconnect_initial", 0.05)
        options.setdefault("reconnect_max", 0.3)
        options.setdefault("connect_timeout", 1.0)
        pool = DBConnectionPool(dsn, pool_size, **options)
        pools.append(pool)
        pool.wait(10)
        return pool

    yield factory
    for pool in pools:
        pool.close(timeout=2)


def _socket_of(conn: Any) -> socket.socket:
    return socket.socket(fileno=os.dup(conn.fileno()))


# -- keepalives -------------------------------------------------------------------------


def test_pool_connections_have_tcp_keepalives(make_pool: MakePool, dsn: str) -> None:
    pool = make_pool(dsn)
    with pool.connection() as conn:
        sock = _socket_of(conn)
        try:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        finally:
            sock.close()


def test_keepalive_settings_in_the_pool_dsn_win(make_pool: MakePool, dsn: str) -> None:
    pool = make_pool(f"{dsn} keepalives_idle=2 keepalives_interval=1")
    with pool.connection() as conn:
        sock = _socket_of(conn)
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 2
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 1
        finally:
            sock.close()


# -- helpers ------------------------------------------------------------------------------


def _query(dsn: str, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description is not None else []
    finally:
        conn.close()


def _active(dsn: str, fragment: str) -> int:
    rows = _query(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
        "AND query LIKE %s AND pid <> pg_backend_pid()",
        (f"%{fragment}%",),
    )
    return int(rows[0][0])


@pytest.fixture
def side_table(dsn: str) -> Iterator[str]:
    """A table the interactions write to: what ran is what is in it."""
    name = f"side_{uuid.uuid4().hex[:8]}"
    _query(dsn, f"CREATE TABLE {name} (v int)")
    yield name
    _query(dsn, f"DROP TABLE {name}")


def _call(pool: DBConnectionPool, work: Any, args: Any = None, **options: Any) -> Any:
    interaction = Interaction(work, args, **options)
    pool.submit(interaction)
    return interaction.reply.get()


# -- killed callers -------------------------------------------------------------------------


def test_callers_killed_while_queued_never_run(
    make_pool: MakePool, dsn: str, side_table: str
) -> None:
    pool = make_pool(dsn, 1)
    blocker = Interaction("SELECT pg_sleep(0.5)")
    pool.submit(blocker)
    assert wait_for(lambda: _active(dsn, "pg_sleep(0.5)") == 1, 5)
    callers = [
        gevent.spawn(_call, pool, f"INSERT INTO {side_table} VALUES (%s)", (i,))
        for i in range(10)
    ]
    assert wait_for(lambda: pool.stats()["requests_waiting"] == 10, 5)
    gevent.killall(callers, timeout=5)
    assert blocker.reply.get(timeout=5) == [("",)]
    assert _call(pool, "SELECT 1") == [(1,)]  # everything queued before it is done
    assert _query(dsn, f"SELECT count(*) FROM {side_table}") == [(0,)]


def test_a_caller_killed_mid_statement_has_it_cancelled_on_the_server(
    make_pool: MakePool, dsn: str, side_table: str
) -> None:
    pool = make_pool(dsn, 1)

    def work(conn: Any, cursor: Any) -> None:
        cursor.execute("SELECT pg_sleep(30)")
        cursor.execute(f"INSERT INTO {side_table} VALUES (1)")

    caller = gevent.spawn(_call, pool, work)
    assert wait_for(lambda: _active(dsn, "pg_sleep(30)") == 1, 5)
    caller.kill(timeout=5)
    # Cancelled at once on the server, not after 30 s; the insert after it never ran.
    assert wait_for(lambda: _active(dsn, "pg_sleep(30)") == 0, 2)
    assert _call(pool, "SELECT 2") == [(2,)]
    assert _query(dsn, f"SELECT count(*) FROM {side_table}") == [(0,)]
    assert pool.stats()["connections_lost"] == 0  # the cancel kept the connection usable


def test_a_reply_waited_with_its_own_get_timeout_is_not_abandoned(
    make_pool: MakePool, dsn: str
) -> None:
    pool = make_pool(dsn, 1)
    interaction = Interaction("SELECT pg_sleep(0.3), 7")
    pool.submit(interaction)
    with pytest.raises(gevent.Timeout):
        interaction.reply.get(timeout=0.05)  # the caller bounds its wait, and waits again
    assert interaction.reply.get(timeout=5) == [("", 7)]


# -- a timeout bounds the whole call ---------------------------------------------------------


@pytest.fixture
def proxy(pg_primary: EmbeddedPostgres) -> Iterator[TcpProxy]:
    p = TcpProxy(pg_primary.port).start()
    yield p
    p.set_mode("pass")
    p.close()


def test_every_call_through_a_blackhole_returns_within_its_timeout_plus_one_second(
    proxy: TcpProxy, dsn: str
) -> None:
    ipool = DBInteractionPool(
        proxy.dsn(dsn), 4, pool_name=f"bh{uuid.uuid4().hex[:6]}", connect_timeout=1.0,
        reconnect_initial=0.05, reconnect_max=0.3,
    )  # fmt: skip
    try:
        assert ipool.run("SELECT 1").get(timeout=5) == [(1,)]
        proxy.set_mode("blackhole")

        def call() -> tuple[float, BaseException | None]:
            started = time.monotonic()
            try:
                ipool.run("SELECT 1", timeout=2).get()
            except GDBPoolError as exc:
                return time.monotonic() - started, exc
            return time.monotonic() - started, None

        calls = [gevent.spawn(call) for _ in range(24)]
        gevent.joinall(calls, timeout=10)
        outcomes = [c.value for c in calls]
        assert all(o is not None for o in outcomes)
        for took, error in outcomes:
            assert isinstance(error, InteractionTimeout), error
            assert took < 3.0, took
        proxy.set_mode("pass")
        assert ipool.run("SELECT 2").get(timeout=10) == [(2,)]  # and the pool recovers
    finally:
        proxy.set_mode("pass")
        ipool.close()


def test_queued_callers_fail_when_their_own_timeout_runs_out(
    make_pool: MakePool, dsn: str
) -> None:
    pool = make_pool(dsn, 1)  # its own timeout is 30 s
    blocker = Interaction("SELECT pg_sleep(3)")
    pool.submit(blocker)
    assert wait_for(lambda: _active(dsn, "pg_sleep(3)") == 1, 5)

    def call() -> tuple[float, BaseException | None]:
        started = time.monotonic()
        try:
            _call(pool, "SELECT 1", timeout=1)
        except GDBPoolError as exc:
            return time.monotonic() - started, exc
        return time.monotonic() - started, None

    calls = [gevent.spawn(call) for _ in range(5)]
    gevent.joinall(calls, timeout=10)
    for c in calls:
        took, error = c.value
        assert isinstance(error, InteractionTimeout), error
        assert 0.9 < took < 1.5, took
