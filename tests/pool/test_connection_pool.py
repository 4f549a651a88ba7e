"""DBConnectionPool: checkouts, interactions, sessions, sizing, stats, close, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import psycopg2
import pytest
from _switches import switches_per_call
from _waits import wait_for
from psycopg2 import extensions
from structlog.testing import capture_logs

import gdbpool.pool.worker
from gdbpool import (
    ConfigurationError,
    DBConnectionPool,
    DBInteractionException,
    EmbeddedPostgres,
    Interaction,
    PoolClosed,
    PoolConnectionError,
    PoolTimeout,
    TooManyRequests,
)
from gdbpool.pool.connection import PoolSettings
from gdbpool.server.embedded import free_port

MakePool = Callable[..., DBConnectionPool]


@pytest.fixture
def make_pool(dsn: str) -> Iterator[MakePool]:
    """Build pools on the test's database (unique names); close them all afterwards."""
    pools: list[DBConnectionPool] = []

    def factory(
        pool_size: int = 2, *, target: str | None = None, **options: Any
    ) -> DBConnectionPool:
        options.setdefault("name", f"p{uuid.uuid4().hex[:8]}")
        pool = DBConnectionPool(target or dsn, pool_size, **options)
        pools.append(pool)
        pool.wait(10)
        return pool

    yield factory
    for pool in pools:
        pool.close()


def server_count(server: EmbeddedPostgres, where: str) -> int:
    return int(
        server.psql(
            f"SELECT count(*) FROM pg_stat_activity WHERE {where} AND pid <> pg_backend_pid()"
        )
    )


def backends(server: EmbeddedPostgres, application_name: str) -> int:
    return int(
        server.psql(
            f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application_name}'"
        )
    )


def backend_pids(server: EmbeddedPostgres, application_name: str) -> set[int]:
    out = server.psql(
        f"SELECT pid FROM pg_stat_activity WHERE application_name = '{application_name}'"
    )
    return {int(line) for line in out.split()}


