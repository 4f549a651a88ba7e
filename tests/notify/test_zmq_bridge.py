"""The ZeroMQ bridge across processes: a bridge child on a real NotificationHub and
PostgreSQL, subscribers in this process, notifications sent with pg_notify.

Synchronisation is by messages only: a subscriber first waits for a bridge
heartbeat, then probes with notifications until one arrives (the bounded
slow-joiner handshake), and only then does a test start counting.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest
import zmq

from gdbpool import BridgeRestarted, BridgeSilent, Gap, Notification, NotifySubscriber, Reconnected
from gdbpool.server.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "support" / "_bridge_proc.py"


class BridgeProcess:
    """A bridge child process; ``stop()`` closes its stdin, ``kill()`` SIGKILLs it."""

    def __init__(self, dsn: str, channels: list[str], *options: str) -> None:
        argv = [sys.executable, str(SCRIPT), "--dsn", dsn, "--heartbeat", "0.1", *options]
        for channel in channels:
            argv += ["--channel", channel]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        # a file, not a pipe: a chatty child never blocks; closed in stop()
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.kill()
            self.stderr.seek(0)
            err = self.stderr.read().decode(errors="replace")
            raise RuntimeError(f"bridge child did not start: {err[-2000:]}")
        info = json.loads(line)
        self.endpoint: str = info["endpoint"]
        self.source: str = info["source"]
        self.replay: str = info.get("replay", "")

    def stop(self) -> int:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.stderr.close()
        return self.proc.wait(timeout=5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=5)


@pytest.fixture
def start_bridge() -> Iterator[Callable[..., BridgeProcess]]:
    started: list[BridgeProcess] = []

    def start(dsn: str, channels: list[str], *options: str) -> BridgeProcess:
        bridge = BridgeProcess(dsn, channels, *options)
        started.append(bridge)
        return bridge

    yield start
    for bridge in started:
        bridge.stop()


@pytest.fixture
def notifier(dsn: str) -> Iterator[Callable[[str, list[str]], None]]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True

    def send(channel: str, payloads: list[str]) -> None:
        """All payloads in one transaction (delivered together at commit)."""
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) WITH ORDINALITY AS t(p, i)"
                " ORDER BY i",
                (channel, payloads),
            )

    yield send
    conn.close()


def handshake(
    sub: NotifySubscriber, send: Callable[[str, list[str]], None], channel: str
) -> Notification:
    """Probe until a notification gets through (bounded); return the last probe sent.

    Waiting for the last probe (not just any) leaves no stray probe behind to
    be mistaken for the test's own notifications.
    """
    sub.wait_connected(timeout=10)
    deadline = time.monotonic() + 10
    n = 0
    while time.monotonic() < deadline:
        n += 1
        send(channel, [f"probe-{n}"])
        try:
            while True:
                event = sub.get(timeout=0.2)
                if isinstance(event, Notification) and event.payload.startswith("probe-"):
                    last = f"probe-{n}"
                    while not (isinstance(event, Notification) and event.payload == last):
                        event = sub.get(timeout=5)
                    return event
        except TimeoutError:
            continue
    raise AssertionError("no notification reached the subscriber within 10 s")


def events_until(
    sub: NotifySubscriber, done: Callable[[object], bool], timeout: float = 10
) -> list[object]:
    deadline = time.monotonic() + timeout
    events: list[object] = []
    while True:
        events.append(sub.get(timeout=max(0.01, deadline - time.monotonic())))
        if done(events[-1]):
            return events


def test_thousand_notifications_arrive_in_order_with_contiguous_seqs(
    start_bridge: Callable[..., BridgeProcess],
    notifier: Callable[[str, list[str]], None],
    dsn: str,
) -> None:
    bridge = start_bridge(dsn, ["orders"])
    with NotifySubscriber(bridge.endpoint, ["orders"], green=False) as sub:
        probe = handshake(sub, notifier, "orders")
        notifier("orders", [f"n{i}" for i in range(1000)])
        events = [sub.get(timeout=10) for _ in range(1000)]
    assert all(isinstance(e, Notification) for e in events)
    notes = [e for e in events if isinstance(e, Notification)]
    assert [n.payload for n in notes] == [f"n{i}" for i in range(1000)]
    assert [n.seq for n in notes] == list(range(probe.seq + 1, probe.seq + 1001))
    assert {n.source for n in notes} == {bridge.source}
    assert all(n.pid > 0 and n.channel == "orders" for n in notes)


def test_raw_pyzmq_sub_with_a_topic_filter_gets_only_its_channel(
    start_bridge: Callable[..., BridgeProcess],
    notifier: Callable[[str, list[str]], None],
    dsn: str,
) -> None:
    bridge = start_bridge(dsn, ["alpha", "beta"])
    ctx = zmq.Context()
    raw = ctx.socket(zmq.SUB)
    raw.linger = 0
    raw.subscribe(b"alpha")
    raw.connect(bridge.endpoint)
    try:
        deadline = time.monotonic() + 10
        while not raw.poll(200):  # slow joiner: probe until something arrives
            assert time.monotonic() < deadline
            notifier("alpha", ["probe"])
        while raw.poll(0):
            raw.recv_multipart()
        notifier("beta", [f"b{i}" for i in range(20)])
        notifier("alpha", [f"a{i}" for i in range(20)])
        received = []
        for _ in range(20):
            assert raw.poll(10_000)
            received.append(raw.recv_multipart())
    finally:
        ctx.destroy(linger=0)
    # beta was published first on the same connection: had it passed, it would be here.
    assert {frames[0] for frames in received} == {b"alpha"}
    assert [f[2] for f in received] == [f"a{i}".encode() for i in range(20)]
    header = json.loads(received[0][1])
    assert header["v"] == 1 and header["type"] == "notify" and header["src"] == bridge.source


def test_a_subscriber_that_starts_late_sees_no_false_gap(
    start_bridge: Callable[..., BridgeProcess],
    notifier: Callable[[str, list[str]], None],
    dsn: str,
) -> None:
    bridge = start_bridge(dsn, ["orders"])
    with NotifySubscriber(bridge.endpoint, ["orders"]) as early:
        handshake(early, notifier, "orders")
        notifier("orders", [f"before{i}" for i in range(100)])
        events_until(early, lambda e: isinstance(e, Notification) and e.payload == "before99")
    with NotifySubscriber(bridge.endpoint, ["orders"]) as late:
        handshake(late, notifier, "orders")
        notifier("orders", [f"after{i}" for i in range(50)])
        events = events_until(
            late, lambda e: isinstance(e, Notification) and e.payload == "after49"
        )
    assert not [e for e in events if isinstance(e, Gap)]
    assert len([e for e in events if isinstance(e, Notification)]) == 50


def test_a_gap_is_reported_when_the_subscriber_stalls_past_the_high_water_mark(
    start_bridge: Callable[..., BridgeProcess],
    notifier: Callable[[str, list[str]], None],
    dsn: str,
) -> None:
    bridge = start_bridge(dsn, ["orders"], "--sndhwm", "10")
    total = 5000
    with NotifySubscriber(bridge.endpoint, ["orders"], rcvhwm=10, replay=False) as sub:
        probe = handshake(sub, notifier, "orders")
        big = "x" * 7000  # 35 MB: far beyond what loopback TCP buffers hold (about 10 MB)
        notifier("orders", [f"{i}:{big}" for i in range(total)])  # while nobody reads
        last = probe.seq + total
        received = missed = 0
        deadline = time.monotonic() + 12
        covered = probe.seq
        while covered < last:  # a heartbeat accounts for a dropped tail
            event = sub.get(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(event, Notification):
                received += 1
                covered = event.seq
            elif isinstance(event, Gap):
                missed += event.missed
                covered = event.got - 1
    assert missed > 0
    assert received + missed == total


def test_a_killed_and_restarted_bridge_is_reported_and_followed(
    start_bridge: Callable[..., BridgeProcess],
    notifier: Callable[[str, list[str]], None],
    dsn: str,
) -> None:
    bind = f"tcp://127.0.0.1:{free_port()}"
    first = start_bridge(dsn, ["orders"], "--bind", bind)
    with NotifySubscriber(bind, ["orders"], heartbeat_timeout=30) as sub:
        handshake(sub, notifier, "orders")
        first.kill()
        second = start_bridge(dsn, ["orders"], "--bind", bind)
        assert second.source != first.source
        restarted = events_until(sub, lambda e: isinstance(e, BridgeRestarted))[-1]
        assert restarted == BridgeRestarted(first.source, second.source, bind)
        probe = handshake(sub, notifier, "orders")
        assert probe.source == second.source
        notifier("orders", ["after-restart"])
        after = events_until(sub, lambda e: isinstance(e, Notification))[-1]
        assert isinstance(after, Notification)
        assert (after.payload, after.seq) == ("after-restart", probe.seq + 1)


def test_a_bridge_that_stops_heartbeating_is_reported_silent(
    start_bridge: Callable[..., BridgeProcess],
    notifier: Callable[[str, list[str]], None],
    dsn: str,
) -> None:
    bridge = start_bridge(dsn, ["orders"])
    with NotifySubscriber(bridge.endpoint, ["orders"], heartbeat_timeout=0.5) as sub:
        sub.wait_connected(timeout=10)
        bridge.proc.send_signal(signal.SIGSTOP)  # alive but mute
        try:
            started = time.monotonic()
            silent = events_until(sub, lambda e: isinstance(e, BridgeSilent), timeout=5)[-1]
            assert isinstance(silent, BridgeSilent)
            assert silent.source == bridge.source
            assert 0.4 < time.monotonic() - started < 3
        finally:
            bridge.proc.send_signal(signal.SIGCONT)


def test_curve_admits_an_allowed_key_and_refuses_another(
    start_bridge: Callable[..., BridgeProcess],
    notifier: Callable[[str, list[str]], None],
    dsn: str,
) -> None:
    server_public, server_secret = zmq.curve_keypair()
    good_public, good_secret = zmq.curve_keypair()
    bad_public, bad_secret = zmq.curve_keypair()
    # "--opt=KEY": a z85 key may start with "-", which argparse would take for an option.
    bridge = start_bridge(
        dsn,
        ["orders"],
        f"--curve-secret={server_secret.decode()}",
        f"--curve-public={server_public.decode()}",
        f"--allow={good_public.decode()}",
    )
    with (
        NotifySubscriber(
            bridge.endpoint,
            ["orders"],
            curve_server_key=server_public,
            curve_public_key=good_public,
            curve_secret_key=good_secret,
        ) as good,
        NotifySubscriber(
            bridge.endpoint,
            ["orders"],
            curve_server_key=server_public,
            curve_public_key=bad_public,
            curve_secret_key=bad_secret,
        ) as bad,
    ):
        handshake(good, notifier, "orders")
        notifier("orders", ["secret"])
        got = events_until(good, lambda e: isinstance(e, Notification))[-1]
        assert isinstance(got, Notification)
        assert got.payload == "secret"
        with pytest.raises(TimeoutError):  # never hears a heartbeat, let alone a notification
            bad.wait_connected(timeout=1.0)
        with pytest.raises(TimeoutError):
            bad.get(timeout=0.2)


def test_a_bridge_given_a_bad_address_exits_with_a_clear_error(dsn: str) -> None:
    argv = [
        sys.executable,
        str(SCRIPT),
        "--dsn",
        dsn,
        "--channel",
        "orders",
        "--bind",
        "tcp://no-such-interface:99999",
    ]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "cannot bind the bridge's PUB socket to 'tcp://no-such-interface:99999'" in proc.stderr


def test_a_terminated_listen_backend_in_the_bridge_gives_reconnected_then_notifications(
    start_bridge: Callable[..., BridgeProcess],
    notifier: Callable[[str, list[str]], None],
    dsn: str,
) -> None:
    bridge = start_bridge(dsn, ["orders"])
    with NotifySubscriber(bridge.endpoint, ["orders"], green=False) as sub:
        probe = handshake(sub, notifier, "orders")
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:  # the child's hub: the only LISTEN backend on this db
                cur.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database()"
                    " AND application_name = 'gdbpool-listener'"
                )
                assert [row[0] for row in cur.fetchall()] == [True]
        finally:
            conn.close()
        events = events_until(sub, lambda e: isinstance(e, Reconnected))
        gap = events[-1]
        assert isinstance(gap, Reconnected)
        assert gap.channels == ("orders",)
        assert not [e for e in events if isinstance(e, Gap)]
        notifier("orders", ["after"])
        after = events_until(sub, lambda e: isinstance(e, Notification))[-1]
        assert isinstance(after, Notification)
        assert (after.payload, after.seq) == ("after", probe.seq + 2)
        assert after.source == bridge.source
