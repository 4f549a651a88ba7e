"""Benchmark: run() and get()/put() beside a raw ceiling, a naive Queue pool, psycopg_pool, asyncpg.

    ./run bench peers [--seconds 3] [--rounds 4] [--modes raw,queue,...]

Starts its own EmbeddedPostgres, creates a 1,000,000-row table once, and
measures two single-round-trip queries: ``SELECT 1`` and a point query by
primary key (a random key per call, the same generator for everyone).

Every mode runs **in its own process**, started afresh for each round, so
gevent's patching never touches the thread and asyncio peers and no mode
profits from another's warm caches. 16 server connections everywhere:

* ``raw``: 16 greenlets, each owning a cooperative psycopg2 connection
  (autocommit): no pool at all, the ceiling;
* ``queue``: the ten-line pool anyone writes first: a ``gevent.queue.Queue``
  of 16 connections shared by 64 greenlets (get, execute, fetch, put);
* ``run``: ``DBInteractionPool.run(sql, args).get()`` from 64 greenlets;
* ``getput``: ``DBConnectionPool.get(auto_commit=True)``, a cursor, ``put()``,
  from 64 greenlets;
* ``psycopg_pool``: psycopg 3's ``ConnectionPool`` (autocommit) used by 64
  OS threads;
* ``asyncpg``: ``asyncpg.create_pool`` used by 64 asyncio tasks, with its
  defaults (it resets each connection it takes back: what a user gets).

Rounds alternate the modes (the order rotates each round); each ratio is a
mode's rate over the ``raw`` rate of the same round, reported as the median
and [min..max] over the rounds. Client CPU per call (``time.process_time``
of the mode's process, all its threads) is the number that moves least with
what the server and the neighbours do with the cores.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from _common import CALLERS, CONNECTIONS, use_repository_packages, warmup_seconds

ROWS = 1_000_000
TABLE = "bench_rows"
QUERIES: dict[str, tuple[str, bool]] = {
    # name: (psycopg2/psycopg SQL, takes a key)
    "select1": ("SELECT 1", False),
    "point": (f"SELECT id, payload FROM {TABLE} WHERE id = %s", True),
}
LABELS = {"select1": "SELECT 1", "point": f"point query, {ROWS:,} rows"}
MODES = ("raw", "queue", "run", "getput", "psycopg_pool", "asyncpg")
MODE_LABELS = {
    "raw": "raw greenlets, own connections",
    "queue": "naive gevent Queue of 16",
    "run": "DBInteractionPool.run().get()",
    "getput": "DBConnectionPool get/cursor/put",
    "psycopg_pool": "psycopg_pool, 64 threads",
    "asyncpg": "asyncpg pool, 64 tasks",
}


def _key() -> int:
    return random.randint(1, ROWS)


# -- measuring, inside a mode's process ------------------------------------------------


def _measure(
    spawn_all: Callable[[Callable[[int], None], int, float], None],
    op: Callable[[int], None],
    workers: int,
    seconds: float,
) -> dict[str, float]:
    """Run ``op`` from ``workers`` loops for ``seconds``: calls/s and CPU µs per call."""
    spawn_all(op, workers, warmup_seconds(seconds))  # off the record
    counts = [0] * workers
    started, cpu = time.monotonic(), time.process_time()
    spawn_all(_counting(op, seconds, counts), workers, seconds)
    calls = max(1, sum(counts))
    return {
        "rate": calls / (time.monotonic() - started),
        "cpu_us": (time.process_time() - cpu) / calls * 1e6,
    }


def _counting(op: Callable[[int], None], seconds: float, counts: list[int]) -> Any:
    stop = time.monotonic() + seconds

    def loop(i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            op(i)
            n += 1
        counts[i] = n

    loop.counting = True  # type: ignore[attr-defined]
    return loop


def _plain_loop(op: Callable[[int], None], seconds: float) -> Callable[[int], None]:
    stop = time.monotonic() + seconds

    def loop(i: int) -> None:
        while time.monotonic() < stop:
            op(i)

    return loop


def _greenlets(op: Callable[[int], None], n: int, seconds: float) -> None:
    import gevent

    body = op if getattr(op, "counting", False) else _plain_loop(op, seconds)
    gevent.joinall([gevent.spawn(body, i) for i in range(n)], raise_error=True)


def _threads(op: Callable[[int], None], n: int, seconds: float) -> None:
    body = op if getattr(op, "counting", False) else _plain_loop(op, seconds)
    workers = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def _green_ops(mode: str, dsn: str) -> tuple[dict[str, Callable[[int], None]], int, Any]:
    """The ops of a gevent mode: ``({query: op}, workers, close)``."""
    use_repository_packages()
    from gdbpool import configure_logging, make_psycopg_green

    make_psycopg_green()
    configure_logging(level="WARNING")
    import psycopg2

    def raw_conn() -> Any:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        return conn

    if mode == "raw":
        conns = [raw_conn() for _ in range(CONNECTIONS)]
        cursors = [c.cursor() for c in conns]

        def raw_op(sql: str, keyed: bool) -> Callable[[int], None]:
            if keyed:

                def op(i: int) -> None:
                    cur = cursors[i]
                    cur.execute(sql, (_key(),))
                    cur.fetchall()
            else:

                def op(i: int) -> None:
                    cur = cursors[i]
                    cur.execute(sql)
                    cur.fetchall()

            return op

        ops = {q: raw_op(sql, keyed) for q, (sql, keyed) in QUERIES.items()}
        return ops, CONNECTIONS, lambda: [c.close() for c in conns]

    if mode == "queue":
        from gevent.queue import Queue

        free: Queue[Any] = Queue()
        conns = [raw_conn() for _ in range(CONNECTIONS)]
        for c in conns:
            free.put(c)

        def queue_op(sql: str, keyed: bool) -> Callable[[int], None]:
            def op(i: int) -> None:
                conn = free.get()
                try:
                    with conn.cursor() as cur:
                        cur.execute(sql, (_key(),) if keyed else None)
                        cur.fetchall()
                finally:
                    free.put(conn)

            return op

        ops = {q: queue_op(sql, keyed) for q, (sql, keyed) in QUERIES.items()}
        return ops, CALLERS, lambda: [c.close() for c in conns]

    if mode == "run":
        from gdbpool import DBInteractionPool

        ipool = DBInteractionPool(dsn, CONNECTIONS, pool_name="bench")
        ipool.pool().wait(30)
        run = ipool.run

        def run_op(sql: str, keyed: bool) -> Callable[[int], None]:
            if keyed:

                def op(i: int) -> None:
                    run(sql, (_key(),)).get()
            else:

                def op(i: int) -> None:
                    run(sql).get()

            return op

        ops = {q: run_op(sql, keyed) for q, (sql, keyed) in QUERIES.items()}
        return ops, CALLERS, ipool.close

    if mode == "getput":
        from gdbpool import DBConnectionPool

        pool = DBConnectionPool(dsn, CONNECTIONS, name="bench")
        pool.wait(30)
        get, put = pool.get, pool.put

        def getput_op(sql: str, keyed: bool) -> Callable[[int], None]:
            def op(i: int) -> None:
                conn = get(auto_commit=True)
                try:
                    with conn.cursor() as cur:
                        cur.execute(sql, (_key(),) if keyed else None)
                        cur.fetchall()
                finally:
                    put(conn)

            return op

        ops = {q: getput_op(sql, keyed) for q, (sql, keyed) in QUERIES.items()}
        return ops, CALLERS, pool.close

    raise ValueError(mode)


def _child_green(mode: str, dsn: str, seconds: float) -> dict[str, dict[str, float]]:
    from gevent import monkey

    monkey.patch_all()
    ops, workers, close = _green_ops(mode, dsn)
    try:
        return {q: _measure(_greenlets, op, workers, seconds) for q, op in ops.items()}
    finally:
        close()


def _child_psycopg_pool(dsn: str, seconds: float) -> dict[str, dict[str, float]]:
    from psycopg_pool import ConnectionPool

    with ConnectionPool(
        dsn, min_size=CONNECTIONS, max_size=CONNECTIONS, kwargs={"autocommit": True}, open=True
    ) as pool:
        pool.wait(30)

        def pg_op(sql: str, keyed: bool) -> Callable[[int], None]:
            def op(i: int) -> None:
                with pool.connection() as conn:
                    conn.execute(sql, (_key(),) if keyed else None).fetchall()

            return op

        return {
            q: _measure(_threads, pg_op(sql, keyed), CALLERS, seconds)
            for q, (sql, keyed) in QUERIES.items()
        }


def _child_asyncpg(dsn: str, seconds: float) -> dict[str, dict[str, float]]:
    import asyncio

    import asyncpg
    from psycopg2.extensions import parse_dsn  # parsing only: no connection, no gevent

    params = parse_dsn(dsn)

    async def rate_for(op: Any, pool: Any, seconds: float, counts: list[int] | None) -> None:
        stop = time.monotonic() + seconds

        async def loop(i: int) -> None:
            n = 0
            while time.monotonic() < stop:
                await op(pool)
                n += 1
            if counts is not None:
                counts[i] = n

        await asyncio.gather(*(loop(i) for i in range(CALLERS)))

    async def measure(op: Any, pool: Any) -> dict[str, float]:
        await rate_for(op, pool, warmup_seconds(seconds), None)
        counts = [0] * CALLERS
        started, cpu = time.monotonic(), time.process_time()
        await rate_for(op, pool, seconds, counts)
        calls = max(1, sum(counts))
        return {
            "rate": calls / (time.monotonic() - started),
            "cpu_us": (time.process_time() - cpu) / calls * 1e6,
        }

    async def main() -> dict[str, dict[str, float]]:
        async with asyncpg.create_pool(
            host=params["host"],
            port=int(params["port"]),
            user=params["user"],
            password=params.get("password"),
            database=params["dbname"],
            min_size=CONNECTIONS,
            max_size=CONNECTIONS,
        ) as pool:
            point = f"SELECT id, payload FROM {TABLE} WHERE id = $1"
            return {
                "select1": await measure(lambda p: p.fetch("SELECT 1"), pool),
                "point": await measure(lambda p: p.fetch(point, _key()), pool),
            }

    return asyncio.run(main())


def child(mode: str, dsn: str, seconds: float) -> dict[str, dict[str, float]]:
    """Measure one mode in this (fresh) process."""
    if mode == "psycopg_pool":
        return _child_psycopg_pool(dsn, seconds)
    if mode == "asyncpg":
        return _child_asyncpg(dsn, seconds)
    return _child_green(mode, dsn, seconds)


# -- the parent: rounds of fresh processes -------------------------------------------


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


def _run_mode(mode: str, dsn: str, seconds: float) -> dict[str, dict[str, float]]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--seconds", str(seconds)],
        input=dsn,  # the DSN holds a password: stdin, never the command line
        capture_output=True,
        text=True,
        timeout=120 + 4 * seconds,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"mode {mode} failed:\n{proc.stderr}")
    result: dict[str, dict[str, float]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}..{max(values):.2f}]"


def versions() -> str:
    """The versions a quoted table needs: Python, gevent, psycopg2, PostgreSQL's binaries."""
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {sys.version.split()[0]}"]
    for dist in (
        "gdbpool",
        "gevent",
        "psycopg2-binary",
        "psycopg2",
        "pyzmq",
        "psycopg",
        "psycopg-pool",
        "asyncpg",
    ):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            continue
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--seconds", type=float, default=3.0, help="per mode and query")
    parser.add_argument("--rounds", type=int, default=4, help="rounds over all modes")
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated subset of {','.join(MODES)} (raw always runs)",
    )
    parser.add_argument("--json", action="store_true", help="also print every round as JSON")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        dsn = sys.stdin.readline().strip()
        print(json.dumps(child(args.child, dsn, args.seconds)))
        return

    modes = [m for m in MODES if m == "raw" or m in args.modes.split(",")]
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    use_repository_packages()
    from gdbpool import EmbeddedPostgres

    rounds: list[dict[str, dict[str, dict[str, float]]]] = []
    with EmbeddedPostgres() as server:
        dsn = server.dsn()
        _create_table(dsn)
        for r in range(args.rounds):
            order = modes[r % len(modes) :] + modes[: r % len(modes)]
            rounds.append({mode: _run_mode(mode, dsn, args.seconds) for mode in order})
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    print(f"{time.strftime('%Y-%m-%d')}; {versions()}")
    print(
        f"{args.rounds} rounds x {args.seconds:g} s per mode, each mode in its own process;"
        " ratio = mode / raw of the same round: median [min..max]; client CPU per call"
    )
    for q in QUERIES:
        print(f"-- {LABELS[q]}")
        for mode in modes:
            rates = [rd[mode][q]["rate"] for rd in rounds]
            ratios = [rd[mode][q]["rate"] / rd["raw"][q]["rate"] for rd in rounds]
            cpu = statistics.median(rd[mode][q]["cpu_us"] for rd in rounds)
            print(
                f"{MODE_LABELS[mode]:34} {statistics.median(rates):9.0f}/s"
                f"  {_spread(ratios):>19}  {cpu:6.1f} us cpu/call"
            )
    if args.json:
        print(json.dumps(rounds))


if __name__ == "__main__":
    main()
