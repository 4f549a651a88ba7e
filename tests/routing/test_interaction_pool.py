"""DBInteractionPool on the primary: run(), original examples, errors, run_many, transactions."""

from __future__ import annotations

import decimal
import time
from collections.abc import Iterator

import gevent
import psycopg2
import pytest
from _switches import switches_per_call
from psycopg2 import extensions, sql
from psycopg2.extras import RealDictCursor

from gdbpool import (
    ConfigurationError,
    DBInteractionException,
    DBInteractionPool,
    InteractionTimeout,
    PoolClosed,
)

# The 2011 library's tests/test_schema.sql, with 1,000 rows instead of 1,000,000.
SCHEMA = """
CREATE TABLE test_values (
  id serial NOT NULL,
  val1 integer NOT NULL,
  val2 integer NOT NULL,
  CONSTRAINT test_values_pkey PRIMARY KEY (id)
);
INSERT INTO test_values (val1, val2)
SELECT (i % 10) + 1, (i % 100) + 1 FROM generate_series(1, 1000) AS i;
CREATE OR REPLACE RULE notify_value_inserts AS ON INSERT TO test_values
DO SELECT pg_notify('notify_test_values',
                    'id:' || NEW.id || '|val1:' || NEW.val1 || '|val2:' || NEW.val2);
CREATE OR REPLACE RULE notify_value_updates AS ON UPDATE TO test_values
WHERE NEW.val1 <> OLD.val1
DO SELECT pg_notify('notify_test_values', 'id:' || NEW.id || '|val1:' || NEW.val1);
"""


@pytest.fixture
def schema_dsn(dsn: str) -> str:
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute(SCHEMA)
    conn.close()
    return dsn


@pytest.fixture
def ipool(schema_dsn: str) -> Iterator[DBInteractionPool]:
    pool = DBInteractionPool(schema_dsn, pool_size=4)
    try:
        yield pool
    finally:
        pool.close()


def test_the_original_readme_sql_example_runs(ipool: DBInteractionPool) -> None:
    sql = """
    SELECT val1, count(id) FROM test_values WHERE val2 = %s GROUP BY val1 order by val1;
    """
    async_res = ipool.run(sql, [5])
    res = async_res.get(timeout=10)
    assert res == [(5, 10)]


def test_the_original_readme_function_example_runs(ipool: DBInteractionPool) -> None:
    def interaction(conn):  # type: ignore[no-untyped-def]
        curs = conn.cursor()
        sql = """
        SELECT val1, val2, count(id) FROM test_values GROUP BY val1, val2 order by val1, val2;
        """
        curs.execute(sql)
        res = curs.fetchall()
        curs.close()
        return res

    res = ipool.run(interaction).get(timeout=10)
    assert len(res) == 100
    assert sum(row[2] for row in res) == 1000


def test_original_keyword_names_and_call_syntax_work(ipool: DBInteractionPool) -> None:
    res = ipool(
        "SELECT count(*) FROM test_values WHERE val1 = %s",
        interaction_args=(3,),
        is_write=False,
        get_result=True,
    ).get(timeout=10)
    assert res == [(100,)]


def test_a_string_without_rows_returns_its_row_count(ipool: DBInteractionPool) -> None:
    assert ipool.run("DELETE FROM test_values WHERE val1 = %s", (1,)).get(10) == 100


def test_a_callable_gets_a_cursor_when_it_asks_for_one(ipool: DBInteractionPool) -> None:
    def count(conn, cursor, val1):  # type: ignore[no-untyped-def]
        cursor.execute("SELECT count(*) FROM test_values WHERE val1 = %s", (val1,))
        return cursor.fetchone()[0]

    assert ipool.run(count, (2,)).get(timeout=10) == 100


def test_a_write_commits_and_a_failing_callable_rolls_back(ipool: DBInteractionPool) -> None:
    ipool.run("INSERT INTO test_values (val1, val2) VALUES (%s, %s)", (42, 42)).get(10)

    def insert_then_fail(conn):  # type: ignore[no-untyped-def]
        with conn.cursor() as cur:
            cur.execute("INSERT INTO test_values (val1, val2) VALUES (43, 43)")
        raise RuntimeError("changed my mind")

    with pytest.raises(DBInteractionException, match="changed my mind"):
        ipool.run(insert_then_fail).get(timeout=10)
    rows = ipool.run("SELECT val1 FROM test_values WHERE val1 IN (42, 43)").get(10)
    assert rows == [(42,)]


def test_an_sql_error_is_a_dbinteractionexception_and_the_pool_keeps_working(
    ipool: DBInteractionPool,
) -> None:
    with pytest.raises(DBInteractionException) as info:
        ipool.run("SELECT * FROM no_such_table").get(timeout=10)
    assert info.value.pgcode == "42P01"
    assert isinstance(info.value.original, psycopg2.errors.UndefinedTable)
    for _ in range(8):  # more than pool_size: every connection came back clean
        assert ipool.run("SELECT 1").get(timeout=10) == [(1,)]


