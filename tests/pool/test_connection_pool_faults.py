"""DBConnectionPool under faults: killed backends, server restarts, network cuts, killed greenlets.

Tests that stop or break their server use ``make_pg()`` (a private cluster) or
a :class:`~tcp_proxy.TcpProxy` in front of the shared one, never ``pg_primary``
itself.
"""

from __future__ import annotations

import select
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
    DBInteractionException,
    EmbeddedPostgres,
    Interaction,
    PoolClosed,
    PoolTimeout,
)
from gdbpool.pool.connection_pool import ANSWER_MARGIN
from gdbpool.pool.worker import Gone

MakePool = Callable[..., DBConnectionPool]


@pytest.fixture
def make_pool() -> Iterator[MakePool]:
    """Pools with fast reconnects and unique names; all closed afterwards."""
    pools: list[DBConnectionPool] = []

    def factory(dsn: str, pool_size: int = 2, **options: Any) -> DBConnectionPool:
        options.setdefault("name", f"f{uuid.uuid4().hex[:8]}")
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


@pytest.fixture
def proxy(pg_primary: EmbeddedPostgres) -> Iterator[TcpProxy]:
    p = TcpProxy(pg_primary.port).start()
    yield p
    p.close()


def submit(pool: DBConnectionPool, work: Any, args: Any = None, **options: Any) -> Any:
    interaction = Interaction(work, args, **options)
    pool.submit(interaction)
    return interaction.reply.get(timeout=15)


def pids(server: EmbeddedPostgres, application_name: str) -> set[int]:
    out = server.psql(
        f"SELECT pid FROM pg_stat_activity WHERE application_name = '{application_name}'"
    )
    return {int(line) for line in out.split()}


def terminate(server: EmbeddedPostgres, pid: int) -> None:
    server.psql(f"SELECT pg_terminate_backend({pid})")
    assert wait_for(lambda: str(pid) not in server.psql("SELECT pid FROM pg_stat_activity"))


def active_queries(server: EmbeddedPostgres, fragment: str) -> int:
    return int(
        server.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            f"AND query LIKE '%{fragment}%' AND pid <> pg_backend_pid()"
        )
    )


# -- killed backends ------------------------------------------------------------------------


