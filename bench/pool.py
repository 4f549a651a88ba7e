"""Benchmark: DBConnectionPool against a raw-connection ceiling and psycopg_pool.

Run ``python bench/pool.py`` (``--seconds N`` per measurement, default 3). It
starts its own EmbeddedPostgres and measures, one after the other:

* **ceiling** — 16 greenlets, each owning a raw cooperative psycopg2
  connection (autocommit), running ``SELECT 1``: no pool at all.
* **gdbpool** — a DBConnectionPool of 16 connections shared by 64 greenlets:
  ``get()``/``put()`` checkouts per second; ``SELECT 1`` per second through
  ``submit(Interaction)`` (the actor path); and through
  ``get(auto_commit=True)`` + cursor + ``put()``.
* **psycopg_pool** — ``psycopg_pool.ConnectionPool`` (psycopg 3,
  ``autocommit=True``) of 16 connections used by 16 OS threads: checkouts and
  ``SELECT 1`` per second. It runs in a child process that never imports
  gevent or gdbpool, so its threads are real threads and nothing is patched.

All queries are single round trips (autocommit), so the comparison is about
pool overhead, not transaction handling. Ceiling and gdbpool alternate for
``--rounds`` rounds (default 3); each ratio compares a measurement with the
ceiling of its own round, and the client CPU per call (``time.process_time``)
is printed as the number that does not move with machine load. Numbers
depend on the machine: the client and the server share its CPUs.
"""

from __future__ import annotations

import argparse
import statistics

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
)


def _bench_psycopg_pool(dsn: str, seconds: float) -> dict[str, float]:
    """Child process: psycopg_pool with 16 threads (no gevent imported here)."""
    from psycopg_pool import ConnectionPool

    results: dict[str, float] = {}
    with ConnectionPool(
        dsn, min_size=CONNECTIONS, max_size=CONNECTIONS, kwargs={"autocommit": True}, open=True
    ) as pool:
        pool.wait(30)

        def checkout() -> None:
            with pool.connection():
                pass

        def select1() -> None:
            with pool.connection() as conn:
                conn.execute("SELECT 1").fetchall()

        for label, op in (("checkouts", checkout), ("select1", select1)):
            results[label] = run_threads(lambda i, op=op: op(), CONNECTIONS, seconds)
    return results


def _bench_gevent_side(dsn: str, seconds: float, rounds: int) -> dict[str, list[Measured]]:
    green_client()
    from gdbpool import DBConnectionPool, Interaction

    # (a) the ceiling: one raw connection per greenlet.
    cursors = raw_cursors(dsn)
    raw_select1 = raw_query(cursors, "SELECT 1")

    pool = DBConnectionPool(dsn, CONNECTIONS, name="bench")
    pool.wait(30)

    def checkout(i: int) -> None:
        pool.put(pool.get())

    def submit_select1(i: int) -> None:
        interaction = Interaction("SELECT 1")
        pool.submit(interaction)
        interaction.reply.get()

    def get_put_select1(i: int) -> None:
        conn = pool.get(auto_commit=True)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchall()
        pool.put(conn)

    results = alternate(
        (raw_select1, CONNECTIONS),
        {
            "submit": (submit_select1, CALLERS),
            "get_put": (get_put_select1, CALLERS),
            "checkouts": (checkout, CALLERS),
        },
        seconds,
        rounds,
    )
    pool.close()
    close_raw(cursors)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of ceiling and pool")
    parser.add_argument("--psycopg-pool-child", metavar="DSN", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.psycopg_pool_child:
        print_child_result(_bench_psycopg_pool(args.psycopg_pool_child, args.seconds))
        return

    use_repository_packages()
    from gdbpool import EmbeddedPostgres

    with EmbeddedPostgres() as server:
        dsn = server.dsn()
        ours = _bench_gevent_side(dsn, args.seconds, args.rounds)
        theirs = run_child(__file__, "--seconds", str(args.seconds), "--psycopg-pool-child", dsn)

    ceiling = ours["ceiling"]
    print(f"{args.rounds} rounds of {args.seconds:g} s; medians; ratio to the same round's ceiling")
    print(report("raw psycopg2, 16 greenlets x own conn: SELECT 1", ceiling, None))
    print(report("gdbpool submit(Interaction), 64 greenlets", ours["submit"], ceiling))
    print(report("gdbpool get/put + cursor, 64 greenlets", ours["get_put"], ceiling))
    print(report("gdbpool get()+put() only (checkouts)", ours["checkouts"], None))
    print()
    select1, checkouts = theirs["select1"], theirs["checkouts"]
    print(f"{'psycopg_pool, 16 threads: SELECT 1':46} {select1:10.0f}/s")
    print(f"{'psycopg_pool connection() only (checkouts)':46} {checkouts:10.0f}/s")
    for label, key in (("submit", "submit"), ("get/put", "get_put")):
        rate = statistics.median(m.rate for m in ours[key])
        print(f"gdbpool {label:8} / psycopg_pool : {rate / select1:.2f}x")
    rate = statistics.median(m.rate for m in ours["checkouts"])
    print(f"checkouts gdbpool / psycopg_pool: {rate / checkouts:.2f}x")


if __name__ == "__main__":
    main()
