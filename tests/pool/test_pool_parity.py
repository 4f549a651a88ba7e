"""DBConnectionPool's psycopg_pool parity: resize, drain, callable DSN, callbacks, pop_stats."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from _waits import wait_for
from gevent.event import Event
from psycopg2 import extensions

from gdbpool import (
    ConfigurationError,
    DBConnectionPool,
    DBInteractionPool,
    EmbeddedPostgres,
    Interaction,
)
from gdbpool.pool.connection import changes_session
from gdbpool.server.embedded import free_port

MakePool = Callable[..., DBConnectionPool]


@pytest.fixture
def make_pool(dsn: str) -> Iterator[MakePool]:
    pools: list[DBConnectionPool] = []

    def factory(pool_size: int = 2, *, target: Any = None, **options: Any) -> DBConnectionPool:
        options.setdefault("name", f"p{uuid.uuid4().hex[:8]}")
        pool = DBConnectionPool(target or dsn, pool_size, **options)
        pools.append(pool)
        if options.get("min_size", pool_size):
            pool.wait(10)
        return pool

    yield factory
    for pool in pools:
        pool.close()


def submit(pool: DBConnectionPool, work: Any, args: Any = None, **options: Any) -> Any:
    interaction = Interaction(work, args, **options)
    pool.submit(interaction)
    return interaction.reply.get(timeout=10)


def pids(server: EmbeddedPostgres, application_name: str) -> set[int]:
    out = server.psql(
        f"SELECT pid FROM pg_stat_activity WHERE application_name = '{application_name}'"
    )
    return {int(line) for line in out.split()}


class Load:
    """Greenlets running ``SELECT pg_backend_pid()`` on ``pool`` until stopped; no error allowed."""

    def __init__(self, pool: DBConnectionPool, callers: int = 8) -> None:
        self.pool = pool
        self.done = 0
        self.seen: set[int] = set()
        self.errors: list[BaseException] = []
        self.stopping = False
        self.greenlets = [gevent.spawn(self._loop) for _ in range(callers)]

    def _loop(self) -> None:
        while not self.stopping:
            try:
                [(pid,)] = submit(self.pool, "SELECT pg_backend_pid() FROM pg_sleep(0.002)")
            except BaseException as exc:
                self.errors.append(exc)
                return
            self.seen.add(pid)
            self.done += 1

    def stop(self) -> None:
        self.stopping = True
        gevent.joinall(self.greenlets, timeout=10, raise_error=True)
        assert not self.errors, self.errors


@pytest.mark.parametrize(
    ("work", "dirty"),
    [
        ("SELECT 1", False),
        ("UPDATE t SET settings = 1 WHERE id = %s", False),
        ("INSERT INTO prepared_orders VALUES (1)", False),
        ("set search_path to x", True),
        ("  SET LOCAL work_mem = '1MB'", True),
        ("SELECT 1; LISTEN ch", True),
        ("create temporary table x (n int)", True),
        ("CREATE LOCAL TEMP TABLE x (n int)", True),
        ("PREPARE p AS SELECT 1", True),
        ("SELECT pg_try_advisory_lock(1)", True),
        ("SELECT set_config('search_path', 'x', false)", True),
        ("DO $$ BEGIN PERFORM 1; END $$", True),
        (lambda conn: None, True),
    ],
)
def test_the_session_change_check_sees_what_outlives_a_transaction(work: Any, dirty: bool) -> None:
    assert changes_session(work) is dirty


def test_resize_grows_and_shrinks_the_pool_under_load(
    make_pool: MakePool, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(2, name="resized")
    load = Load(pool, callers=12)
    try:
        pool.resize(5, 5)
        assert wait_for(lambda: len(pids(pg_primary, "gdbpool:resized")) == 5)
        assert pool.stats()["pool_max"] == 5
        pool.resize(1)  # max_size defaults to min_size, like psycopg_pool
        assert wait_for(lambda: len(pids(pg_primary, "gdbpool:resized")) == 1)
        stats = pool.stats()
        assert (stats["pool_min"], stats["pool_max"], stats["pool_size"]) == (1, 1, 1)
        before = load.done
        assert wait_for(lambda: load.done > before + 20)  # still serving on one connection
    finally:
        load.stop()
    with pytest.raises(ConfigurationError, match="min_size"):
        pool.resize(3, 2)
    with pytest.raises(ConfigurationError, match="max_size"):
        pool.resize(0, 0)
    with pytest.raises(TypeError, match="int"):
        pool.resize(1.5)  # type: ignore[arg-type]


def test_drain_replaces_every_connection_under_load_and_fails_nothing(
    make_pool: MakePool, pg_primary: EmbeddedPostgres
) -> None:
    pool = make_pool(3, name="drained")
    old = pids(pg_primary, "gdbpool:drained")
    assert len(old) == 3
    lent = pool.get()
    load = Load(pool)
    try:
        assert wait_for(lambda: load.done > 20)
        pool.drain()
        lent_pid = lent.get_backend_pid()
        assert wait_for(lambda: len(pids(pg_primary, "gdbpool:drained") - old) == 2)
        assert lent_pid in pids(pg_primary, "gdbpool:drained")  # in use: replaced at return
        pool.put(lent)
        assert wait_for(lambda: not pids(pg_primary, "gdbpool:drained") & old)
        assert wait_for(lambda: len(pids(pg_primary, "gdbpool:drained")) == 3)
        before = load.done
        assert wait_for(lambda: load.done > before + 20)
    finally:
        load.stop()
    new = pids(pg_primary, "gdbpool:drained")
    [(pid,)] = submit(pool, "SELECT pg_backend_pid()")
    assert pid in new and not new & old
    assert pool.stats()["requests_errors"] == 0


def test_a_callable_dsn_rotates_credentials_across_a_drain(
    make_pool: MakePool, pg_primary: EmbeddedPostgres, dbname: str
) -> None:
    role = f"rot_{uuid.uuid4().hex[:8]}"
    password = {"now": secrets.token_urlsafe(12)}
    pg_primary.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password['now']}'")
    calls = 0

    def current_dsn() -> str:
        nonlocal calls
        calls += 1
        return pg_primary.dsn(dbname, user=role, password=password["now"])

    pool = make_pool(2, target=current_dsn, name="rotated")
    assert submit(pool, "SELECT current_user") == [(role,)]
    old = pids(pg_primary, "gdbpool:rotated")
    password["now"] = secrets.token_urlsafe(12)
    pg_primary.psql(f"ALTER ROLE {role} PASSWORD '{password['now']}'")
    before = calls
    load = Load(pool, callers=4)
    try:
        pool.drain()
        assert wait_for(lambda: len(pids(pg_primary, "gdbpool:rotated") - old) == 2)
    finally:
        load.stop()
    assert calls >= before + 2  # each new connection asked for the DSN again
    assert submit(pool, "SELECT current_user") == [(role,)]
    assert pool.stats()["connections_errors"] == 0


def test_configure_runs_on_every_new_connection_and_check_at_every_checkout(
    make_pool: MakePool,
) -> None:
    configured: list[int] = []
    checked: list[int] = []
    refuse = {"pid": 0}

    def configure(conn: Any) -> None:
        configured.append(conn.get_backend_pid())

    def check(conn: Any) -> None:
        checked.append(conn.get_backend_pid())
        if conn.get_backend_pid() == refuse["pid"]:
            raise RuntimeError("refused by check")

    pool = make_pool(1, configure=configure, check=check)
    [first] = configured
    with pool.connection() as conn:
        assert conn.get_backend_pid() == first
    assert checked == [first]
    refuse["pid"] = first  # the next checkout discards it and gets a new one
    with pool.connection() as conn:
        second = conn.get_backend_pid()
    assert second != first and configured == [first, second]
    assert submit(pool, "SELECT pg_backend_pid()") == [(second,)]


def test_a_configure_that_fails_counts_as_a_failed_connect(make_pool: MakePool) -> None:
    def configure(conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")  # leaves a transaction open: refused

    pool = make_pool(1, min_size=0, configure=configure, timeout=0.5)
    with pytest.raises(Exception, match="configure"):
        submit(pool, "SELECT 1")
    assert pool.stats()["connections_errors"] >= 1


def test_reconnect_failed_is_called_when_a_slot_gives_up(make_pool: MakePool) -> None:
    called = Event()
    seen: list[DBConnectionPool] = []

    def reconnect_failed(pool: DBConnectionPool) -> None:
        seen.append(pool)
        called.set()

    dead = f"host=127.0.0.1 port={free_port()} dbname=x user=x password=x"
    pool = make_pool(
        1,
        target=dead,
        min_size=0,
        timeout=2,
        reconnect_initial=0.02,
        reconnect_max=0.05,
        reconnect_timeout=0.2,
        reconnect_failed=reconnect_failed,
    )
    pool.submit(Interaction("SELECT 1"))  # makes the pool open a connection
    assert called.wait(5)
    assert seen == [pool]
    with pytest.raises(ConfigurationError, match="reconnect_timeout"):
        DBConnectionPool(dead, 1, min_size=0, reconnect_timeout=0)
    with pytest.raises(TypeError, match="configure"):
        DBConnectionPool(dead, 1, min_size=0, configure="SET x")  # type: ignore[arg-type]


def test_pop_stats_returns_the_counters_and_starts_them_from_zero(make_pool: MakePool) -> None:
    pool = make_pool(1)
    for _ in range(3):
        submit(pool, "SELECT 1")
    popped = pool.pop_stats()
    assert popped["requests_num"] == 3 and popped["pool_size"] == 1
    submit(pool, "SELECT 1")
    after = pool.stats()
    assert after["requests_num"] == 1 and after["pool_size"] == 1 and after["returns_bad"] == 0


def test_the_interaction_pool_passes_the_parity_options_to_its_pools(
    dsn: str,
) -> None:
    configured: list[int] = []
    ipool = DBInteractionPool(
        lambda: dsn,
        pool_size=1,
        configure=lambda conn: configured.append(conn.get_backend_pid()),
    )
    try:
        [(pid,)] = ipool.run("SELECT pg_backend_pid()").get(10)
        assert configured == [pid]
        level = extensions.ISOLATION_LEVEL_SERIALIZABLE
        conn = ipool.pool().get(isolation_level=level)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW transaction_isolation")
                assert cur.fetchall() == [("serializable",)]
        finally:
            ipool.pool().put(conn)
        ipool.pool().drain()
        assert wait_for(lambda: len(configured) == 2)
    finally:
        ipool.close()


def test_a_transaction_a_callable_left_open_in_autocommit_is_ended_by_the_reset(
    make_pool: MakePool,
) -> None:
    def begin_and_leave(conn: Any, cursor: Any) -> None:
        cursor.execute("BEGIN")
        cursor.execute("CREATE TEMP TABLE scratch (n int)")

    pool = make_pool(1)
    submit(pool, begin_and_leave, isolation_level="autocommit")
    seen = submit(
        pool,
        "SELECT count(*), (SELECT count(*) FROM pg_stat_activity"
        "  WHERE pid = pg_backend_pid() AND xact_start IS NOT NULL"
        "  AND xact_start < statement_timestamp())"
        " FROM pg_class WHERE relpersistence = 't' AND relname = 'scratch'",
    )
    assert seen == [(0, 0)]
