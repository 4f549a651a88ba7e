"""run_interaction: how one Interaction runs on a connection (real server, no pool)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import gevent
import psycopg2
import pytest
from psycopg2.extras import RealDictCursor
from tcp_proxy import TcpProxy

from gdbpool import (
    ConfigurationError,
    DBInteractionException,
    EmbeddedPostgres,
    Interaction,
    InteractionTimeout,
    run_interaction,
)
from gdbpool.green import CANCEL_GRACE


@pytest.fixture
def conn(dsn: str) -> Iterator[Any]:
    c = psycopg2.connect(dsn)
    with c.cursor() as cur:
        cur.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    c.commit()
    yield c
    c.close()


def run(conn: Any, work: Any, args: Any = None, **options: Any) -> Any:
    return run_interaction(conn, Interaction(work, args, **options))


def count_rows(dsn: str) -> int:
    other = psycopg2.connect(dsn)
    try:
        with other.cursor() as cur:
            cur.execute("SELECT count(*) FROM t")
            return int(cur.fetchone()[0])
    finally:
        other.close()


def test_an_sql_string_returns_its_rows_as_tuples(conn: Any) -> None:
    assert run(conn, "SELECT %s::int, %s::text", (1, "a")) == [(1, "a")]


def test_a_statement_without_rows_returns_its_rowcount_and_is_committed(
    conn: Any, dsn: str
) -> None:
    assert run(conn, "INSERT INTO t VALUES (1, 'a'), (2, 'b')") == 2
    assert count_rows(dsn) == 2


def test_parameters_go_to_the_driver_never_into_the_sql(conn: Any) -> None:
    evil = "x'); DROP TABLE t; --"
    assert run(conn, "INSERT INTO t VALUES (%(id)s, %(v)s)", {"id": 1, "v": evil}) == 1
    assert run(conn, "SELECT v FROM t") == [(evil,)]


def test_a_failing_statement_raises_with_pgcode_and_the_original_error(conn: Any) -> None:
    run(conn, "INSERT INTO t VALUES (1, 'a')")
    with pytest.raises(DBInteractionException) as info:
        run(conn, "INSERT INTO t VALUES (1, 'dup')")
    assert info.value.pgcode == "23505"
    assert isinstance(info.value.original, psycopg2.errors.UniqueViolation)
    assert info.value.__cause__ is info.value.original
    assert run(conn, "SELECT count(*) FROM t") == [(1,)]  # connection still usable


def test_a_callable_commits_when_it_returns(conn: Any, dsn: str) -> None:
    def insert(c: Any, ident: int, value: str) -> str:
        with c.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (%s, %s)", (ident, value))
        return "done"

    assert run(conn, insert, (7, "x")) == "done"
    assert count_rows(dsn) == 1
    assert conn.status == psycopg2.extensions.STATUS_READY


def test_a_callable_that_raises_is_rolled_back(conn: Any, dsn: str) -> None:
    def insert_then_fail(c: Any) -> None:
        with c.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (1, 'a')")
        raise ValueError("changed my mind")

    with pytest.raises(DBInteractionException, match="changed my mind") as info:
        run(conn, insert_then_fail)
    assert isinstance(info.value.original, ValueError)
    assert info.value.pgcode is None
    assert count_rows(dsn) == 0
    assert conn.status == psycopg2.extensions.STATUS_READY


def test_a_callable_naming_cursor_gets_one_and_keyword_args_from_a_mapping(conn: Any) -> None:
    def lookup(c: Any, cursor: Any, *, ident: int) -> Any:
        cursor.execute("SELECT %s::int * 2", (ident,))
        return cursor.fetchone()[0]

    assert run(conn, lookup, {"ident": 21}) == 42


def test_a_single_non_sequence_argument_is_passed_as_is(conn: Any) -> None:
    assert run(conn, lambda c, n: n + 1, 41) == 42


def test_read_only_runs_in_a_read_only_transaction(conn: Any) -> None:
    assert run(conn, "SHOW transaction_read_only", read_only=True) == [("on",)]
    with pytest.raises(DBInteractionException) as info:
        run(conn, "INSERT INTO t VALUES (1, 'a')", read_only=True)
    assert info.value.pgcode == "25006"  # read_only_sql_transaction
    assert run(conn, "SHOW transaction_read_only") == [("off",)]  # back to default


@pytest.mark.parametrize("level", ["read committed", "repeatable read", "serializable"])
def test_each_isolation_level_is_used_and_then_restored(conn: Any, level: str) -> None:
    assert run(conn, "SHOW transaction_isolation", isolation_level=level) == [(level,)]
    assert run(conn, "SHOW transaction_isolation") == [("read committed",)]
    assert conn.isolation_level is None or conn.isolation_level == 1
    assert conn.autocommit is False


def test_autocommit_callables_commit_each_statement(conn: Any, dsn: str) -> None:
    def two_inserts(c: Any) -> None:
        with c.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (1, 'a')")
            assert c.status == psycopg2.extensions.STATUS_READY  # no transaction open
            cur.execute("INSERT INTO t VALUES (1, 'again')")

    with pytest.raises(DBInteractionException):
        run(conn, two_inserts, isolation_level="autocommit")
    assert count_rows(dsn) == 1
    assert conn.autocommit is False


def test_an_open_transaction_is_joined_not_committed(conn: Any, dsn: str) -> None:
    with conn.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (1, 'a')")
    assert run(conn, "INSERT INTO t VALUES (2, 'b')") == 1
    assert count_rows(dsn) == 0
    conn.rollback()
    assert count_rows(dsn) == 0


def test_dry_run_returns_the_mogrified_sql_and_executes_nothing(conn: Any, dsn: str) -> None:
    sql = run(conn, "INSERT INTO t VALUES (%s, %s)", (1, "it's"), dry_run=True)
    assert sql == "INSERT INTO t VALUES (1, 'it''s')"
    assert count_rows(dsn) == 0


def test_a_dry_run_whose_arguments_do_not_fit_raises_db_interaction_exception(conn: Any) -> None:
    for args in ((1,), {"a": 1}):
        with pytest.raises(DBInteractionException, match="interaction failed") as info:
            run(conn, "SELECT %s, %s", args, dry_run=True)
        assert isinstance(info.value.original, IndexError | TypeError)
        assert info.value.__cause__ is info.value.original
    assert run(conn, "SELECT 1") == [(1,)]  # the connection is untouched


@pytest.mark.parametrize(
    "options", [{}, {"read_only": True}, {"isolation_level": "serializable"}], ids=repr
)
def test_setting_up_the_session_on_a_closed_connection_raises_db_interaction_exception(
    dsn: str, options: dict[str, Any]
) -> None:
    # Autocommit mode (plain SQL) or set_session (transactions) is applied
    # before the statement runs; their errors are the interaction's too.
    closed = psycopg2.connect(dsn)
    closed.close()
    with pytest.raises(DBInteractionException) as info:
        run(closed, "SELECT 1", **options)
    assert isinstance(info.value.original, psycopg2.InterfaceError)


def test_dec2float_returns_numeric_as_float_only_for_that_interaction(conn: Any) -> None:
    sql = "SELECT 1.5::numeric, ARRAY[2.25]::numeric[], NULL::numeric"
    assert run(conn, sql, dec2float=True) == [(1.5, [2.25], None)]
    assert run(conn, sql) == [(Decimal("1.5"), [Decimal("2.25")], None)]

    def own_cursor(c: Any) -> Any:
        with c.cursor() as cur:
            cur.execute("SELECT 0.5::numeric")
            return cur.fetchone()[0]

    assert run(conn, own_cursor, dec2float=True) == 0.5
    assert run(conn, own_cursor) == Decimal("0.5")


def test_cursor_factory_gives_dict_rows_for_that_interaction(conn: Any) -> None:
    rows = run(conn, "SELECT 1 AS one", cursor_factory=RealDictCursor)
    assert rows == [{"one": 1}]
    assert run(conn, "SELECT 1 AS one") == [(1,)]

    def own_cursor(c: Any) -> Any:
        with c.cursor() as cur:
            cur.execute("SELECT 2 AS two")
            return cur.fetchone()

    assert run(conn, own_cursor, cursor_factory=RealDictCursor) == {"two": 2}
    assert conn.cursor_factory is None


def test_a_timeout_cancels_the_statement_on_the_server_and_keeps_the_connection(
    conn: Any, pg_primary: EmbeddedPostgres
) -> None:
    started = time.monotonic()
    with pytest.raises(InteractionTimeout) as info:
        run(conn, "SELECT pg_sleep(5)", timeout=0.2)
    assert time.monotonic() - started < 2
    assert info.value.pgcode == "57014"  # query_canceled
    assert not conn.closed
    assert run(conn, "SELECT 1") == [(1,)]
    assert running("pg_sleep(5)", pg_primary) == 0


def test_a_timeout_in_a_transaction_rolls_it_back(conn: Any, dsn: str) -> None:
    def insert_then_sleep(c: Any) -> None:
        with c.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (1, 'a')")
            cur.execute("SELECT pg_sleep(5)")

    with pytest.raises(InteractionTimeout):
        run(conn, insert_then_sleep, timeout=0.2)
    assert count_rows(dsn) == 0
    assert run(conn, "SELECT 1") == [(1,)]


def test_work_that_finishes_in_time_is_not_cancelled_later(conn: Any) -> None:
    assert run(conn, "SELECT 1", timeout=0.05) == [(1,)]
    gevent.sleep(0.1)  # let the (stopped) timer's deadline pass
    assert run(conn, "SELECT pg_sleep(0.1), 2") == [("", 2)]


def test_a_timeout_with_the_server_unreachable_closes_the_connection_without_freezing(
    pg_primary: EmbeddedPostgres, dbname: str
) -> None:
    proxy = TcpProxy(pg_primary.port).start()
    try:
        conn = psycopg2.connect(proxy.dsn(pg_primary.dsn(dbname)))
        ticks: list[float] = []

        def tick() -> None:
            while True:
                ticks.append(time.monotonic())
                gevent.sleep(0.02)

        ticker = gevent.spawn(tick)
        gevent.spawn_later(0.05, proxy.set_mode, "blackhole")
        started = time.monotonic()
        with pytest.raises(InteractionTimeout, match="did not answer"):
            run(conn, "SELECT pg_sleep(0.5)", timeout=0.2)
        elapsed = time.monotonic() - started
        ticker.kill()
        assert 0.2 + CANCEL_GRACE - 0.1 < elapsed < 0.2 + 3 * CANCEL_GRACE
        assert conn.closed
        assert max(b - a for a, b in itertools.pairwise(ticks)) < 0.5  # hub never froze
    finally:
        proxy.close()


def test_invalid_options_are_refused_when_the_interaction_is_built() -> None:
    with pytest.raises(ConfigurationError, match="isolation_level"):
        Interaction("SELECT 1", isolation_level="chaos")
    with pytest.raises(ConfigurationError, match="timeout"):
        Interaction("SELECT 1", timeout=0)
    with pytest.raises(ConfigurationError, match="dry_run"):
        Interaction(lambda c: None, dry_run=True)
    with pytest.raises(ConfigurationError, match="callable"):
        Interaction(42)  # type: ignore[arg-type]


def test_interactions_are_frozen_messages_with_their_own_reply() -> None:
    a, b = Interaction("SELECT 1"), Interaction("SELECT 1")
    assert a.reply is not b.reply
    with pytest.raises(AttributeError):
        a.work = "SELECT 2"  # type: ignore[misc]
    assert not hasattr(a, "__dict__")


def test_an_interactions_repr_leaves_out_its_arguments() -> None:
    text = repr(Interaction("UPDATE users SET pw = crypt(%s)", ("hunter2-secret",)))
    assert "crypt" in text
    assert "hunter2-secret" not in text


def running(fragment: str, server: EmbeddedPostgres) -> int:
    """How many backends run a statement containing ``fragment`` (waits up to 2 s for 0)."""
    deadline = time.monotonic() + 2
    while True:
        n = int(
            server.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                f"AND query LIKE '%{fragment}%' AND pid <> pg_backend_pid()"
            )
        )
        if n == 0 or time.monotonic() > deadline:
            return n
        gevent.sleep(0.05)
