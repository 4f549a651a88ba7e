"""Cooperative psycopg2: waits on the server yield to the gevent hub."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gevent
import psycopg2

from gdbpool.green import is_green

ROOT = Path(__file__).resolve().parents[2]


def sleep_on_own_connection(dsn: str, seconds: float) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(%s)", (seconds,))
    finally:
        conn.close()


def test_importing_gdbpool_makes_psycopg2_cooperative() -> None:
    assert is_green()


def test_n_slow_queries_on_n_connections_take_the_time_of_one(dsn: str) -> None:
    n = 10
    # Connect first, so only the queries are timed.
    conns = [psycopg2.connect(dsn) for _ in range(n)]

    def sleep(conn: psycopg2.extensions.connection) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(0.3)")

    try:
        started = time.monotonic()
        gevent.joinall([gevent.spawn(sleep, c) for c in conns], timeout=10, raise_error=True)
        elapsed = time.monotonic() - started
    finally:
        for c in conns:
            c.close()
    assert 0.3 <= elapsed < 0.3 * 3, f"{n} x pg_sleep(0.3) took {elapsed:.2f}s: not cooperative"


def test_other_greenlets_keep_running_while_a_query_waits(dsn: str) -> None:
    ticks: list[float] = []

    def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    ticker = gevent.spawn(tick)
    sleep_on_own_connection(dsn, 0.3)
    ticker.kill()
    assert len(ticks) >= 10
    # A blocking query would leave one gap of 0.3 s; the margin is for a loaded CI box.
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 0.25


def test_importing_psycopg2_before_gdbpool_breaks_nothing(dsn: str) -> None:
    """A connection opened before ``import gdbpool`` becomes cooperative too."""
    script = textwrap.dedent(
        """
        import sys, time
        import psycopg2
        early = psycopg2.connect(sys.argv[1])
        import gevent
        import gdbpool
        from gdbpool.green import is_green
        assert is_green()
        late = psycopg2.connect(sys.argv[1])
        def sleep(conn):
            with conn.cursor() as cur:
                cur.execute("SELECT pg_sleep(0.5)")
        started = time.monotonic()
        gevent.joinall([gevent.spawn(sleep, early), gevent.spawn(sleep, late)], raise_error=True)
        elapsed = time.monotonic() - started
        assert elapsed < 0.9, elapsed  # one after the other would take 1.0 s
        print("ok", round(elapsed, 2))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, dsn],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
