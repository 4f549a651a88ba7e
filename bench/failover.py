"""Failover under a steady write load: gDBPool against psycopg_pool with a multi-host DSN.

For each contender a fresh embedded primary + streaming replica; ``--writers``
callers insert rows as fast as they can; then the primary crashes
(``pg_ctl stop -m immediate``) and the replica is promoted.  Printed per
contender: the time from the end of the promotion to the first write
acknowledged by the new primary, and how many interactions failed.

* ``gdbpool``: :class:`gdbpool.DBInteractionPool` on the primary with the
  replica added (``health_interval=0.2``, ``probe_timeout=1``), greenlets.
* ``psycopg_pool``: what a user would pick instead: ``psycopg_pool.ConnectionPool``
  on ``host=P,R ... target_session_attrs=read-write`` with
  ``check=ConnectionPool.check_connection``, OS threads.

Run: ``.venv/bin/python bench/failover.py [--writers 8] [--rounds 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

from _common import use_repository_packages

use_repository_packages()

import gevent  # noqa: E402

from gdbpool import DBInteractionPool, EmbeddedPostgres  # noqa: E402

_SQL = "INSERT INTO bench_failover (v) VALUES (1) RETURNING inet_server_port()"
_SETTINGS = {"synchronous_commit": "on", "wal_retrieve_retry_interval": "'100ms'"}


def _pair() -> tuple[EmbeddedPostgres, EmbeddedPostgres]:
    primary = EmbeddedPostgres(settings=_SETTINGS).start()
    primary.psql("CREATE TABLE bench_failover (id bigserial PRIMARY KEY, v int)")
    replica = EmbeddedPostgres(replica_of=primary, fast=True, settings=_SETTINGS).start()
    deadline = time.monotonic() + 30
    sql = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
    while primary.psql(sql) == "0":
        if time.monotonic() > deadline:
            raise TimeoutError("the replica did not start streaming")
        time.sleep(0.05)
    return primary, replica


class _Tally:
    def __init__(self) -> None:
        self.acked: list[tuple[float, int]] = []
        self.failed = 0
        self.stop = False


def _switch(primary: EmbeddedPostgres, replica: EmbeddedPostgres) -> float:
    primary.halt(mode="immediate")
    replica.promote()
    return time.monotonic()


def _first_on(tally: _Tally, port: int, after: float) -> float | None:
    times = [t for t, p in tally.acked if p == port and t >= after]
    return min(times) - after if times else None


def run_gdbpool(writers: int) -> tuple[float | None, int]:
    primary, replica = _pair()
    tally = _Tally()
    try:
        ipool = DBInteractionPool(
            primary.dsn(), pool_size=writers, health_interval=0.2, probe_timeout=1.0,
            reconnect_max=1.0, timeout=10.0,
        )  # fmt: skip
        ipool.add_pool("replica", replica.dsn(), writers)

        def writer() -> None:
            while not tally.stop:
                try:
                    ((port,),) = ipool.run(_SQL, timeout=5).get(timeout=15)
                    tally.acked.append((time.monotonic(), port))
                except Exception:
                    tally.failed += 1
                    gevent.sleep(0.01)

        greenlets = [gevent.spawn(writer) for _ in range(writers)]
        gevent.sleep(1.0)
        promoted = _switch(primary, replica)
        deadline = promoted + 30
        while _first_on(tally, replica.port, promoted) is None and time.monotonic() < deadline:
            gevent.sleep(0.01)
        gevent.sleep(1.0)  # a moment of steady state on the new primary
        tally.stop = True
        gevent.joinall(greenlets, timeout=20)
        ipool.close()
        return _first_on(tally, replica.port, promoted), tally.failed
    finally:
        replica.stop(mode="immediate")
        primary.stop(mode="immediate")


def run_psycopg_pool(writers: int) -> tuple[float | None, int]:
    import psycopg
    from psycopg_pool import ConnectionPool

    primary, replica = _pair()
    tally = _Tally()
    lock = threading.Lock()
    try:
        conninfo = psycopg.conninfo.make_conninfo(
            host="127.0.0.1,127.0.0.1",
            port=f"{primary.port},{replica.port}",
            user=primary.user if primary.user != "root" else "postgres",
            password=primary.password,
            dbname="postgres",
            target_session_attrs="read-write",
            connect_timeout="2",
        )
        pool = ConnectionPool(
            conninfo, min_size=writers, max_size=writers, timeout=10,
            check=ConnectionPool.check_connection, reconnect_timeout=60, open=True,
        )  # fmt: skip
        pool.wait(timeout=30)

        def writer() -> None:
            while not tally.stop:
                try:
                    with pool.connection(timeout=10) as conn:
                        row = conn.execute(_SQL).fetchone()
                    assert row is not None
                    with lock:
                        tally.acked.append((time.monotonic(), int(row[0])))
                except Exception:
                    with lock:
                        tally.failed += 1
                    time.sleep(0.01)

        threads = [threading.Thread(target=writer, daemon=True) for _ in range(writers)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        promoted = _switch(primary, replica)
        deadline = promoted + 30
        while _first_on(tally, replica.port, promoted) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0)
        tally.stop = True
        for thread in threads:
            thread.join(timeout=20)
        pool.close()
        return _first_on(tally, replica.port, promoted), tally.failed
    finally:
        replica.stop(mode="immediate")
        primary.stop(mode="immediate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    results: dict[str, list[tuple[float | None, int]]] = {"gdbpool": [], "psycopg_pool": []}
    for _ in range(args.rounds):
        results["gdbpool"].append(run_gdbpool(args.writers))
        results["psycopg_pool"].append(run_psycopg_pool(args.writers))
    print(f"failover under {args.writers} writers, {args.rounds} round(s); crash + promote")
    for name, rounds in results.items():
        times = [t for t, _ in rounds if t is not None]
        failed = [f for _, f in rounds]
        first = f"{statistics.median(times):.3f} s" if times else "never (30 s)"
        print(
            f"  {name:13s} first write on the new primary: {first} after the promotion; "
            f"failed interactions: {statistics.median(failed):.0f} (median)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
