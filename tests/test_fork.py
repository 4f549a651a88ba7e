"""Fork safety (issue 16): what a child inherits through fork() never touches the parent's sockets.

Real processes (gevent's fork, and gunicorn ``-k gevent --preload``) against
the real PostgreSQL from the fixtures.  The rule: docs/design/fork.md.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gevent
import requests
from _fork import Child

from gdbpool import (
    DBConnectionPool,
    DBInteractionPool,
    ForkError,
    Notification,
    NotificationHub,
    NotifySubscriber,
    ZmqNotifyBridge,
)

CALLS = 300


def _echo_run(ipool: DBInteractionPool, base: int) -> list[list[int]]:
    """CALLS concurrent ``SELECT %s::int``, distinct values; the (sent, got) pairs that differ."""
    values = range(base, base + CALLS)
    replies = [ipool.run("SELECT %s::int", (v,), timeout=10) for v in values]
    wrong = []
    for v, reply in zip(values, replies, strict=True):
        got = reply.get(timeout=15)[0][0]
        if got != v:
            wrong.append([v, got])
    return wrong


def _echo_get_put(pool: DBConnectionPool, base: int) -> list[list[int]]:
    def one(v: int) -> int:
        with pool.connection(timeout=10) as conn, conn.cursor() as cur:
            cur.execute("SELECT %s::int", (v,))
            return int(cur.fetchone()[0])

    values = range(base, base + CALLS)
    jobs = [gevent.spawn(one, v) for v in values]
    gevent.joinall(jobs, timeout=20, raise_error=True)
    return [[v, job.value] for v, job in zip(values, jobs, strict=True) if job.value != v]


def _backends(dsn: str, application_name: str) -> int:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    with DBConnectionPool(dsn, 1, name="counter") as pool:
        return _count(pool, sql, application_name)


def _count(pool: DBConnectionPool, sql: str, application_name: str) -> int:
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute(sql, (application_name,))
        return int(cur.fetchone()[0])


def test_interaction_pool_used_before_fork_answers_each_process_its_own_rows(dsn: str) -> None:
    with DBInteractionPool(dsn, pool_size=4) as ipool:
        assert ipool.run("SELECT 1").get(timeout=10) == [(1,)]  # first use before the fork
        child = Child(lambda: _echo_run(ipool, 1_000_000))
        wrong_here = _echo_run(ipool, 0)  # concurrently with the child
        assert child.result() == []
        assert wrong_here == []
        # The child has exited (its copies closed): the parent's sessions are intact.
        assert _echo_run(ipool, 2_000_000) == []
        assert ipool.pool().stats()["connections_lost"] == 0


def test_connection_pool_get_put_before_fork_answers_each_process_its_own_rows(dsn: str) -> None:
    with DBConnectionPool(dsn, 4, name="forked") as pool:
        _echo_get_put(pool, 0)
        child = Child(lambda: _echo_get_put(pool, 1_000_000))
        wrong_here = _echo_get_put(pool, 3_000_000)
        assert child.result() == []
        assert wrong_here == []
        assert _echo_get_put(pool, 2_000_000) == []
        assert pool.stats()["connections_lost"] == 0


def test_a_pool_reopened_in_the_child_opens_its_own_connections(dsn: str) -> None:
    with DBConnectionPool(dsn, 2, name="own", application_name="gdbpool-fork-own") as pool:
        pool.wait(10)

        def in_child() -> int:
            pool.wait(10)  # reopens: min_size fresh connections
            return _backends(dsn, "gdbpool-fork-own")

        assert Child(in_child).result() == 4  # the parent's 2 and the child's 2
        assert _backends(dsn, "gdbpool-fork-own") == 2


def test_a_pool_closed_in_the_child_before_use_stays_closed(dsn: str) -> None:
    with DBConnectionPool(dsn, 1, name="closed") as pool:

        def in_child() -> bool:
            pool.close()
            try:
                pool.get(timeout=1)
            except Exception as exc:
                return type(exc).__name__ == "PoolClosed" and pool.closed
            return False

        assert Child(in_child).result() is True
        assert _echo_get_put(pool, 0) == []  # the parent's pool is not closed


def test_a_hub_in_the_child_receives_notifications_on_subscriptions_made_before(
    dsn: str,
) -> None:
    with NotificationHub(dsn) as hub:
        sub = hub.subscribe("forked")
        hub.notify("forked", "before")
        assert sub.get(timeout=5).payload == "before"

        def in_child() -> list[str]:
            events = [sub.get(timeout=10)]  # the gap: a new LISTEN connection here
            hub.notify("forked", "child")
            events.append(sub.get(timeout=10))
            fresh = hub.subscribe("fresh")
            hub.notify("fresh", "new")
            events.append(fresh.get(timeout=10))
            return [type(e).__name__ + ":" + getattr(e, "payload", "") for e in events]

        child = Child(in_child)
        assert child.result() == ["Reconnected:", "Notification:child", "Notification:new"]
        # The parent's LISTEN session is intact and got the child's NOTIFY too.
        assert sub.get(timeout=5).payload == "child"
        hub.notify("forked", "after")
        assert sub.get(timeout=5).payload == "after"
        assert hub.stats()["reconnects"] == 0


def test_a_bridge_and_a_subscriber_in_the_child_raise_fork_error(dsn: str) -> None:
    with (
        NotificationHub(dsn) as hub,
        ZmqNotifyBridge(hub, ["zfork"], heartbeat_interval=0.1) as bridge,
        NotifySubscriber(bridge.endpoint, ["zfork"]) as sub,
    ):
        sub.wait_connected(10)
        hub.notify("zfork", "one")
        assert _next_notification(sub).payload == "one"

        def in_child() -> list[str]:
            out = []
            for call in (sub.get, sub.wait_connected, lambda: next(iter(sub)), bridge.stats):
                try:
                    call()
                except ForkError as exc:
                    text = str(exc)
                    named = "fork()" in text and "after the fork" in text
                    out.append("ForkError" if named else text)
            sub.close()
            bridge.close()  # no-ops in the child: nothing touches zmq
            return out

        assert Child(in_child).result() == ["ForkError"] * 4
        hub.notify("zfork", "two")  # the parent's bridge and subscriber still work
        assert _next_notification(sub).payload == "two"
        assert bridge.stats()["published"] == 2


def _next_notification(sub: NotifySubscriber) -> Notification:
    while True:
        event = sub.get(timeout=10)
        if isinstance(event, Notification):
            return event


def test_gunicorn_gevent_preload_workers_answer_each_request_its_own_row(dsn: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [
        str(Path(sys.executable).with_name("gunicorn")),
        "-k", "gevent", "-w", "2", "--preload", "--worker-connections", "200",
        "-b", f"127.0.0.1:{port}", "--chdir", str(Path(__file__).parent / "support"),
        "_fork_wsgi:app",
    ]  # fmt: skip
    env = {**os.environ, "GDBPOOL_TEST_DSN": dsn}
    server = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(url, params={"v": 0}, timeout=2)
                break
            except requests.ConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, "gunicorn not up"
                time.sleep(0.05)  # a process starting up: there is nothing to wait on

        def ask(value: int) -> tuple[int, str]:
            with requests.Session() as session:
                return value, session.get(url, params={"v": value}, timeout=20).text

        with ThreadPoolExecutor(16) as clients:
            answers = list(clients.map(ask, range(1, 401)))
        wrong = [(v, text) for v, text in answers if text.split()[0] != str(v)]
        assert wrong == []
        assert len({text.split()[1] for _, text in answers}) == 2  # both workers answered
    finally:
        server.terminate()
        try:
            _, err = server.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate()
    assert b"Traceback" not in err, err.decode(errors="replace")[-3000:]