def query(conn: Any, sql: str, args: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else cur.rowcount


def submit(pool: DBConnectionPool, work: Any, args: Any = None, **options: Any) -> Any:
    interaction = Interaction(work, args, **options)
    pool.submit(interaction)
    return interaction.reply.get(timeout=10)


# -- interactions -----------------------------------------------------------------------


def test_a_submitted_interaction_gets_its_result_on_its_reply(make_pool: MakePool) -> None:
    pool = make_pool()
    assert submit(pool, "SELECT %s::int + 1", (41,)) == [(42,)]


def test_a_failing_interaction_fails_its_reply_and_the_pool_goes_on(make_pool: MakePool) -> None:
    pool = make_pool(1)
    with pytest.raises(DBInteractionException) as info:
        submit(pool, "SELECT * FROM no_such_table")
    assert info.value.pgcode == "42P01"
    assert submit(pool, "SELECT 1") == [(1,)]
    assert pool.stats()["connections_lost"] == 0


def test_an_interaction_whose_arguments_do_not_fit_fails_its_reply_and_the_pool_goes_on(
    make_pool: MakePool,
) -> None:
    pool = make_pool(1)
    interaction = Interaction("SELECT %s, %s", (1,), dry_run=True)
    pool.submit(interaction)
    with pytest.raises(DBInteractionException, match="IndexError"):
        interaction.reply.get(timeout=5)
    assert submit(pool, "SELECT 1") == [(1,)]
    assert pool.stats()["connections_lost"] == 0


def test_an_unexpected_error_in_a_worker_fails_the_reply_and_replaces_the_connection(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = make_pool(1)
    first = submit(pool, "SELECT pg_backend_pid()")
    real = gdbpool.pool.worker.run_interaction

    def buggy(conn: Any, interaction: Interaction) -> Any:
        monkeypatch.setattr(gdbpool.pool.worker, "run_interaction", real)
        raise RuntimeError("a bug below run_interaction")

    monkeypatch.setattr(gdbpool.pool.worker, "run_interaction", buggy)
    interaction = Interaction("SELECT 1")
    pool.submit(interaction)
    with pytest.raises(DBInteractionException, match="a bug below") as info:
        interaction.reply.get(timeout=5)
    assert isinstance(info.value.original, RuntimeError)
    assert submit(pool, "SELECT pg_backend_pid()") != first  # its state was not trusted
    assert pool.stats()["connections_lost"] == 1


def test_many_interactions_share_few_connections(make_pool: MakePool) -> None:
    pool = make_pool(3)
    replies = []
    for i in range(50):
        interaction = Interaction("SELECT %s::int", (i,))
        pool.submit(interaction)
        replies.append(interaction.reply)
    assert [r.get(timeout=10) for r in replies] == [[(i,)] for i in range(50)]
    stats = pool.stats()
    assert stats["pool_size"] == 3
    assert stats["requests_num"] == 50


# -- checkouts --------------------------------------------------------------------------


def test_get_lends_a_connection_named_after_the_pool_and_put_takes_it_back(
    make_pool: MakePool, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(2, name="lender")
    conn = pool.get()
    assert query(conn, "SELECT current_setting('application_name')") == [("gdbpool:lender",)]
    assert pool.stats()["pool_available"] == 1
    pool.put(conn)
    assert wait_for(lambda: pool.stats()["pool_available"] == 2)
    assert backends(pg_primary, "gdbpool:lender") == 2


@pytest.mark.parametrize("level", ["read committed", "repeatable read", "serializable"])
def test_each_isolation_level_can_be_chosen_per_checkout_and_is_reset_on_put(
    make_pool: MakePool, level: str
) -> None:
    pool = make_pool(1)
    with pool.connection(isolation_level=level) as conn:
        assert query(conn, "SHOW transaction_isolation") == [(level,)]
        assert query(conn, "SHOW transaction_read_only") == [("off",)]
    with pool.connection() as conn:
        assert query(conn, "SHOW transaction_isolation") == [("read committed",)]


@pytest.mark.parametrize(
    ("constant", "level"),
    [
        (extensions.ISOLATION_LEVEL_SERIALIZABLE, "serializable"),
        (extensions.ISOLATION_LEVEL_REPEATABLE_READ, "repeatable read"),
        (extensions.ISOLATION_LEVEL_READ_COMMITTED, "read committed"),
        # PostgreSQL runs READ UNCOMMITTED as READ COMMITTED: so does the pool.
        (extensions.ISOLATION_LEVEL_READ_UNCOMMITTED, "read committed"),
    ],
)
def test_get_takes_psycopg2_isolation_constants_like_level_names(
    make_pool: MakePool, constant: int, level: str
) -> None:
    pool = make_pool(1)
    conn = pool.get(isolation_level=constant)
    try:
        assert query(conn, "SHOW transaction_isolation") == [(level,)]
        conn.rollback()
    finally:
        pool.put(conn)
    conn = pool.get(isolation_level=extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    try:
        assert conn.autocommit
    finally:
        pool.put(conn)
    with pytest.raises(ConfigurationError, match="unknown isolation_level 7"):
        pool.get(isolation_level=7)
    with pytest.raises(TypeError, match="not bool"):
        pool.get(isolation_level=True)  # type: ignore[arg-type]


def test_a_read_only_checkout_refuses_writes_and_the_next_one_is_read_write(
    make_pool: MakePool,
) -> None:
    pool = make_pool(1)
    with pool.connection(read_only=True, isolation_level="serializable") as conn:
        assert query(conn, "SHOW transaction_read_only") == [("on",)]
        assert query(conn, "SHOW transaction_isolation") == [("serializable",)]
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            query(conn, "CREATE TABLE nope (id int)")
        conn.rollback()
    with pool.connection() as conn:
        assert query(conn, "SHOW transaction_read_only") == [("off",)]


def test_an_autocommit_checkout_commits_each_statement(make_pool: MakePool, dsn: str) -> None:
    pool = make_pool(1)
    for options in ({"auto_commit": True}, {"isolation_level": "autocommit"}):
        conn = pool.get(**options)
        assert conn.autocommit
        query(conn, "CREATE TABLE IF NOT EXISTS t (id int)")
        query(conn, "INSERT INTO t VALUES (1)")
        pool.put(conn)
    other = psycopg2.connect(dsn)
    assert query(other, "SELECT count(*) FROM t") == [(2,)]
    other.close()
    conn = pool.get()
    assert conn.autocommit is False
    pool.put(conn)


def test_a_read_only_autocommit_checkout_leaves_no_session_setting_behind(
    make_pool: MakePool,
) -> None:
    # psycopg2 applies these with SET default_transaction_* in autocommit: put()
    # cannot reset them without a round trip, so the worker does.
    pool = make_pool(1)
    conn = pool.get(auto_commit=True, read_only=True, isolation_level="serializable")
    assert query(conn, "SHOW default_transaction_read_only") == [("on",)]
    pool.put(conn)
    for options in ({}, {"auto_commit": True}):
        with pool.connection(**options) as conn:  # type: ignore[arg-type]
            assert query(conn, "SHOW default_transaction_read_only") == [("off",)]
            assert query(conn, "SHOW default_transaction_isolation") == [("read committed",)]
            assert query(conn, "SHOW transaction_read_only") == [("off",)]


def test_a_transaction_begun_as_sql_in_autocommit_is_rolled_back_on_put(
    make_pool: MakePool, dsn: str
) -> None:
    # psycopg2 does not see a BEGIN sent as SQL (conn.status stays ready); the
    # server's transaction status does.
    pool = make_pool(1)
    with pool.connection() as conn:
        query(conn, "CREATE TABLE t (id int)")
    conn = pool.get(auto_commit=True)
    query(conn, "BEGIN")
    query(conn, "INSERT INTO t VALUES (1)")
    pool.put(conn)
    with pool.connection() as conn:
        assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        assert query(conn, "SELECT count(*) FROM t") == [(0,)]


def test_a_clean_connection_is_idle_again_as_soon_as_put_returns(make_pool: MakePool) -> None:
    pool = make_pool(2)
    for options in ({}, {"auto_commit": True}, {"isolation_level": "serializable"}):
        conn = pool.get(**options)  # type: ignore[arg-type]
        query(conn, "SELECT 1")
        conn.commit()
        assert pool.stats()["pool_available"] == 1
        pool.put(conn)  # nothing to roll back: reset here, no worker round trip
        assert pool.stats()["pool_available"] == 2
        assert conn.autocommit is False and conn.isolation_level is None


def test_uncommitted_work_is_rolled_back_on_put(make_pool: MakePool) -> None:
    pool = make_pool(1)
    with pool.connection() as conn:
        query(conn, "CREATE TABLE t (id int)")
    conn = pool.get()
    query(conn, "INSERT INTO t VALUES (1)")
    pool.put(conn)
    conn = pool.get()
    assert conn.status == psycopg2.extensions.STATUS_READY
    assert query(conn, "SELECT count(*) FROM t") == [(0,)]
    pool.put(conn)


def test_the_connection_context_commits_on_success_and_rolls_back_on_error(
    make_pool: MakePool,
) -> None:
    pool = make_pool(1)
    with pool.connection() as conn:
        query(conn, "CREATE TABLE t (id int)")
        query(conn, "INSERT INTO t VALUES (1)")

    def insert_then_fail() -> None:
        with pool.connection() as conn:
            query(conn, "INSERT INTO t VALUES (2)")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        insert_then_fail()
    assert submit(pool, "SELECT id FROM t") == [(1,)]


def test_put_refuses_a_foreign_connection_and_a_double_return(
    make_pool: MakePool, dsn: str
) -> None:
    pool, other_pool = make_pool(1), make_pool(1)
    stranger = psycopg2.connect(dsn)
    with pytest.raises(ConfigurationError, match="did not lend"):
        pool.put(stranger)
    stranger.close()
    conn = other_pool.get()
    with pytest.raises(ConfigurationError, match="did not lend"):
        pool.put(conn)
    other_pool.put(conn)
    with pytest.raises(ConfigurationError, match="already given back"):
        other_pool.put(conn)


def test_a_connection_closed_by_its_user_is_replaced_on_put(make_pool: MakePool) -> None:
    pool = make_pool(1)
    conn = pool.get()
    pid = conn.info.backend_pid
    conn.close()
    pool.put(conn)
    with pool.connection() as fresh:
        assert not fresh.closed
        assert fresh.info.backend_pid != pid
    assert pool.stats()["connections_lost"] == 1


# -- waiting --------------------------------------------------------------------------


@pytest.mark.parametrize("interruption", ["timeout", "kill"])
def test_a_get_interrupted_while_it_waits_leaks_no_connection(
    make_pool: MakePool, interruption: str
) -> None:
    pool = make_pool(1)
    held = pool.get()

    def waiter() -> None:
        if interruption == "timeout":
            with gevent.Timeout(0.2):
                pool.get()
        else:
            pool.get()

    greenlet = gevent.spawn(waiter)
    assert wait_for(lambda: pool.stats()["requests_waiting"] == 1)
    if interruption == "kill":
        greenlet.kill(block=True, timeout=5)
    else:
        greenlet.join(timeout=5)
        assert isinstance(greenlet.exception, gevent.Timeout)
    assert greenlet.dead
    pool.put(held)
    conn = pool.get(timeout=2)  # the abandoned request was not lent the connection
    pool.put(conn)
    assert wait_for(lambda: pool.stats()["pool_available"] == 1)


def test_an_exhausted_pool_fails_waiting_requests_with_pool_timeout(
    make_pool: MakePool, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(1, timeout=0.2)
    held = pool.get()
    started = time.monotonic()
    with pytest.raises(PoolTimeout, match=f"127.0.0.1:{pg_primary.port}/") as info:
        pool.get()
    assert 0.15 < time.monotonic() - started < 2
    assert "no connection available" in str(info.value)
    with pytest.raises(PoolTimeout):
        submit(pool, "SELECT 1")
    pool.put(held)
    assert submit(pool, "SELECT 1") == [(1,)]
    stats = pool.stats()
    assert stats["requests_errors"] == 2
    assert stats["requests_waiting"] == 0


def test_a_waiting_request_is_served_as_soon_as_a_connection_comes_back(
    make_pool: MakePool,
) -> None:
    pool = make_pool(1)
    held = pool.get()
    waiter = gevent.spawn(pool.get)
    assert wait_for(lambda: pool.stats()["requests_waiting"] == 1)
    pool.put(held)
    conn = waiter.get(timeout=5)
    pool.put(conn)
    assert pool.stats()["requests_queued"] == 1


def test_requests_beyond_max_waiting_fail_at_once(make_pool: MakePool) -> None:
    pool = make_pool(1, max_waiting=2, timeout=5)
    held = pool.get()
    waiters = [gevent.spawn(pool.get) for _ in range(2)]
    assert wait_for(lambda: pool.stats()["requests_waiting"] == 2)
    started = time.monotonic()
    with pytest.raises(TooManyRequests, match="max_waiting=2"):
        pool.get()
    with pytest.raises(TooManyRequests):
        submit(pool, "SELECT 1")
    assert time.monotonic() - started < 0.5
    pool.put(held)
    for waiter in waiters:
        pool.put(waiter.get(timeout=5))


def test_an_abandoned_get_stops_counting_as_waiting_at_once(make_pool: MakePool) -> None:
    pool = make_pool(1, max_waiting=1, timeout=30)
    held = pool.get()
    waiter = gevent.spawn(pool.get)
    assert wait_for(lambda: pool.stats()["requests_waiting"] == 1)
    waiter.kill(block=True, timeout=5)  # withdraws its request; it stays queued until taken
    assert pool.stats()["requests_waiting"] == 0
    second = gevent.spawn(pool.get)  # max_waiting=1 does not count the abandoned one
    assert wait_for(lambda: pool.stats()["requests_waiting"] == 1)
    pool.put(held)
    pool.put(second.get(timeout=5))
    assert pool.stats()["requests_errors"] == 0


# -- sizing ------------------------------------------------------------------------------


def test_min_size_connections_open_at_start(
    make_pool: MakePool, pg_primary: EmbeddedPostgres
) -> None:
    make_pool(4, name="eager")
    assert wait_for(lambda: backends(pg_primary, "gdbpool:eager") == 4)


def test_a_lazy_pool_opens_connections_on_demand_up_to_pool_size(
    make_pool: MakePool, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(3, min_size=0, name="lazy")
    assert pool.stats()["pool_size"] == 0
    assert backends(pg_primary, "gdbpool:lazy") == 0
    conns = [pool.get(timeout=5) for _ in range(3)]
    assert pool.stats()["pool_size"] == 3
    with pytest.raises(PoolTimeout):
        pool.get(timeout=0.1)
    for conn in conns:
        pool.put(conn)
    assert backends(pg_primary, "gdbpool:lazy") == 3


def test_idle_connections_above_min_size_close_after_max_idle(
    make_pool: MakePool, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(3, min_size=1, max_idle=0.2, name="shrinks")
    conns = [pool.get(timeout=5) for _ in range(3)]
    for conn in conns:
        pool.put(conn)
    assert wait_for(lambda: pool.stats()["pool_size"] == 1, timeout=3)
    assert wait_for(lambda: backends(pg_primary, "gdbpool:shrinks") == 1)


def test_a_connection_used_past_max_lifetime_is_replaced_after_that_use(
    make_pool: MakePool,
) -> None:
    pool = make_pool(1, max_lifetime=0.3)
    first = submit(pool, "SELECT pg_backend_pid(), pg_sleep(0.4)")[0][0]
    assert submit(pool, "SELECT pg_backend_pid()") != [(first,)]
    assert pool.stats()["connections_lost"] == 0


def test_an_idle_connection_past_max_lifetime_is_replaced_without_being_used(
    make_pool: MakePool, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(1, max_lifetime=0.3, name="lifetime")
    (first,) = backend_pids(pg_primary, "gdbpool:lifetime")
    # Nothing is submitted: the pool itself must notice the expired idle connection.
    assert wait_for(lambda: backend_pids(pg_primary, "gdbpool:lifetime") - {first}, timeout=5)
    assert wait_for(lambda: first not in backend_pids(pg_primary, "gdbpool:lifetime"))
    assert pool.stats()["requests_num"] == 0
    assert submit(pool, "SELECT pg_backend_pid()") != [(first,)]
    assert pool.stats()["connections_lost"] == 0


# -- stats, close --------------------------------------------------------------------------


def test_stats_use_psycopg_pool_names(make_pool: MakePool) -> None:
    pool = make_pool(2)
    submit(pool, "SELECT 1")
    stats = pool.stats()
    for key in (
        "pool_size",
        "pool_available",
        "requests_waiting",
        "requests_num",
        "requests_queued",
        "requests_wait_ms",
        "requests_errors",
        "connections_num",
        "connections_errors",
        "connections_lost",
        "usage_ms",
    ):
        assert isinstance(stats[key], int), key
    assert stats["connections_num"] == 2
    assert stats["requests_num"] == 1


def test_close_leaves_no_backend_and_later_use_raises_pool_closed(
    make_pool: MakePool, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(4, name="closing")
    assert wait_for(lambda: backends(pg_primary, "gdbpool:closing") == 4)
    pool.close()
    assert wait_for(lambda: backends(pg_primary, "gdbpool:closing") == 0)
    assert pool.closed and not pool.healthy
    with pytest.raises(PoolClosed):
        pool.get()
    with pytest.raises(PoolClosed):
        submit(pool, "SELECT 1")
    with pytest.raises(PoolClosed):
        pool.stats()
    pool.close()  # idempotent


def test_close_fails_waiters_and_closes_lent_connections_when_put_back(
    make_pool: MakePool, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(1, name="lentout")
    held = pool.get()
    waiter = gevent.spawn(pool.get)
    assert wait_for(lambda: pool.stats()["requests_waiting"] == 1)
    pool.close(timeout=1)
    with pytest.raises(PoolClosed):
        waiter.get(timeout=5)
    assert not held.closed  # its user is still working with it
    pool.put(held)
    assert held.closed
    assert wait_for(lambda: backends(pg_primary, "gdbpool:lentout") == 0)


def test_close_lets_a_running_interaction_finish(
    make_pool: MakePool, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(1)
    interaction = Interaction("SELECT pg_sleep(0.5), 1")
    pool.submit(interaction)
    assert wait_for(
        lambda: (
            server_count(pg_primary, "state = 'active' AND query LIKE '%pg_sleep(0.5), 1%'") == 1
        )
    )
    pool.close(timeout=5)
    assert interaction.reply.get(timeout=1) == [("", 1)]


# -- connection errors -----------------------------------------------------------------------


def test_a_wrong_password_names_the_server_but_never_the_password(
    pg_primary: EmbeddedPostgres, dbname: str
) -> None:
    secret = "Not-The-Password-42"
    dsn = pg_primary.dsn(dbname, password=secret)
    with pytest.raises(PoolConnectionError) as info:
        DBConnectionPool(dsn, 1, name="badpw")
    text = str(info.value)
    assert f"127.0.0.1:{pg_primary.port}/{dbname}" in text
    assert "password authentication failed" in text
    assert secret not in text

    with capture_logs() as logs:
        pool = DBConnectionPool(dsn, 1, min_size=0, name="badpw-lazy", reconnect_initial=0.02)
        try:
            with pytest.raises(PoolTimeout) as waited:
                pool.get(timeout=0.3)
        finally:
            pool.close()
    assert "password authentication failed" in str(waited.value)
    assert secret not in str(waited.value)
    assert any(event["event"] == "reconnect_failed" for event in logs)
    assert secret not in repr(logs)


def test_the_pool_settings_never_show_the_password(
    make_pool: MakePool, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(1)
    assert pg_primary.password
    assert pg_primary.password not in repr(pool._settings)  # white box: what workers get
    assert pg_primary.password not in repr(pool)
    settings = PoolSettings(
        name="x", dsn="host=h password=s3cr3t-pw", target="h:5432/x", application_name="x",
        connect_timeout=1, max_lifetime=1, check_after=1, backoff_initial=1, backoff_max=1,
        log=None,
    )  # fmt: skip
    assert "s3cr3t-pw" not in repr(settings)


def test_an_unreachable_host_gives_a_pool_connection_error_naming_it() -> None:
    port = free_port()
    with pytest.raises(PoolConnectionError, match=f"127.0.0.1:{port}/db1"):
        DBConnectionPool(f"host=127.0.0.1 port={port} dbname=db1 password=s3cr3t", 1)


def test_an_invalid_dsn_gives_a_pool_connection_error_without_the_password() -> None:
    with pytest.raises(PoolConnectionError, match="invalid DSN") as info:
        DBConnectionPool("host=db.example port=5433 dbname=app password=pa ss word", 1)
    text = str(info.value)
    assert "db.example:5433/app" in text
    assert "pa ss" not in text
    assert "ss word" not in text
    assert info.value.__cause__ is None


def test_bad_tunables_are_refused_with_their_name() -> None:
    for options, name in (
        ({"pool_size": 0}, "pool_size"),
        ({"min_size": 5}, "min_size"),
        ({"timeout": 0}, "timeout"),
        ({"max_waiting": -1}, "max_waiting"),
        ({"max_idle": -1}, "max_idle"),
    ):
        options.setdefault("pool_size", 2)
        with pytest.raises(ConfigurationError, match=name):
            DBConnectionPool("host=127.0.0.1 dbname=x", **options)


# -- stress -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_thousand_greenlets_share_eight_connections_for_ten_thousand_checkouts(
    make_pool: MakePool, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(8, name="stress", timeout=30)
    errors: list[BaseException] = []

    def borrower(n: int) -> None:
        for i in range(10):
            try:
                if i % 2:
                    with pool.connection() as conn:
                        assert query(conn, "SELECT %s::int", (n,)) == [(n,)]
                else:
                    assert submit(pool, "SELECT %s::int", (n,)) == [(n,)]
            except BaseException as exc:  # collected, asserted below
                errors.append(exc)
                raise

    started = time.monotonic()
    greenlets = [gevent.spawn(borrower, n) for n in range(1000)]
    gevent.joinall(greenlets, timeout=60)
    elapsed = time.monotonic() - started
    assert not errors, errors[:3]
    assert all(g.successful() for g in greenlets)
    stats = pool.stats()
    assert stats["requests_num"] == 10_000
    assert stats["requests_errors"] == 0
    assert stats["pool_size"] == 8
    assert wait_for(lambda: pool.stats()["pool_available"] == 8)
    assert stats["connections_num"] == 8 and stats["connections_lost"] == 0
    assert backends(pg_primary, "gdbpool:stress") == 8
    print(f"10,000 checkouts by 1,000 greenlets on 8 connections: {elapsed:.2f}s")


# -- clean sessions ----------------------------------------------------------------------------

_SESSION_SEEN = (
    "SELECT current_setting('search_path'),"
    " (SELECT count(*) FROM pg_listening_channels()),"
    " (SELECT count(*) FROM pg_class WHERE relpersistence = 't' AND relname = 'scratch'),"
    " (SELECT count(*) FROM pg_locks"
    "  WHERE locktype::text LIKE 'advis%' AND pid = pg_backend_pid()),"
    " (SELECT count(*) FROM pg_prepared_statements),"
    " pg_backend_pid()"
)
_CLEAN = ('"$user", public', 0, 0, 0, 0)


def _dirty_the_session(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SET search_path TO pg_catalog")
        cur.execute("LISTEN leftover")
        cur.execute("CREATE TEMP TABLE scratch (n int)")
        cur.execute("SELECT pg_advisory_lock(4242)")
        cur.execute("PREPARE leftover_plan AS SELECT 1")
    conn.commit()


def test_a_callable_leaves_no_session_state_to_the_next_borrower(make_pool: MakePool) -> None:
    pool = make_pool(1)
    pid = submit(pool, _dirty_the_session) and None
    *seen, pid = submit(pool, _SESSION_SEEN)[0]
    assert tuple(seen) == _CLEAN
    # The same backend (one connection): reset, not replaced; and get() sees it clean too.
    with pool.connection() as conn:
        *seen, again = query(conn, _SESSION_SEEN)[0]
    assert tuple(seen) == _CLEAN and again == pid


def test_a_checkout_leaves_no_session_state_to_the_next_borrower(make_pool: MakePool) -> None:
    pool = make_pool(1)
    conn = pool.get()
    _dirty_the_session(conn)
    pid = conn.get_backend_pid()
    pool.put(conn)
    *seen, again = submit(pool, _SESSION_SEEN)[0]
    assert tuple(seen) == _CLEAN and again == pid
    assert pool.stats()["returns_bad"] == 0


def test_session_changing_sql_strings_are_reset_too(make_pool: MakePool) -> None:
    pool = make_pool(1)
    submit(pool, "SET search_path TO pg_catalog")
    submit(pool, "SELECT pg_advisory_lock(7)")
    submit(pool, "select 1; listen leftover")
    *seen, _ = submit(pool, _SESSION_SEEN)[0]
    assert tuple(seen) == _CLEAN


def test_a_reset_callback_replaces_the_built_in_reset(make_pool: MakePool) -> None:
    calls: list[int] = []

    def reset(conn: Any) -> None:
        calls.append(conn.get_backend_pid())
        conn.autocommit = True  # DISCARD ALL cannot run in a transaction block
        with conn.cursor() as cur:
            cur.execute("DISCARD ALL")
        conn.autocommit = False

    pool = make_pool(1, reset=reset)
    submit(pool, _dirty_the_session)
    submit(pool, "SELECT 1")  # plain SQL: nothing to reset
    *seen, pid = submit(pool, _SESSION_SEEN)[0]
    assert tuple(seen) == _CLEAN and calls == [pid]


def test_a_failing_reset_replaces_the_connection_and_counts_a_bad_return(
    make_pool: MakePool,
) -> None:
    def reset(conn: Any) -> None:
        raise RuntimeError("no")

    pool = make_pool(1, reset=reset)
    conn = pool.get()
    _dirty_the_session(conn)
    pid = conn.get_backend_pid()
    pool.put(conn)
    *seen, again = submit(pool, _SESSION_SEEN)[0]
    assert tuple(seen) == _CLEAN and again != pid
    assert pool.stats()["returns_bad"] == 1


# -- cost (the switch counts docs/benchmarks.md quotes) -----------------------------------------


_PATCHED_CHECKOUT = """
import sys
from gevent import monkey

monkey.patch_all()  # what gunicorn's gevent worker does: select.poll is gevent's now
from _switches import switches_per_call
from gdbpool import DBConnectionPool

pool = DBConnectionPool(sys.stdin.readline().strip(), 2, name="patched")
pool.wait(10)
print("switches", switches_per_call(lambda: pool.put(pool.get()), 50))
pool.close()
"""


def test_under_monkey_patching_an_idle_checkout_still_costs_no_switch(dsn: str) -> None:
    # The socket check at checkout polls with a zero timeout; gevent's patched
    # poll would switch to the hub and back (and start a timer) every time.
    child = subprocess.run(
        [sys.executable, "-c", _PATCHED_CHECKOUT],
        input=dsn + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert child.returncode == 0, child.stderr
    [line] = [line for line in child.stdout.splitlines() if line.startswith("switches ")]
    assert float(line.split()[1]) == pytest.approx(0, abs=0.2)


def test_on_an_idle_pool_a_checkout_costs_no_switch_and_a_submit_six(make_pool: MakePool) -> None:
    pool = make_pool(2)
    pool.wait(10)  # both connections open: no worker busy connecting meanwhile

    def get_query_put() -> None:
        conn = pool.get(auto_commit=True)
        query(conn, "SELECT 1")
        pool.put(conn)

    # 2: the query's own wait for the server (a raw connection costs the same 2).
    assert switches_per_call(get_query_put, 50) == pytest.approx(2, abs=0.2)
    assert switches_per_call(lambda: pool.put(pool.get()), 50) == pytest.approx(0, abs=0.2)
    # 6: caller -> worker (2), the worker's wait for the server (2), the reply (2).
    assert switches_per_call(lambda: submit(pool, "SELECT 1"), 50) == pytest.approx(6, abs=0.3)