def test_parameters_are_never_formatted_into_the_sql(ipool: DBInteractionPool) -> None:
    evil = "1; DROP TABLE test_values; --"
    with pytest.raises(DBInteractionException):
        ipool.run("SELECT count(*) FROM test_values WHERE val1 = %s", (evil,)).get(10)
    assert ipool.run("SELECT count(*) FROM test_values").get(10) == [(1000,)]


def test_dry_run_returns_the_mogrified_sql_and_executes_nothing(ipool: DBInteractionPool) -> None:
    sql = ipool.run("DELETE FROM test_values WHERE val1 = %s", ("x'y",), dry_run=True).get(10)
    assert sql == "DELETE FROM test_values WHERE val1 = 'x''y'"
    assert ipool.run("SELECT count(*) FROM test_values").get(10) == [(1000,)]


def test_dec2float_returns_numeric_as_float_only_when_asked(ipool: DBInteractionPool) -> None:
    sql = "SELECT 1.5::numeric, ARRAY[2.25::numeric]"
    assert ipool.run(sql).get(10) == [(decimal.Decimal("1.5"), [decimal.Decimal("2.25")])]
    assert ipool.run(sql, dec2float=True).get(10) == [(1.5, [2.25])]
    assert ipool.run(sql).get(10)[0][0] == decimal.Decimal("1.5")


def test_rows_come_back_as_dicts_with_realdictcursor(ipool: DBInteractionPool) -> None:
    rows = ipool.run("SELECT 1 AS a, 'x' AS b", cursor_factory=RealDictCursor).get(10)
    assert rows == [{"a": 1, "b": "x"}]


@pytest.mark.parametrize("level", ["read committed", "repeatable read", "serializable"])
def test_each_isolation_level_is_applied(ipool: DBInteractionPool, level: str) -> None:
    assert ipool.run("SHOW transaction_isolation", isolation_level=level).get(10) == [(level,)]


def test_psycopg2_isolation_constants_work_for_run_and_transaction(
    ipool: DBInteractionPool,
) -> None:
    serializable = extensions.ISOLATION_LEVEL_SERIALIZABLE
    show = "SHOW transaction_isolation"
    assert ipool.run(show, isolation_level=serializable).get(10) == [("serializable",)]
    uncommitted = extensions.ISOLATION_LEVEL_READ_UNCOMMITTED
    assert ipool.run(show, isolation_level=uncommitted).get(10) == [("read committed",)]
    # Autocommit: the callable runs outside a transaction block.
    autocommit = extensions.ISOLATION_LEVEL_AUTOCOMMIT
    assert ipool.run(lambda conn: conn.autocommit, isolation_level=autocommit).get(10) is True
    with ipool.transaction(isolation_level=serializable) as tx:
        assert tx.run(show) == [("serializable",)]
    with pytest.raises(ConfigurationError, match="autocommit"):
        ipool.transaction(isolation_level=autocommit).__enter__()


def test_a_transaction_leaves_no_session_state_to_the_next_borrower(schema_dsn: str) -> None:
    pool = DBInteractionPool(schema_dsn, pool_size=1)
    try:
        with pool.transaction() as tx:
            tx.run("SET search_path TO pg_catalog")
            tx.run("SELECT pg_advisory_lock(99)")
            pid = tx.run("SELECT pg_backend_pid()")
        seen = pool.run(
            "SELECT current_setting('search_path'), pg_backend_pid(),"
            " (SELECT count(*) FROM pg_locks WHERE locktype::text LIKE 'advis%'"
            "  AND pid = pg_backend_pid())"
        ).get(10)
        assert seen == [('"$user", public', pid[0][0], 0)]
    finally:
        pool.close()


def test_read_only_interactions_run_in_a_read_only_transaction(ipool: DBInteractionPool) -> None:
    assert ipool.run("SHOW transaction_read_only", read_only=True).get(10) == [("on",)]
    with pytest.raises(DBInteractionException) as info:
        ipool.run("DELETE FROM test_values", read_only=True).get(10)
    assert info.value.pgcode == "25006"  # read_only_sql_transaction


def test_500_concurrent_runs_all_succeed(ipool: DBInteractionPool) -> None:
    replies = [ipool.run("SELECT %s::int", (i,)) for i in range(500)]
    assert [r.get(timeout=30) for r in replies] == [[(i,)] for i in range(500)]


def test_run_many_returns_results_in_order(ipool: DBInteractionPool) -> None:
    results = ipool.run_many(
        [("SELECT pg_sleep(0.2), %s::int", (i,)) for i in range(4)] + ["SELECT 'last'"],
        timeout=10,
    )
    assert [r[0][-1] for r in results] == [0, 1, 2, 3, "last"]


