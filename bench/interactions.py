"""Benchmark: what one call costs on each path, in greenlet switches and client CPU.

    ./run bench interactions [--seconds 2] [--paths run,submit,...] [--json]

Starts its own EmbeddedPostgres and, in this one process (gevent patched),
drives each path with ``SELECT 1`` on a pool of 16 connections, twice:

* **idle**: one caller, so no request ever waits for a connection;
* **loaded**: 64 callers sharing the 16 connections.

For each it prints calls/s, client CPU µs per call (``time.process_time``)
and greenlet switches per call (``greenlet.settrace``: every ``switch`` and
``throw``). The throughput comparison with the peers is ``bench/peers.py``
(each mode in its own process); this script is the profile beside it: where a
path spends switches and CPU, and what an option adds (a path per variant).

Paths:

* ``raw``: a cooperative psycopg2 connection the caller owns (loaded: 16
  greenlets, one connection each): the floor;
* ``run``: ``DBInteractionPool.run("SELECT 1").get()``;
* ``run_callable``: ``run(fn).get()`` with ``fn(conn, cursor)`` executing
  ``SELECT 1`` (a callable: the connection may have been dirtied);
* ``submit``: ``DBConnectionPool.submit(Interaction("SELECT 1"))`` and the
  reply's ``get()``;
* ``getput``: ``get(auto_commit=True)``, a cursor, ``SELECT 1``, ``put()``;
* ``checkout``: ``get()`` then ``put()``, no query (never yields when idle);
* ``run_metrics``, ``getput_metrics``: ``run`` and ``getput`` with metrics on:
  a ``gdbpool.metrics.GDBPoolCollector`` over both pools, scraped
  (``exposition()``) every ``--scrape-interval`` seconds (default 0.1, far
  more often than any real scraper) by a greenlet beside the callers. The
  collector adds nothing per call (it reads ``stats()``), so any difference
  is the scrapes' share, charged to the calls. Needs the ``metrics`` extra.

Switch counts are deterministic for the idle runs (the tests pin several of
them, see docs/benchmarks.md); CPU per call moves with the machine's load, so
compare paths within one run.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from _common import CALLERS, CONNECTIONS, use_repository_packages, warmup_seconds

PATHS = (
    "raw", "run", "run_callable", "submit", "getput", "checkout", "run_metrics", "getput_metrics",
)  # fmt: skip
#: Paths measured with a scraper running: the path whose op they reuse.
SCRAPED = {"run_metrics": "run", "getput_metrics": "getput"}
SQL = "SELECT 1"


def _ops(
    dsn: str,
) -> tuple[dict[str, Callable[[int], None]], Callable[[], None], tuple[Any, ...]]:
    """``({path: op(i)}, close, pools)``: every path's op, over pools opened here."""
    import psycopg2

    from gdbpool import DBConnectionPool, DBInteractionPool, Interaction

    raw = []
    for _ in range(CONNECTIONS):
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        raw.append(conn.cursor())
    ipool = DBInteractionPool(dsn, CONNECTIONS, pool_name="bench-run")
    pool = DBConnectionPool(dsn, CONNECTIONS, name="bench-pool")
    ipool.pool().wait(30)
    pool.wait(30)
    run, submit, get, put = ipool.run, pool.submit, pool.get, pool.put

    def raw_op(i: int) -> None:
        cur = raw[i % CONNECTIONS]
        cur.execute(SQL)
        cur.fetchall()

    def run_op(i: int) -> None:
        run(SQL).get()

    def select(conn: Any, cursor: Any) -> Any:
        cursor.execute(SQL)
        return cursor.fetchall()

    def run_callable_op(i: int) -> None:
        run(select).get()

    def submit_op(i: int) -> None:
        interaction = Interaction(SQL)
        submit(interaction)
        interaction.reply.get()

    def getput_op(i: int) -> None:
        conn = get(auto_commit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(SQL)
                cur.fetchall()
        finally:
            put(conn)

    def checkout_op(i: int) -> None:
        put(get())

    def close() -> None:
        ipool.close()
        pool.close()
        for cur in raw:
            cur.connection.close()

    ops = {
        "raw": raw_op,
        "run": run_op,
        "run_callable": run_callable_op,
        "submit": submit_op,
        "getput": getput_op,
        "checkout": checkout_op,
    }
    return ops, close, (ipool, pool)


def _scraping(pools: tuple[Any, ...], interval: float) -> Callable[[], int]:
    """Start a greenlet scraping ``pools`` every ``interval`` s; returns stop() -> scrapes."""
    import gevent

    from gdbpool.metrics import GDBPoolCollector, exposition

    collector = GDBPoolCollector(*pools)
    scrapes = 0

    def loop() -> None:
        nonlocal scrapes
        while True:
            exposition(collector)
            scrapes += 1
            gevent.sleep(interval)

    scraper = gevent.spawn(loop)

    def stop() -> int:
        scraper.kill()
        return scrapes

    return stop


def _measure(op: Callable[[int], None], callers: int, seconds: float) -> dict[str, float]:
    """``op`` from ``callers`` greenlets for ``seconds``: calls/s, CPU µs and switches per call."""
    import gevent
    import greenlet

    def drive(span: float, counts: list[int]) -> None:
        stop = time.monotonic() + span

        def loop(i: int) -> None:
            n = 0
            while time.monotonic() < stop:
                op(i)
                n += 1
            counts[i] = n

        gevent.joinall([gevent.spawn(loop, i) for i in range(callers)], raise_error=True)

    drive(warmup_seconds(seconds), [0] * callers)  # off the record
    counts = [0] * callers
    started, cpu = time.monotonic(), time.process_time()
    drive(seconds, counts)
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
    calls = max(1, sum(counts))
    # Switches in a pass of their own: the trace function's cost stays out of the CPU.
    switches = 0

    def trace(event: str, args: object) -> None:
        nonlocal switches
        if event in ("switch", "throw"):
            switches += 1

    traced = [0] * callers
    old = greenlet.settrace(trace)
    try:
        drive(warmup_seconds(seconds), traced)
    finally:
        greenlet.settrace(old)
    # The joinall's own spawns and wake-ups are per pass, not per call: negligible.
    return {
        "calls_per_s": calls / elapsed,
        "cpu_us_per_call": cpu / calls * 1e6,
        "switches_per_call": switches / max(1, sum(traced)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per path and load")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--scrape-interval", type=float, default=0.1, help="metrics paths: seconds between scrapes"
    )
    args = parser.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        parser.error(f"unknown path(s) {', '.join(unknown)}; known: {', '.join(PATHS)}")

    from gevent import monkey

    monkey.patch_all()
    use_repository_packages()
    from gdbpool import EmbeddedPostgres, configure_logging, make_psycopg_green

    make_psycopg_green()
    configure_logging(level="WARNING")
    results: dict[str, dict[str, dict[str, float]]] = {}
    with EmbeddedPostgres() as server:
        ops, close, pools = _ops(server.dsn())
        try:
            for path in paths:
                loaded = CONNECTIONS if path == "raw" else CALLERS
                op = ops[SCRAPED.get(path, path)]
                stop = _scraping(pools, args.scrape_interval) if path in SCRAPED else None
                try:
                    results[path] = {
                        "idle": _measure(op, 1, args.seconds),
                        "loaded": _measure(op, loaded, args.seconds),
                    }
                finally:
                    if stop is not None:
                        stop()
        finally:
            close()
    if args.json:
        print(json.dumps(results))
        return
    print(f"{'path':<16}{'load':<8}{'calls/s':>10}{'CPU us/call':>13}{'switches/call':>15}")
    for path, by_load in results.items():
        for load, m in by_load.items():
            print(
                f"{path:<16}{load:<8}{m['calls_per_s']:>10,.0f}"
                f"{m['cpu_us_per_call']:>13.1f}{m['switches_per_call']:>15.2f}"
            )


if __name__ == "__main__":
    main()
