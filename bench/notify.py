"""Benchmark: NotificationHub against a raw psycopg2 LISTEN loop on the same server.

Usage::

    .venv/bin/python bench/notify.py [--notifications 200000] [--fanout-notifications 20000]
                                     [--subscribers 100] [--rate 1000] [--seconds 5] [--repeat 3]

Starts its own EmbeddedPostgres.  Notifications are sent by a separate
process (this script with ``--send``, plain psycopg2, no gevent) so the sender
never competes with the receiver's event loop.

* **Throughput** (notifications/s): the receiver LISTENs; the sender commits
  N notifications (distinct payloads, 10,000 per transaction) while the
  receiver's process is blocked, so they queue up server-side; then the clock
  starts and the receiver drains them.  Measured: N / time until the last one
  reached the subscriber (for 100 subscribers: until every subscriber had all
  N).  Subscriptions are sized to hold N, so nothing is dropped (checked).
* **Durable vs plain**: sender throughput with ``pg_notify`` and with
  ``gdbpool.notify()`` (a log row per event), the live delivery rate of a
  durable subscription, and the cost of the read-your-writes token (one
  WAL-position read per received batch, timed alone).
* **Latency** at a fixed rate: the sender calls ``pg_notify`` ``--rate`` times
  a second (autocommit), each payload carrying ``CLOCK_MONOTONIC`` at send
  time; the receiver records arrival - send.  p50/p99 over ``--seconds``.

The raw loop (the ceiling) is ``select()`` on the socket, ``conn.poll()``,
count ``conn.notifies``: the least any LISTEN client can do.  Each figure is
the median of ``--repeat`` runs; ratios are hub / raw.
"""

from __future__ import annotations

import argparse
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# bench/ holds a script named actors.py: keep this directory off the path so that
# ``import actors`` finds the package (the repository root goes there instead).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

CHANNEL = "bench"
_BATCH = 10_000  # notifications per transaction in a burst
_LIVE_BATCH = 100  # ... in the live stream


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)  # system-wide: comparable across processes


# -- sender (child process, no gevent) ----------------------------------------------


def send(dsn: str, mode: str, count: int, rate: float) -> None:
    import psycopg2  # plain, blocking psycopg2: this process does nothing else

    conn = psycopg2.connect(dsn)
    cur = conn.cursor()
    if mode in ("burst", "live", "durable"):
        size = _BATCH if mode == "burst" else _LIVE_BATCH
        function = "gdbpool.notify" if mode == "durable" else "pg_notify"
        for lo in range(1, count + 1, size):
            hi = min(count, lo + size - 1)
            cur.execute(
                f"SELECT {function}(%s, g::text) FROM generate_series(%s, %s) g", (CHANNEL, lo, hi)
            )
            conn.commit()
    else:
        conn.autocommit = True
        interval = 1.0 / rate
        due = now()
        for _ in range(count):
            delay = due - now()
            if delay > 0:
                time.sleep(delay)
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, repr(now())))
            due += interval
    conn.close()


def run_sender(dsn: str, mode: str, count: int, rate: float = 0.0) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--send",
        mode,
        "--dsn",
        dsn,
        "--count",
        str(count),
        "--send-rate",
        str(rate),
    ]
    return subprocess.Popen(argv)


# -- receivers ------------------------------------------------------------------------


def raw_listener(dsn: str) -> Any:
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    conn.cursor().execute(f"LISTEN {CHANNEL}")
    return conn


def raw_throughput(dsn: str, n: int, live: bool = False) -> float:
    conn = raw_listener(dsn)
    start = time.perf_counter()
    if live:
        sender = run_sender(dsn, "live", n)
    else:
        run_sender(dsn, "burst", n).wait()  # blocks this process: notifications queue up
        start = time.perf_counter()
    received = 0
    while received < n:
        select.select([conn], [], [], 10.0)
        conn.poll()
        notifies = conn.notifies
        received += len(notifies)
        del notifies[:]
    elapsed = time.perf_counter() - start
    if live:
        sender.wait()
    conn.close()
    return n / elapsed


def raw_latency(dsn: str, rate: float, seconds: float) -> list[float]:
    conn = raw_listener(dsn)
    n = int(rate * seconds)
    sender = run_sender(dsn, "paced", n, rate)
    latencies: list[float] = []
    while len(latencies) < n:
        select.select([conn], [], [], 10.0)
        conn.poll()
        arrived = now()
        latencies += [arrived - float(x.payload) for x in conn.notifies]
        del conn.notifies[:]
    sender.wait()
    conn.close()
    return latencies


def hub_throughput(dsn: str, n: int, subscribers: int, live: bool = False) -> tuple[float, int]:
    import gevent

    from gdbpool import NotificationHub

    with NotificationHub(dsn) as hub:
        subs = [hub.subscribe(CHANNEL, maxsize=n) for _ in range(subscribers)]

        def consume(sub: Any) -> None:
            get = sub.get
            for _ in range(n):
                get(timeout=30)

        start = time.perf_counter()
        if live:
            sender = run_sender(dsn, "live", n)
        else:
            run_sender(dsn, "burst", n).wait()  # blocks the whole loop: notifications queue up
            start = time.perf_counter()
        gevent.joinall([gevent.spawn(consume, s) for s in subs], raise_error=True)
        elapsed = time.perf_counter() - start
        if live:
            sender.wait()
        return n / elapsed, sum(s.dropped for s in subs)


def sender_rate(dsn: str, mode: str, n: int) -> float:
    """Notifications/s one sender commits (``live`` or ``durable``), nobody listening."""
    start = time.perf_counter()
    run_sender(dsn, mode, n).wait()
    return n / (time.perf_counter() - start)


