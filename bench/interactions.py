"""Benchmark: DBInteractionPool.run() against a raw-connection ceiling, psycopg_pool and asyncpg.

Run ``python bench/interactions.py`` (``--seconds N`` per measurement,
default 3). It starts its own EmbeddedPostgres, creates a 1,000,000-row table
once, and measures two queries, each a single round trip:

* ``SELECT 1``;
* a point query by primary key on the 1,000,000-row table (a random key per
  call, the same key generator for everyone).

Side by side, 16 connections each:

* **ceiling**: 16 greenlets, each owning a raw cooperative psycopg2
  connection (autocommit): no pool at all.
* **gdbpool**: ``DBInteractionPool.run(sql, args).get()`` from 64 greenlets:
  the router actor, the pool actor, a connection worker.
* **psycopg_pool**: ``ConnectionPool`` (psycopg 3, autocommit) used by 16 OS
  threads, in a child process that never imports gevent or gdbpool.
* **asyncpg**: ``asyncpg.create_pool(min_size=16, max_size=16)`` used by 64
  asyncio tasks (``pool.fetch``), in a child process, with its defaults: the
  pool resets every connection it takes back (a second round trip per call),
  which is what a user picking it gets.

Ceiling and gdbpool alternate for ``--rounds`` rounds (default 3), each
ratio taken against the ceiling of its own round; the client CPU per call is
printed too. Client and server share the machine's CPUs, so compare the
ratios to the ceiling rather than absolute numbers.
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Callable
from typing import Any

from _common import (
    CALLERS,
    CONNECTIONS,
    Measured,
    alternate,
    close_raw,
    green_client,
    print_child_result,
    raw_cursors,
    raw_query,
    report,
    run_child,
    run_threads,
    use_repository_packages,
    warmup_seconds,
)

ROWS = 1_000_000
TABLE = "bench_rows"
SELECT_1 = "SELECT 1"
POINT = f"SELECT id, payload FROM {TABLE} WHERE id = %s"
POINT_ASYNCPG = f"SELECT id, payload FROM {TABLE} WHERE id = $1"
QUERIES = ("select1", "point")


def _key() -> int:
    return random.randint(1, ROWS)


# -- children (no gevent here) ------------------------------------------------------


def _bench_psycopg_pool(dsn: str, seconds: float) -> dict[str, float]:
    from psycopg_pool import ConnectionPool

    results: dict[str, float] = {}
    with ConnectionPool(
        dsn, min_size=CONNECTIONS, max_size=CONNECTIONS, kwargs={"autocommit": True}, open=True
    ) as pool:
        pool.wait(30)

        def select1(i: int) -> None:
            with pool.connection() as conn:
                conn.execute(SELECT_1).fetchall()

        def point(i: int) -> None:
            with pool.connection() as conn:
                conn.execute(POINT, (_key(),)).fetchall()

        results["select1"] = run_threads(select1, CONNECTIONS, seconds)
        results["point"] = run_threads(point, CONNECTIONS, seconds)
    return results


def _bench_asyncpg(dsn: str, seconds: float) -> dict[str, float]:
    import asyncio
    import time

    import asyncpg
    from psycopg2.extensions import parse_dsn  # parsing only: no connection, no gevent

    params = parse_dsn(dsn)

    async def rate(op: Callable[[Any], Any], pool: Any) -> float:
        await rate_for(op, pool, warmup_seconds(seconds))  # off the record, like the others
        return await rate_for(op, pool, seconds)

    async def rate_for(op: Callable[[Any], Any], pool: Any, seconds: float) -> float:
        stop = time.monotonic() + seconds
        counts = [0] * CALLERS

        async def loop(i: int) -> None:
            n = 0
            while time.monotonic() < stop:
                await op(pool)
                n += 1
            counts[i] = n

        started = time.monotonic()
        await asyncio.gather(*(loop(i) for i in range(CALLERS)))
        return sum(counts) / (time.monotonic() - started)

    async def main() -> dict[str, float]:
        async with asyncpg.create_pool(
            host=params["host"],
            port=int(params["port"]),
            user=params["user"],
            password=params.get("password"),
            database=params["dbname"],
            min_size=CONNECTIONS,
            max_size=CONNECTIONS,
        ) as pool:
            return {
                "select1": await rate(lambda p: p.fetch(SELECT_1), pool),
                "point": await rate(lambda p: p.fetch(POINT_ASYNCPG, _key()), pool),
            }

    return asyncio.run(main())


# -- this process: the ceiling and gdbpool ---------------------------------------------


def _create_table(dsn: str) -> None:
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,))
        if not cur.fetchone()[0]:
            cur.execute(f"CREATE TABLE {TABLE} (id integer PRIMARY KEY, payload text NOT NULL)")
            cur.execute(
                f"INSERT INTO {TABLE} SELECT g, md5(g::text) FROM generate_series(1, %s) g",
                (ROWS,),
            )
            cur.execute(f"VACUUM ANALYZE {TABLE}")
    conn.close()


def _bench_gevent_side(dsn: str, seconds: float, rounds: int) -> dict[str, list[Measured]]:
    green_client()
    from gdbpool import DBInteractionPool

    cursors = raw_cursors(dsn)
    raw_select1 = raw_query(cursors, SELECT_1)
    raw_point = raw_query(cursors, POINT, lambda: (_key(),))

    ipool = DBInteractionPool(dsn, CONNECTIONS, pool_name="bench")
    ipool.pool().wait(30)
    run = ipool.run

    def run_select1(i: int) -> None:
        run(SELECT_1).get()

    def run_point(i: int) -> None:
        run(POINT, (_key(),)).get()

    results: dict[str, list[Measured]] = {}
    for query, raw_op, run_op in (
        ("select1", raw_select1, run_select1),
        ("point", raw_point, run_point),
    ):
        pair = alternate((raw_op, CONNECTIONS), {"gdbpool": (run_op, CALLERS)}, seconds, rounds)
        results["raw_" + query] = pair["ceiling"]
        results["gdbpool_" + query] = pair["gdbpool"]
    ipool.close()
    close_raw(cursors)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of ceiling and pool")
    parser.add_argument("--child", choices=("psycopg_pool", "asyncpg"), help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "psycopg_pool":
        print_child_result(_bench_psycopg_pool(args.dsn, args.seconds))
        return
    if args.child == "asyncpg":
        print_child_result(_bench_asyncpg(args.dsn, args.seconds))
        return

    use_repository_packages()
    from gdbpool import EmbeddedPostgres

    with EmbeddedPostgres() as server:
        dsn = server.dsn()
        _create_table(dsn)
        ours = _bench_gevent_side(dsn, args.seconds, args.rounds)
        child_args = ("--seconds", str(args.seconds), "--dsn", dsn)
        psycopg_pool = run_child(__file__, "--child", "psycopg_pool", *child_args)
        asyncpg = run_child(__file__, "--child", "asyncpg", *child_args)

    labels = {"select1": "SELECT 1", "point": f"point query ({ROWS:,} rows)"}
    print(f"{args.rounds} rounds of {args.seconds:g} s; medians; ratio to the same round's ceiling")
    peers = (("psycopg_pool, 16 threads", psycopg_pool), ("asyncpg, 64 tasks", asyncpg))
    for q in QUERIES:
        print(f"-- {labels[q]}")
        print(report("raw psycopg2, 16 greenlets x own conn", ours["raw_" + q], None))
        print(report("gdbpool run(), 64 greenlets", ours["gdbpool_" + q], ours["raw_" + q]))
        ceiling = statistics.median(m.rate for m in ours["raw_" + q])
        mine = statistics.median(m.rate for m in ours["gdbpool_" + q])
        for label, peer in peers:
            print(f"{label:46} {peer[q]:10.0f}/s   {peer[q] / ceiling:5.2f}x of the ceiling median")
        print(
            f"gdbpool run() / psycopg_pool: {mine / psycopg_pool[q]:.2f}x; "
            f"/ asyncpg: {mine / asyncpg[q]:.2f}x"
        )


if __name__ == "__main__":
    main()