def test_run_many_runs_in_parallel(ipool: DBInteractionPool) -> None:
    started = time.monotonic()
    ipool.run_many(["SELECT pg_sleep(0.3)"] * 4, timeout=10)
    assert time.monotonic() - started < 0.9


def test_run_many_raises_the_first_error_or_returns_it(ipool: DBInteractionPool) -> None:
    work = ["SELECT 1", "SELECT * FROM nope", "SELECT 3"]
    with pytest.raises(DBInteractionException):
        ipool.run_many(work, timeout=10)
    out = ipool.run_many(work, timeout=10, return_exceptions=True)
    assert out[0] == [(1,)] and out[2] == [(3,)]
    assert isinstance(out[1], DBInteractionException)


def test_a_transaction_commits_as_a_unit(ipool: DBInteractionPool) -> None:
    with ipool.transaction() as tx:
        (row,) = tx.run("SELECT id, val2 FROM test_values WHERE id = %s FOR UPDATE", (1,))
        tx.run("UPDATE test_values SET val2 = %s WHERE id = %s", (row[1] + 1000, row[0]))
        tx.run("INSERT INTO test_values (val1, val2) VALUES (99, 99)")
    assert ipool.run("SELECT val2 > 1000 FROM test_values WHERE id = 1").get(10) == [(True,)]
    assert ipool.run("SELECT count(*) FROM test_values WHERE val1 = 99").get(10) == [(1,)]


def test_a_transaction_rolls_back_as_a_unit(ipool: DBInteractionPool) -> None:
    seen = []

    def delete_then_fail() -> None:
        with ipool.transaction() as tx:
            tx.run("DELETE FROM test_values WHERE val1 = 1")
            seen.append(tx.run("SELECT count(*) FROM test_values WHERE val1 = 1"))
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        delete_then_fail()
    assert seen == [[(0,)]]
    assert ipool.run("SELECT count(*) FROM test_values WHERE val1 = 1").get(10) == [(100,)]


def test_a_transaction_holds_its_row_lock_until_it_ends(ipool: DBInteractionPool) -> None:
    with ipool.transaction(isolation_level="repeatable read") as tx:
        assert tx.run("SHOW transaction_isolation") == [("repeatable read",)]
        tx.run("SELECT id FROM test_values WHERE id = 1 FOR UPDATE")
        blocked = ipool.run("SELECT id FROM test_values WHERE id = 1 FOR UPDATE NOWAIT")
        with pytest.raises(DBInteractionException) as info:
            blocked.get(timeout=10)
        assert info.value.pgcode == "55P03"  # lock_not_available
    assert ipool.run("SELECT id FROM test_values WHERE id = 1 FOR UPDATE NOWAIT").get(10) == [(1,)]


@pytest.mark.timeout(20)
def test_timeout_cancels_the_statement_on_the_server(ipool: DBInteractionPool) -> None:
    started = time.monotonic()
    with pytest.raises(InteractionTimeout):
        ipool.run("SELECT pg_sleep(10)", timeout=0.5).get(timeout=5)
    assert time.monotonic() - started < 2.0
    running = ipool.run(
        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(10)' "
        "AND state = 'active'"
    ).get(10)
    assert running == [(0,)]


def test_duplicate_and_unknown_pool_names_are_clear_errors(
    ipool: DBInteractionPool, schema_dsn: str
) -> None:
    with pytest.raises(ConfigurationError, match="'default' already exists"):
        ipool.add_pool("default", schema_dsn, 1)
    with pytest.raises(ConfigurationError, match="unknown pool 'nope'"):
        ipool.run("SELECT 1", pool="nope").get(timeout=10)


def test_a_named_pool_is_used_when_asked(ipool: DBInteractionPool, schema_dsn: str) -> None:
    ipool.add_pool("reports", schema_dsn, 1, role="primary", application_name="reports-app")
    rows = ipool.run("SELECT current_setting('application_name')", pool="reports").get(10)
    assert rows == [("reports-app",)]


@pytest.mark.parametrize("bad", [42, None, b"SELECT 1", ["SELECT 1"]])
def test_an_interaction_that_is_neither_sql_nor_callable_is_refused(
    ipool: DBInteractionPool, bad: object
) -> None:
    with pytest.raises(ConfigurationError, match="SQL string or a callable"):
        ipool.run(bad)  # type: ignore[arg-type]


def test_an_unknown_isolation_level_is_refused(ipool: DBInteractionPool) -> None:
    with pytest.raises(ConfigurationError, match="unknown isolation_level 'dirty read'"):
        ipool.run("SELECT 1", isolation_level="dirty read")