def durable_delivery(dsn: str, n: int) -> float:
    """Notifications/s reaching a durable subscription while the sender runs."""
    import gevent

    from gdbpool import NotificationHub

    with NotificationHub(dsn) as hub:
        sub = hub.subscribe(CHANNEL, maxsize=n, durable=True)
        start = time.perf_counter()
        sender = run_sender(dsn, "durable", n)
        got = 0
        with gevent.Timeout(60):
            while got < n:
                got += type(sub.get()).__name__ == "Notification"
        elapsed = time.perf_counter() - start
        sender.wait()
        return n / elapsed


def token_cost(dsn: str, n: int = 2000) -> float:
    """Microseconds of one WAL-position read (what the hub pays once per received batch)."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        start = time.perf_counter()
        for _ in range(n):
            cur.execute("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint")
            cur.fetchone()
        elapsed = time.perf_counter() - start
    conn.close()
    return elapsed / n * 1e6


def hub_latency(dsn: str, rate: float, seconds: float) -> list[float]:
    from gdbpool import NotificationHub

    n = int(rate * seconds)
    latencies: list[float] = []
    with NotificationHub(dsn) as hub, hub.subscribe(CHANNEL) as sub:
        sender = run_sender(dsn, "paced", n, rate)
        for _ in range(n):
            item = sub.get(timeout=30)
            latencies.append(now() - float(item.payload))
        sender.wait()
    return latencies


# -- report ---------------------------------------------------------------------------


def median_of(repeat: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(repeat))


def percentiles(samples: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return q[49] * 1e3, q[98] * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notifications", type=int, default=200_000)
    parser.add_argument("--fanout-notifications", type=int, default=20_000)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--send", choices=["burst", "live", "paced", "durable"], help=argparse.SUPPRESS
    )
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--send-rate", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.send:
        send(args.dsn, args.send, args.count, args.send_rate)
        return

    import gdbpool  # noqa: F401 - cooperative psycopg2, as applications get it
    from gdbpool import EmbeddedPostgres, configure_logging

    configure_logging(level="WARNING")
    n, fan_n, subs, r = args.notifications, args.fanout_notifications, args.subscribers, args.repeat
    with EmbeddedPostgres() as pg:
        dsn = pg.dsn()
        print(
            f"PostgreSQL {pg.psql('SHOW server_version')}, python {sys.version.split()[0]}, "
            f"median of {r} runs"
        )
        raw = median_of(r, lambda: raw_throughput(dsn, n))
        drops: list[int] = []

        def hub_run(count: int, k: int, live: bool = False) -> float:
            rate, dropped = hub_throughput(dsn, count, k, live)
            drops.append(dropped)
            return rate

        raw_live = median_of(r, lambda: raw_throughput(dsn, n, live=True))
        one_live = median_of(r, lambda: hub_run(n, 1, live=True))

        one = median_of(r, lambda: hub_run(n, 1))
        raw_fan = median_of(r, lambda: raw_throughput(dsn, fan_n))
        many = median_of(r, lambda: hub_run(fan_n, subs))
        print(
            f"\nthroughput, live stream of {n:,} ({_LIVE_BATCH} per transaction, "
            "sender running; notifications/s reaching the subscriber)"
        )
        print(f"  raw psycopg2 loop            {raw_live:>12,.0f}")
        print(f"  hub, 1 subscriber            {one_live:>12,.0f}   {one_live / raw_live:.2f}x raw")
        print(f"throughput, drain of a backlog of {n:,} (client-bound: the receiver's own cost)")
        print(f"  raw psycopg2 loop            {raw:>12,.0f}")
        print(f"  hub, 1 subscriber            {one:>12,.0f}   {one / raw:.2f}x raw")
        print(f"throughput, drain of a backlog of {fan_n:,} to {subs} subscribers")
        print(f"  raw psycopg2 loop (1 reader) {raw_fan:>12,.0f}")
        print(
            f"  hub, {subs} subscribers       {many:>12,.0f}   {many / raw_fan:.2f}x raw "
            f"({many * subs:,.0f} deliveries/s)"
        )
        print(f"  dropped: {sum(drops)}")

        from gdbpool import DBInteractionPool

        with DBInteractionPool(dsn, pool_size=1) as ipool:
            ipool.install_durable()
        plain_send = median_of(r, lambda: sender_rate(dsn, "live", n))
        durable_send = median_of(r, lambda: sender_rate(dsn, "durable", n))
        durable_live = median_of(r, lambda: durable_delivery(dsn, n))
        print(f"\ndurable vs plain NOTIFY ({n:,}, {_LIVE_BATCH} per transaction)")
        print(f"  sender, pg_notify            {plain_send:>12,.0f}/s")
        print(
            f"  sender, gdbpool.notify       {durable_send:>12,.0f}/s   "
            f"{durable_send / plain_send:.2f}x plain"
        )
        print(
            f"  durable subscription, live   {durable_live:>12,.0f}/s   "
            f"{durable_live / one_live:.2f}x plain hub"
        )
        print(f"  token: one WAL-position read per received batch, {token_cost(dsn):.0f} us")

        raw_lat = raw_latency(dsn, args.rate, args.seconds)
        hub_lat = hub_latency(dsn, args.rate, args.seconds)
        (rp50, rp99), (hp50, hp99) = percentiles(raw_lat), percentiles(hub_lat)
        print(
            f"\nlatency pg_notify -> subscriber at {args.rate:,.0f}/s for {args.seconds:g} s (ms)"
        )
        print(f"  raw psycopg2 loop            p50 {rp50:6.3f}   p99 {rp99:6.3f}")
        print(
            f"  hub, 1 subscriber            p50 {hp50:6.3f}   p99 {hp99:6.3f}   "
            f"(+{hp50 - rp50:.3f} / +{hp99 - rp99:.3f})"
        )


if __name__ == "__main__":
    main()
