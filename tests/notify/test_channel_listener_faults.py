"""NotificationHub when things break: backend killed, server restarted, actors crashing."""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import greenlet
import psycopg2
import pytest
from _waits import wait_for
from gevent.event import Event
from gevent.queue import Queue
from tcp_proxy import TcpProxy

from gdbpool import (
    ConfigurationError,
    EmbeddedPostgres,
    Notification,
    NotificationError,
    NotificationHub,
    NotifySubscriber,
    Reconnected,
    ZmqNotifyBridge,
)
from gdbpool.green import keepalive_options
from gdbpool.notify.listen_connection import _ReaderFailed

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


def subscribers(hub: NotificationHub, channel: str) -> int:
    """Subscriptions the LISTEN connection's channel table holds for ``channel``."""
    route = hub._state.routes.get(channel)
    return 0 if route is None else route.count


def live_greenlets() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead)


def test_terminated_listen_backend_gives_reconnected_then_new_notifications(dsn: str) -> None:
    with NotificationHub(dsn, reconnect_max=0.5) as hub:
        sub = hub.subscribe("feed")
        other = hub.subscribe("other")
        q: Queue = Queue()
        cancel = Event()
        listening = gevent.spawn(hub.listen_on, q, "feed", cancel)
        assert wait_for(lambda: subscribers(hub, "feed") == 2, WAIT)  # listen_on's too
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
        assert wait_for(lambda: subscribers(hub, "feed") == 2, WAIT)
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


@pytest.fixture
def proxy(pg_primary: EmbeddedPostgres) -> Iterator[TcpProxy]:
    p = TcpProxy(pg_primary.port).start()
    try:
        yield p
    finally:
        p.close()


def test_a_blackholed_listen_connection_is_detected_by_the_idle_check_and_reconnected(
    dsn: str, proxy: TcpProxy
) -> None:
    with NotificationHub(
        proxy.dsn(dsn),
        idle_check=0.3,
        connect_timeout=1.0,
        reconnect_initial=0.05,
        reconnect_max=0.3,
    ) as hub:
        sub = hub.subscribe("feed")
        hub.notify("feed", "before")
        assert sub.get(timeout=WAIT).payload == "before"  # type: ignore[union-attr]
        old_pid = hub._state.backend_pid

        proxy.set_mode("blackhole")  # the socket stays open, nothing comes back
        assert hub._state.down.wait(WAIT)  # ~0.3 s idle + 0.3 s for SELECT 1's answer
        proxy.set_mode("pass")

        gap = sub.get(timeout=10)
        assert isinstance(gap, Reconnected)
        assert "idle check" in gap.reason
        assert hub._state.backend_pid != old_pid
        hub.notify("feed", "after")
        got = sub.get(timeout=WAIT)
        assert isinstance(got, Notification)
        assert got.payload == "after"
        assert hub.stats()["reconnects"] == 1


def test_a_healthy_idle_listen_connection_passes_the_idle_check_and_stays(dsn: str) -> None:
    with NotificationHub(dsn, idle_check=0.1) as hub:
        sub = hub.subscribe("feed")
        pid = hub._state.backend_pid

        def checked() -> bool:  # the idle check's SELECT 1 ran on the LISTEN backend
            return backend_query(dsn, pid) == "SELECT 1"

        assert wait_for(checked, WAIT)
        with pytest.raises(gevent.Timeout):  # several more idle checks, no gap event
            sub.get(timeout=0.5)
        assert hub._state.backend_pid == pid
        assert hub.stats()["reconnects"] == 0
        hub.notify("feed", "still here")
        assert sub.get(timeout=WAIT).payload == "still here"  # type: ignore[union-attr]


def test_idle_check_must_be_positive_or_none(dsn: str) -> None:
    with pytest.raises(ConfigurationError, match="idle_check"):
        NotificationHub(dsn, idle_check=0)
    with NotificationHub(dsn, idle_check=None) as hub:
        assert hub._state.idle_check is None


def test_the_listen_connection_has_tcp_keepalives(dsn: str) -> None:
    with NotificationHub(dsn) as hub:
        hub.subscribe("feed")
        pid = hub._state.backend_pid
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT client_port FROM pg_stat_activity WHERE pid = %s", (pid,))
                (port,) = cur.fetchone()
        finally:
            conn.close()
        sock = client_socket(port)
        try:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        finally:
            sock.close()


