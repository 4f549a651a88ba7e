"""Cooperative psycopg2: waits on the server yield to the gevent hub."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gevent
import psycopg2
import pytest
from psycopg2.extensions import parse_dsn
from tcp_proxy import TcpProxy

from gdbpool.green import is_green

ROOT = Path(__file__).resolve().parents[2]


def sleep_on_own_connection(dsn: str, seconds: float) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(%s)", (seconds,))
    finally:
        conn.close()


def test_the_test_session_made_psycopg2_cooperative() -> None:
    assert is_green()  # conftest calls make_psycopg_green()


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
    """A connection opened before make_psycopg_green() becomes cooperative too."""
    script = textwrap.dedent(
        """
        import sys, time
        import psycopg2
        early = psycopg2.connect(sys.argv[1])
        import gevent
        import gdbpool
        from gdbpool.green import is_green
        gdbpool.make_psycopg_green()
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


@contextlib.contextmanager
def env_vars(values: dict[str, str]):
    """Set environment variables for the block (libpq reads them at connect time)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _child(script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **env},
    )


def test_importing_gdbpool_leaves_psycopg2_alone_until_a_pool_is_created(dsn: str) -> None:
    script = """
    import sys
    from psycopg2 import extensions
    import gdbpool
    from gdbpool.green import gevent_wait_callback
    assert extensions.get_wait_callback() is None, "import installed a callback"
    pool = gdbpool.DBConnectionPool(sys.argv[1], 1)
    assert extensions.get_wait_callback() is gevent_wait_callback
    pool.close()
    print("ok")
    """
    out = _child(script, dsn)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ok\n"


def test_gdbpool_no_green_leaves_psycopg2_alone_and_make_psycopg_green_opts_in(dsn: str) -> None:
    script = """
    import sys
    from psycopg2 import extensions
    import gdbpool
    from gdbpool.green import gevent_wait_callback
    pool = gdbpool.DBConnectionPool(sys.argv[1], 1)
    assert extensions.get_wait_callback() is None, "GDBPOOL_NO_GREEN=1 was ignored"
    pool.close()
    gdbpool.make_psycopg_green()
    assert extensions.get_wait_callback() is gevent_wait_callback
    print("ok")
    """
    out = _child(script, dsn, GDBPOOL_NO_GREEN="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ok\n"


def test_a_callback_installed_by_someone_else_is_never_silently_replaced(dsn: str) -> None:
    script = """
    import sys
    import psycopg2
    from psycopg2 import extensions
    from gevent.socket import wait_read, wait_write
    def theirs(conn):
        while True:
            state = conn.poll()
            if state == extensions.POLL_OK:
                return
            (wait_read if state == extensions.POLL_READ else wait_write)(conn.fileno())
    extensions.set_wait_callback(theirs)
    import gdbpool
    from gdbpool.green import gevent_wait_callback
    pool = gdbpool.DBConnectionPool(sys.argv[1], 1)
    assert extensions.get_wait_callback() is theirs, "a pool replaced the callback"
    pool.close()
    try:
        gdbpool.make_psycopg_green()
    except gdbpool.ConfigurationError as exc:
        assert "theirs" in str(exc), exc
    else:
        raise AssertionError("make_psycopg_green replaced it silently")
    assert extensions.get_wait_callback() is theirs
    gdbpool.make_psycopg_green(replace=True)
    assert extensions.get_wait_callback() is gevent_wait_callback
    print("ok")
    """
    out = _child(script, dsn)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ok\n"


@pytest.mark.parametrize("where", ["dsn", "env"])
def test_connect_timeout_is_honoured_under_the_callback(dsn: str, where: str) -> None:
    proxy = TcpProxy(int(parse_dsn(dsn)["port"])).start()
    try:
        proxy.set_mode("blackhole")
        target = proxy.dsn(dsn)
        if where == "dsn":
            target += " connect_timeout=2"
            env = {}
        else:
            env = {"PGCONNECT_TIMEOUT": "2"}
        started = time.monotonic()
        with env_vars(env), pytest.raises(psycopg2.OperationalError, match="timeout expired"):
            psycopg2.connect(target)
        elapsed = time.monotonic() - started
    finally:
        proxy.close()
    assert 1.9 <= elapsed < 3.0, f"connect_timeout=2 took {elapsed:.2f}s"


def test_a_connect_timeout_leaves_the_queries_unbounded(dsn: str) -> None:
    conn = psycopg2.connect(dsn + " connect_timeout=2")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(2.3), 1")  # longer than connect_timeout: not cut
            assert cur.fetchone() == ("", 1)
    finally:
        conn.close()
