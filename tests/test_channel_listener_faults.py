"""NotificationHub when things break: backend killed, server restarted, actors crashing."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import gevent
import greenlet
import psycopg2
from gevent.event import Event
from gevent.queue import Queue

from gdbpool.channel_listener import NotificationHub
from gdbpool.embedded import EmbeddedPostgres
from gdbpool.listen_connection import _ReaderFailed
from gdbpool.notification import Notification, Reconnected

WAIT = 5.0


def terminate(dsn: str, pid: int) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            assert cur.fetchone()[0]
    finally:
        conn.close()


def live_greenlets() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead)


def test_terminated_listen_backend_gives_reconnected_then_new_notifications(dsn: str) -> None:
    with NotificationHub(dsn, reconnect_max=0.5) as hub:
        sub = hub.subscribe("feed")
        other = hub.subscribe("other")
        q: Queue = Queue()
        cancel = Event()
        listening = gevent.spawn(hub.listen_on, q, "feed", cancel)
        gevent.sleep(0)  # let listen_on queue its Subscribe; the ask below answers after it
        assert hub.listening_channels() == ["feed", "other"]
        old_pid = hub._state.backend_pid
        assert old_pid is not None

        terminate(dsn, old_pid)
        gap = sub.get(timeout=WAIT)
        assert isinstance(gap, Reconnected)
        assert set(gap.channels) == {"feed", "other"}
        assert "closed" in gap.reason or "terminat" in gap.reason
        assert isinstance(other.get(timeout=WAIT), Reconnected)
        assert isinstance(q.get(timeout=WAIT), Reconnected)  # listen_on learns of the gap too

        assert hub._state.backend_pid != old_pid
        assert hub.listening_channels() == ["feed", "other"]
        hub.notify("feed", "after")
        got = sub.get(timeout=WAIT)
        assert isinstance(got, Notification)
        assert got.payload == "after"
        assert q.get(timeout=WAIT).payload == "after"
        assert hub.stats()["reconnects"] == 1
        cancel.set()
        listening.join(timeout=WAIT)
        assert listening.successful()


def test_server_restart_gives_reconnected_then_new_notifications(
    make_pg: Callable[..., EmbeddedPostgres],
) -> None:
    server = make_pg()
    with NotificationHub(server.dsn(), reconnect_initial=0.05, reconnect_max=0.5) as hub:
        sub = hub.subscribe("feed")
        hub.notify("feed", "before")
        assert sub.get(timeout=WAIT).payload == "before"  # type: ignore[union-attr]

        server.halt()
        assert hub._state.down.wait(WAIT)  # the loss is noticed while the server is down
        server.start()

        gap = sub.get(timeout=10)
        assert isinstance(gap, Reconnected)
        assert gap.channels == ("feed",)
        hub.notify("feed", "after")  # the stale notify connection is reopened transparently
        got = sub.get(timeout=WAIT)
        assert isinstance(got, Notification)
        assert got.payload == "after"
        assert got.seq == 2  # the sequence carries on across reconnects


def test_subscribing_while_disconnected_listens_after_the_reconnect(
    make_pg: Callable[..., EmbeddedPostgres],
) -> None:
    server = make_pg()
    with NotificationHub(server.dsn(), reconnect_initial=0.05, reconnect_max=0.5) as hub:
        hub.subscribe("first")
        server.halt()
        assert hub._state.down.wait(WAIT)
        late = hub.subscribe("late")  # recorded now, LISTENed on reconnect
        assert hub.channels == ("first", "late")
        server.start()
        assert isinstance(late.get(timeout=10), Reconnected)
        assert hub.listening_channels() == ["first", "late"]
        hub.notify("late", "x")
        assert late.get(timeout=WAIT).payload == "x"  # type: ignore[union-attr]


def test_closing_the_hub_while_reconnecting_leaves_no_greenlet(
    make_pg: Callable[..., EmbeddedPostgres],
) -> None:
    server = make_pg()
    before = live_greenlets()
    hub = NotificationHub(server.dsn(), reconnect_initial=0.05, reconnect_max=0.2)
    sub = hub.subscribe("feed")
    server.halt()
    assert hub._state.down.wait(WAIT)
    hub.close()
    assert sub.closed
    assert live_greenlets() == before


def test_a_crashed_channel_listener_is_restarted_and_reports_a_gap(dsn: str) -> None:
    with NotificationHub(dsn) as hub:
        sub = hub.subscribe("feed")
        route: Any = hub._state.routes["feed"]
        route.ref.tell(object())  # no handler for it: the listener crashes
        gap = sub.get(timeout=WAIT)
        assert isinstance(gap, Reconnected)
        assert gap.reason == "channel listener restarted"
        hub.notify("feed", "after")
        assert sub.get(timeout=WAIT).payload == "after"  # type: ignore[union-attr]
        assert route.ref.is_alive


def test_a_crashed_listen_connection_is_restarted_reconnects_and_reports_a_gap(
    dsn: str,
) -> None:
    with NotificationHub(dsn) as hub:
        sub = hub.subscribe("feed")
        old_pid = hub._state.backend_pid
        assert hub._connection is not None
        hub._connection.tell(_ReaderFailed(RuntimeError("boom")))
        gap = sub.get(timeout=WAIT)
        assert isinstance(gap, Reconnected)
        assert "restarted" in gap.reason
        assert hub._state.backend_pid != old_pid
        hub.notify("feed", "after")
        assert sub.get(timeout=WAIT).payload == "after"  # type: ignore[union-attr]


class BrokenQueue:
    def put_nowait(self, item: object) -> None:
        raise RuntimeError("this queue is broken")


def test_a_subscriber_whose_queue_raises_is_closed_and_the_others_keep_receiving(
    dsn: str,
) -> None:
    with NotificationHub(dsn) as hub:
        good = hub.subscribe("feed")
        broken = gevent.spawn(hub.listen_on, BrokenQueue(), "feed", Event())
        gevent.sleep(0)  # let listen_on queue its Subscribe; the ask below answers after it
        hub.listening_channels()
        hub.notify("feed", "1")
        broken.join(timeout=WAIT)  # its subscription was closed, so listen_on returned
        assert broken.successful()
        hub.notify("feed", "2")
        got = [good.get(timeout=WAIT) for _ in range(2)]
        assert [n.payload for n in got] == ["1", "2"]  # type: ignore[union-attr]
        assert hub.stats()["subscriptions"] == 1


def test_close_while_a_reconnect_is_pending_stops_cleanly(dsn: str) -> None:
    before = live_greenlets()
    hub = NotificationHub(dsn, reconnect_initial=5.0, reconnect_max=5.0)
    hub.subscribe("feed")
    pid = hub._state.backend_pid
    assert pid is not None
    terminate(dsn, pid)
    assert hub._state.down.wait(WAIT)  # a reconnect timer is now pending for ~5 s
    hub.close()
    assert live_greenlets() == before