def test_keepalive_settings_in_the_dsn_win() -> None:
    assert keepalive_options("host=db keepalives_idle=7") == {
        "keepalives": "1",
        "keepalives_interval": "10",
        "keepalives_count": "3",
    }


def test_the_hub_state_repr_does_not_show_the_password(dsn: str) -> None:
    password = psycopg2.extensions.parse_dsn(dsn)["password"]
    with NotificationHub(dsn) as hub:
        assert password not in repr(hub._state)
        assert "dsn" not in repr(hub._state)


def backend_query(dsn: str, pid: int | None) -> str | None:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,))
            row = cur.fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


def client_socket(port: int) -> socket.socket:
    """A duplicate of this process's TCP socket whose local port is ``port``."""
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.getsockname()[1] == port:
                return sock
        except OSError:
            pass
        sock.close()
    raise AssertionError(f"no socket with local port {port} in this process")


def test_subscribe_gives_up_after_command_timeout_when_the_server_does_not_answer(
    dsn: str, proxy: TcpProxy
) -> None:
    with NotificationHub(proxy.dsn(dsn), command_timeout=0.5, idle_check=None) as hub:
        hub.subscribe("first")
        proxy.set_mode("blackhole")  # LISTEN is sent, no answer ever comes back
        started = gevent.get_hub().loop.now()
        with pytest.raises(NotificationError, match=r"within 0\.5 s \(command_timeout\)"):
            hub.subscribe("second")
        assert gevent.get_hub().loop.now() - started < 3
        proxy.set_mode("pass")


def test_resets_during_the_idle_check_never_close_the_hub(dsn: str, proxy: TcpProxy) -> None:
    # More resets than the hub supervisor's restart limit (3 within 5 s): each
    # one is a lost connection to reconnect, not a crash that counts to it.
    with NotificationHub(
        proxy.dsn(dsn), idle_check=0.2, reconnect_initial=0.02, reconnect_max=0.05
    ) as hub:
        sub = hub.subscribe("feed")
        for round_ in range(5):
            proxy.held = 0
            proxy.set_mode("blackhole")
            assert wait_for(lambda: proxy.held > 0, WAIT)  # the idle check's SELECT 1 is held
            proxy.set_mode("drop")  # ... and its connection is reset under it
            proxy.set_mode("pass")
            gap = sub.get(timeout=WAIT)
            assert isinstance(gap, Reconnected), (round_, gap)
            assert not hub.closed
        hub.notify("feed", "still open")
        got = sub.get(timeout=WAIT)
        assert isinstance(got, Notification) and got.payload == "still open"


def test_terminating_the_listen_backend_past_the_restart_limit_never_closes_the_hub(
    dsn: str,
) -> None:
    with NotificationHub(dsn, reconnect_initial=0.02, reconnect_max=0.05) as hub:
        sub = hub.subscribe("feed")
        for _ in range(6):
            pid = hub._state.backend_pid
            terminate(dsn, pid)
            assert isinstance(sub.get(timeout=WAIT), Reconnected)
            assert wait_for(lambda old=pid: hub._state.backend_pid != old, WAIT)
        assert not hub.closed
        hub.notify("feed", "after")
        got = sub.get(timeout=WAIT)
        assert isinstance(got, Notification) and got.payload == "after"


def test_a_bridge_keeps_publishing_through_resets_past_the_restart_limit(
    dsn: str, proxy: TcpProxy
) -> None:
    with (
        NotificationHub(
            proxy.dsn(dsn), idle_check=0.2, reconnect_initial=0.02, reconnect_max=0.05
        ) as hub,
        ZmqNotifyBridge(hub, ["feed"], heartbeat_interval=0.1) as bridge,
        NotifySubscriber(bridge.endpoint, ["feed"]) as sub,
    ):
        sub.wait_connected(timeout=WAIT)
        for round_ in range(5):
            proxy.held = 0
            proxy.set_mode("blackhole")
            assert wait_for(lambda: proxy.held > 0, WAIT)
            proxy.set_mode("drop")
            proxy.set_mode("pass")
            event = sub.get(timeout=WAIT)
            assert isinstance(event, Reconnected), (round_, event)
        assert not bridge.closed and not hub.closed
        hub.notify("feed", "still bridged")
        got = sub.get(timeout=WAIT)
        assert isinstance(got, Notification) and got.payload == "still bridged"