def test_a_connection_terminated_while_idle_is_replaced_before_it_is_used(
    make_pool: MakePool, dsn: str, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(dsn, 1, name="idlekill")
    (pid,) = pids(pg_primary, "gdbpool:idlekill")
    terminate(pg_primary, pid)
    assert submit(pool, "SELECT 1") == [(1,)]  # the interaction is not lost with it
    terminate(pg_primary, pids(pg_primary, "gdbpool:idlekill").pop())
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
    assert pool.stats()["connections_lost"] == 2


def test_a_connection_terminated_while_checked_out_is_replaced_on_put(
    make_pool: MakePool, dsn: str, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(dsn, 1, name="outkill")
    conn = pool.get()
    terminate(pg_primary, conn.info.backend_pid)
    with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
        cur.execute("SELECT 1")
    pool.put(conn)
    assert submit(pool, "SELECT 1") == [(1,)]
    assert pool.stats()["connections_lost"] == 1
    assert wait_for(lambda: len(pids(pg_primary, "gdbpool:outkill")) == 1)


def test_a_connection_killed_while_held_unused_is_checked_before_a_waiting_get_gets_it(
    make_pool: MakePool, dsn: str, pg_primary: EmbeddedPostgres
) -> None:
    # put() gives back a clean-looking connection itself; the waiting get() must
    # still find the backend gone (the socket check), not hand it out dead.
    pool = make_pool(dsn, 1, name="heldkill")
    held = pool.get()
    waiter = gevent.spawn(pool.get, 10)
    assert wait_for(lambda: pool.stats()["requests_waiting"] == 1)
    terminate(pg_primary, held.info.backend_pid)
    assert wait_for(lambda: not pids(pg_primary, "gdbpool:heldkill"))
    pool.put(held)
    conn = waiter.get(timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        pool.put(conn)
    assert pool.stats()["connections_lost"] == 1


def test_a_connection_put_back_after_its_worker_stopped_is_closed(
    make_pool: MakePool, dsn: str, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(dsn, 1, name="orphan")
    conn = pool.get()
    (worker,) = pool._supervisor.children
    worker.stop()  # what a giving-up supervisor does; it leaves the lent connection open
    assert not conn.closed
    pool.put(conn)
    assert conn.closed
    assert submit(pool, "SELECT 1") == [(1,)]  # served by a replacement
    assert wait_for(lambda: len(pids(pg_primary, "gdbpool:orphan")) == 1)


def test_an_interaction_left_in_a_killed_workers_mailbox_fails_instead_of_hanging(
    make_pool: MakePool, dsn: str
) -> None:
    pool = make_pool(dsn, 1, name="dropped")
    busy = Interaction("SELECT pg_sleep(30)")
    pool.submit(busy)
    (worker,) = pool._supervisor.children
    queued = Interaction("SELECT 1")
    worker._post((queued, None))  # white box: in its mailbox behind the long query
    worker.stop(timeout=0.1)  # the query does not finish: killed
    with pytest.raises(PoolClosed, match="worker stopped first"):
        queued.reply.get(timeout=5)
    with pytest.raises(DBInteractionException):
        busy.reply.get(timeout=5)


# -- server restart ---------------------------------------------------------------------------


def test_requests_waiting_through_a_server_restart_are_served_when_it_returns(
    make_pool: MakePool, make_pg: Callable[..., EmbeddedPostgres]
) -> None:
    server = make_pg()
    pool = make_pool(server.dsn(), 2, timeout=20)
    assert submit(pool, "SELECT 1") == [(1,)]
    server.halt()
    waiting = [Interaction("SELECT 42") for _ in range(4)]
    for interaction in waiting:
        pool.submit(interaction)
    assert wait_for(lambda: not pool.healthy, timeout=5)
    assert pool.stats()["connections_errors"] >= 1
    server.start()
    assert [i.reply.get(timeout=15) for i in waiting] == [[(42,)]] * 4
    assert pool.healthy
    assert pool.stats()["requests_errors"] == 0


def test_while_the_server_is_down_waiting_requests_fail_with_a_timeout_naming_it(
    make_pool: MakePool, make_pg: Callable[..., EmbeddedPostgres]
) -> None:
    server = make_pg()
    pool = make_pool(server.dsn(), 1, timeout=0.5)
    server.halt()
    with pytest.raises(PoolTimeout) as info:
        submit(pool, "SELECT 1")
    text = str(info.value)
    assert f"127.0.0.1:{server.port}/postgres" in text
    assert "unreachable" in text
    assert server.password not in text
    with pytest.raises(PoolTimeout):
        pool.get(timeout=0.3)
    server.start()
    assert submit(pool, "SELECT 1") == [(1,)]


# -- network cuts ------------------------------------------------------------------------------


def test_after_a_network_drop_the_pool_reconnects_when_the_network_returns(
    make_pool: MakePool, proxy: TcpProxy, dbname: str, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(proxy.dsn(pg_primary.dsn(dbname)), 2, timeout=10)
    assert submit(pool, "SELECT 1") == [(1,)]
    proxy.set_mode("drop")
    pending = Interaction("SELECT 7")
    pool.submit(pending)
    assert wait_for(lambda: pool.stats()["connections_errors"] >= 1)
    assert not pending.reply.ready()
    proxy.set_mode("pass")
    assert pending.reply.get(timeout=10) == [(7,)]
    assert pool.stats()["connections_lost"] >= 1


def test_a_blackholed_network_times_requests_out_and_the_pool_recovers(
    make_pool: MakePool, proxy: TcpProxy, dbname: str, pg_primary: EmbeddedPostgres
) -> None:
    # check_after=0: every checkout pings, so a silent (half-open) connection is found.
    pool = make_pool(
        proxy.dsn(pg_primary.dsn(dbname)), 1, timeout=1.0, check_after=0, connect_timeout=0.3
    )
    assert submit(pool, "SELECT 1") == [(1,)]
    proxy.set_mode("blackhole")
    started = time.monotonic()
    with pytest.raises(PoolTimeout):
        submit(pool, "SELECT 1")
    assert time.monotonic() - started < 3
    proxy.set_mode("pass")
    assert submit(pool, "SELECT 2") == [(2,)]


# -- killed greenlets ----------------------------------------------------------------------------


def test_a_greenlet_killed_mid_query_leaves_no_broken_connection_and_cancels_the_query(
    make_pool: MakePool, dsn: str, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(dsn, 1, name="killed")
    started = gevent.event.Event()

    def slow_user() -> None:
        with pool.connection() as conn, conn.cursor() as cur:
            started.set()
            cur.execute("SELECT pg_sleep(30)")

    user = gevent.spawn(slow_user)
    assert started.wait(5)
    assert wait_for(lambda: active_queries(pg_primary, "pg_sleep(30)") == 1)
    user.kill(block=True, timeout=5)
    assert wait_for(lambda: active_queries(pg_primary, "pg_sleep(30)") == 0)
    assert submit(pool, "SELECT 1") == [(1,)]
    with pool.connection() as conn:
        assert not conn.closed and conn.status == psycopg2.extensions.STATUS_READY
    assert pool.stats()["connections_lost"] == 1


def test_a_worker_killed_mid_query_fails_its_interaction_and_is_replaced(
    make_pool: MakePool, dsn: str, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(dsn, 1, name="workerkill")
    interaction = Interaction("SELECT pg_sleep(30)")
    pool.submit(interaction)
    assert wait_for(lambda: active_queries(pg_primary, "pg_sleep(30)") == 1)
    # White box: the worker's greenlet is the one killed.
    (worker,) = pool._supervisor.children
    worker._greenlet.kill(block=True, timeout=5)
    with pytest.raises(DBInteractionException, match="killed"):
        interaction.reply.get(timeout=5)
    assert wait_for(lambda: active_queries(pg_primary, "pg_sleep(30)") == 0)
    assert submit(pool, "SELECT 1") == [(1,)]
    assert wait_for(lambda: len(pids(pg_primary, "gdbpool:workerkill")) == 1)


def test_a_get_interrupted_while_it_checks_the_connection_gives_it_back(
    make_pool: MakePool, proxy: TcpProxy, dbname: str, pg_primary: EmbeddedPostgres
) -> None:
    # check_after=0: every checkout pings; with the network blackholed the
    # ping hangs (up to connect_timeout) and the caller's own timeout fires in it.
    pool = make_pool(proxy.dsn(pg_primary.dsn(dbname)), 1, check_after=0, connect_timeout=3.0)
    assert submit(pool, "SELECT 1") == [(1,)]
    proxy.set_mode("blackhole")
    with pytest.raises(gevent.Timeout), gevent.Timeout(0.3):
        pool.get()
    proxy.set_mode("pass")
    with pool.connection(timeout=5) as conn, conn.cursor() as cur:
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
    assert pool.stats()["pool_size"] == 1


# -- close and broken pools --------------------------------------------------------------


def test_an_interaction_whose_connection_died_just_before_close_fails_with_pool_closed(
    make_pool: MakePool, dsn: str, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(dsn, 1, name="closeretry")
    conn = pool.get()
    fd, pid = conn.fileno(), conn.info.backend_pid
    pool.put(conn)
    assert wait_for(lambda: pool.stats()["pool_available"] == 1)
    terminate(pg_primary, pid)
    # The FATAL message reached the idle socket: the worker will find it dead.
    assert wait_for(lambda: bool(select.select([fd], [], [], 0)[0]))
    interaction = Interaction("SELECT 1")
    pool.submit(interaction)
    pool.close(timeout=2)
    with pytest.raises(PoolClosed):
        interaction.reply.get(timeout=5)
    assert wait_for(lambda: not pids(pg_primary, "gdbpool:closeretry"))  # no reconnect


def test_a_worker_stopped_behind_the_pools_back_is_replaced_and_requests_are_served(
    make_pool: MakePool, dsn: str
) -> None:
    # What a giving-up supervisor does to idle workers (white box: stop one).
    pool = make_pool(dsn, 1)
    (worker,) = pool._supervisor.children
    worker.stop()
    assert submit(pool, "SELECT 1") == [(1,)]
    with pool.connection(timeout=5) as conn:
        assert not conn.closed
    (worker,) = pool._supervisor.children
    worker.stop()
    with pool.connection(timeout=5) as conn:
        assert not conn.closed
    assert pool.stats()["pool_size"] == 1


def test_a_pool_whose_actor_crashed_fails_every_request_instead_of_hanging(
    make_pool: MakePool, dsn: str, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(dsn, 1, name="crashed", timeout=30)
    held = pool.get()
    waiting = Interaction("SELECT 1")
    pool.submit(waiting)
    waiter = gevent.spawn(pool.get)
    assert wait_for(lambda: pool.stats()["requests_waiting"] == 2)
    # White box: an unhandled message crashes the pool actor as a bug in it would;
    # the checkout right behind it is dropped with the actor's mailbox.
    pool._ref.tell(object())
    started = time.monotonic()
    with pytest.raises(PoolClosed, match="broke"):
        pool.get(timeout=0.3)
    assert time.monotonic() - started < 0.3 + ANSWER_MARGIN + 1
    with pytest.raises(PoolClosed, match="broke"):
        waiting.reply.get(timeout=5)
    with pytest.raises(PoolClosed, match="broke"):
        waiter.get(timeout=5)
    assert pool.closed and not pool.healthy
    with pytest.raises(PoolClosed):
        submit(pool, "SELECT 1")
    pool.put(held)
    pool.close(timeout=2)
    assert wait_for(lambda: not pids(pg_primary, "gdbpool:crashed"))


def test_requests_unread_when_the_pool_actor_crashed_fail_instead_of_hanging(
    make_pool: MakePool, dsn: str, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(dsn, 1, name="unread", timeout=30)
    interaction = Interaction("SELECT 1")
    # White box: queue a crash and a request behind it, as happens when requests
    # arrive while the pool actor is busy in its own greenlet (starting a worker).
    pool._ref._post((object(), None))
    pool._ref._post((interaction, None))
    with pytest.raises(PoolClosed, match="broke"):
        interaction.reply.get(timeout=5)  # answered by on_dropped, long before 30 s
    pool.close(timeout=2)
    assert wait_for(lambda: not pids(pg_primary, "gdbpool:unread"))


def test_a_worker_reported_gone_twice_is_replaced_once(
    make_pool: MakePool, dsn: str, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(dsn, 1, name="twice")
    (worker,) = pool._supervisor.children
    worker.stop()
    # White box: what put() and a killed worker may both report for one worker.
    pool._ref.tell(Gone(worker))
    pool._ref.tell(Gone(worker))
    assert submit(pool, "SELECT 1") == [(1,)]
    stats = pool.stats()
    assert (stats["pool_size"], stats["connections_lost"]) == (1, 1)
    assert wait_for(lambda: len(pids(pg_primary, "gdbpool:twice")) == 1)
