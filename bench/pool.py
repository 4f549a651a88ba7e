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
pool overhead, not transaction handling. Numbers depend on the machine: the
client and the server share its CPUs.
"""

from __future__ import annotations

import argparse

from _common import (
    CALLERS,
    CONNECTIONS,
    close_raw,
    print_child_result,
    raw_cursors,
    run_child,
    run_greenlets,
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


def _bench_gevent_side(dsn: str, seconds: float) -> dict[str, float]:
    use_repository_packages()

    from gdbpool.connection_pool import DBConnectionPool
    from gdbpool.green import make_psycopg_green
    from gdbpool.interaction import Interaction
    from gdbpool.logging import configure_logging

    make_psycopg_green()
    configure_logging(level="WARNING")
    results: dict[str, float] = {}

    # (a) the ceiling: one raw connection per greenlet.
    cursors = raw_cursors(dsn)

    def raw_select1(i: int) -> None:
        cur = cursors[i]
        cur.execute("SELECT 1")
        cur.fetchall()

    results["raw_select1"] = run_greenlets(raw_select1, CONNECTIONS, seconds)
    close_raw(cursors)

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

    results["gdbpool_checkouts"] = run_greenlets(checkout, CALLERS, seconds)
    results["gdbpool_submit_select1"] = run_greenlets(submit_select1, CALLERS, seconds)
    results["gdbpool_get_put_select1"] = run_greenlets(get_put_select1, CALLERS, seconds)
    pool.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--psycopg-pool-child", metavar="DSN", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.psycopg_pool_child:
        print_child_result(_bench_psycopg_pool(args.psycopg_pool_child, args.seconds))
        return

    use_repository_packages()
    from gdbpool.embedded import EmbeddedPostgres

    with EmbeddedPostgres() as server:
        dsn = server.dsn()
        ours = _bench_gevent_side(dsn, args.seconds)
        theirs = run_child(__file__, "--seconds", str(args.seconds), "--psycopg-pool-child", dsn)

    ceiling = ours["raw_select1"]
    rows = [
        ("raw psycopg2, 16 greenlets x own conn", "SELECT 1/s", ceiling),
        ("gdbpool submit(Interaction), 64 greenlets", "SELECT 1/s", ours["gdbpool_submit_select1"]),
        ("gdbpool get/put + cursor, 64 greenlets", "SELECT 1/s", ours["gdbpool_get_put_select1"]),
        ("psycopg_pool, 16 threads", "SELECT 1/s", theirs["select1"]),
        ("gdbpool get()+put(), 64 greenlets", "checkouts/s", ours["gdbpool_checkouts"]),
        ("psycopg_pool connection(), 16 threads", "checkouts/s", theirs["checkouts"]),
    ]
    print(f"{'':46} {'what':>12} {'rate':>10}")
    for label, what, rate in rows:
        print(f"{label:46} {what:>12} {rate:10.0f}")
    print()
    submit_rate, get_put_rate = ours["gdbpool_submit_select1"], ours["gdbpool_get_put_select1"]
    print(f"gdbpool submit  / ceiling       : {submit_rate / ceiling:.2f}x")
    print(f"gdbpool get/put / ceiling       : {get_put_rate / ceiling:.2f}x")
    print(f"gdbpool submit  / psycopg_pool  : {submit_rate / theirs['select1']:.2f}x")
    print(f"gdbpool get/put / psycopg_pool  : {get_put_rate / theirs['select1']:.2f}x")
    print(
        f"checkouts gdbpool / psycopg_pool: {ours['gdbpool_checkouts'] / theirs['checkouts']:.2f}x"
    )


if __name__ == "__main__":
    main()