def test_close_stops_every_pool_and_leaves_no_backend(schema_dsn: str) -> None:
    baseline = set(_live_greenlets())
    ipool = DBInteractionPool(schema_dsn, pool_size=3, application_name="ipool-close-test")
    assert ipool.run("SELECT 1").get(10) == [(1,)]
    ipool.close()
    ipool.close()  # idempotent
    with pytest.raises(PoolClosed):
        ipool.run("SELECT 1")
    conn = psycopg2.connect(schema_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ipool-close-test'"
        )
        assert cur.fetchone() == (0,)
    conn.close()
    assert set(_live_greenlets()) - baseline == set()


def _live_greenlets() -> list[gevent.Greenlet]:
    import gc

    return [o for o in gc.get_objects() if isinstance(o, gevent.Greenlet) and not o.dead]


def test_run_many_timeout_bounds_the_whole_wait(schema_dsn: str) -> None:
    with DBInteractionPool(schema_dsn, pool_size=1) as one:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="not all interactions finished"):
            one.run_many(["SELECT pg_sleep(0.5)"] * 4, timeout=0.8)
        assert time.monotonic() - started < 1.5


def test_a_transaction_refuses_bad_options_before_taking_a_connection(
    ipool: DBInteractionPool,
) -> None:
    requests = ipool.stats()["default"]["requests_num"]
    with (
        pytest.raises(ConfigurationError, match="unknown isolation_level 'dirty read'"),
        ipool.transaction(isolation_level="dirty read"),
    ):
        pass
    with (
        pytest.raises(ConfigurationError, match="autocommit"),
        ipool.transaction(isolation_level="autocommit"),
    ):
        pass
    assert ipool.stats()["default"]["requests_num"] == requests


def test_on_an_idle_pool_a_run_costs_six_greenlet_switches(ipool: DBInteractionPool) -> None:
    # The router and the pool actor are inline actors: no switch to reach the
    # worker's mailbox; then caller -> worker (2), the server's answer (2), reply (2).
    ipool.pool().wait(10)  # every connection open: no worker busy connecting meanwhile
    ipool.run("SELECT 1").get(timeout=10)
    per_call = switches_per_call(lambda: ipool.run("SELECT 1").get(timeout=10), 50)
    assert per_call == pytest.approx(6, abs=0.3)


def test_under_load_a_run_costs_four_greenlet_switches(schema_dsn: str) -> None:
    # 16 callers on 4 connections: the caller's 2 around its reply and the worker's
    # 2 around the server's answer; workers chain queued interactions, no pool hop.
    pool = DBInteractionPool(schema_dsn, pool_size=4)
    try:
        pool.pool().wait(10)
        done = 0

        def caller() -> None:
            nonlocal done
            for _ in range(50):
                pool.run("SELECT 1").get(timeout=10)
                done += 1

        total = switches_per_call(
            lambda: gevent.joinall([gevent.spawn(caller) for _ in range(16)], raise_error=True)
        )
        assert done == 800
        assert total / done == pytest.approx(4, abs=0.3)
    finally:
        pool.close()


NUL_SQL = [
    "UPDATE test_values SET val1 = 0\x00 WHERE id = 1",
    sql.SQL("UPDATE test_values SET val1 = 0\x00 WHERE id = 1"),
    sql.SQL("UPDATE {} SET val1 = 0 WHERE id = 1").format(sql.Identifier("test_values\x00x")),
    sql.SQL("UPDATE test_values SET val1 = {} WHERE id = 1").format(sql.Literal("0\x00")),
    sql.Composed([sql.SQL("UPDATE test_values SET val1 = 0"), sql.SQL("\x00 WHERE id = 1")]),
]


@pytest.mark.parametrize(
    "statement", NUL_SQL, ids=["str", "SQL", "Identifier", "Literal", "Composed"]
)
def test_sql_text_holding_a_nul_is_refused_before_it_runs_and_changes_no_row(
    ipool: DBInteractionPool, statement: object
) -> None:
    before = ipool.run("SELECT id, val1 FROM test_values ORDER BY id").get(10)
    with pytest.raises(ConfigurationError, match=r"NUL character"):
        ipool.run(statement).get(10)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"NUL character"), ipool.transaction() as tx:
        tx.run(statement)  # type: ignore[arg-type]
    assert ipool.run("SELECT id, val1 FROM test_values ORDER BY id").get(10) == before


def test_a_psycopg2_sql_object_runs_as_sql_text(ipool: DBInteractionPool) -> None:
    query = sql.SQL("SELECT count(*) FROM {} WHERE val1 = {}").format(
        sql.Identifier("test_values"), sql.Placeholder()
    )
    assert ipool.run(query, (1,)).get(10) == [(100,)]
    assert ipool.run(query, (1,), read_only=True).get(10) == [(100,)]
    assert "val1 = 1" in ipool.run(query, (1,), dry_run=True).get(10)
