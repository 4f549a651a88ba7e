"""The bridge wire format and the subscriber's reading of it (gaps, restarts, silence).

The subscriber is fed by a raw pyzmq PUB socket sending hand-made frames, so
every sequence of messages is exact; the bridge itself is tested in
test_zmq_bridge.py.  Bridge-side tests here use a tiny in-test source.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

import pytest
import zmq
import zmq.green as gzmq
from gevent.queue import Queue
from hypothesis import given
from hypothesis import strategies as st

from gdbpool import (
    HEARTBEAT_TOPIC,
    RESERVED_PREFIX,
    ArgumentTypeError,
    BridgeRestarted,
    BridgeSilent,
    ConfigurationError,
    Gap,
    Notification,
    NotificationError,
    NotificationHub,
    NotifySubscriber,
    Reconnected,
    WireFormatError,
    ZmqNotifyBridge,
    check_channel,
)
from gdbpool.notify.wire import decode, encode_heartbeat, encode_notify, encode_reconnected

SRC = "aaaaaaaaaaaaaaaa"


def notify(seq: int, channel: str = "orders", src: str = SRC, bridge: str = "b1") -> list[bytes]:
    return encode_notify(
        channel, f"p{seq}", source=src, bridge=bridge, seq=seq, pid=42, ts=time.time()
    )


def heartbeat(seqs: dict[str, int], src: str = SRC, bridge: str = "b1") -> list[bytes]:
    return encode_heartbeat(source=src, bridge=bridge, ts=time.time(), interval=1.0, seqs=seqs)


# -- encoding -----------------------------------------------------------------


def test_notify_frames_are_topic_compact_json_header_and_payload() -> None:
    frames = encode_notify("orders", "é{}", source=SRC, bridge="b", seq=7, pid=9, ts=1.5)
    assert frames[0] == b"orders"
    assert frames[2] == "é{}".encode()
    assert b" " not in frames[1]
    assert json.loads(frames[1]) == {
        "v": 1,
        "type": "notify",
        "src": SRC,
        "bridge": "b",
        "seq": 7,
        "pid": 9,
        "ts": 1.5,
    }
    message = decode(frames)
    assert message is not None
    assert (message.kind, message.channel, message.payload, message.seq) == (
        "notify",
        "orders",
        "é{}",
        7,
    )


def test_heartbeat_and_reconnected_round_trip() -> None:
    hb = decode(heartbeat({"a": 3, "b": 0}))
    assert hb is not None
    assert hb.kind == "heartbeat"
    assert dict(hb.seqs) == {"a": 3, "b": 0}
    rc = decode(encode_reconnected("a", source=SRC, bridge="b", seq=4, ts=2.0, reason="eof"))
    assert rc is not None
    assert (rc.kind, rc.channel, rc.seq, rc.reason) == ("reconnected", "a", 4, "eof")


def test_reserved_topics_cannot_collide_with_channel_names() -> None:
    assert HEARTBEAT_TOPIC.startswith(RESERVED_PREFIX)
    assert RESERVED_PREFIX.startswith(b"\x00")
    with pytest.raises(NotificationError):
        check_channel("\x00gdbpool.hb")


@pytest.mark.parametrize(
    "frames",
    [
        [b"a", b"{}"],
        [b"a", b"not json", b""],
        [b"a", b"[1]", b""],
        [b"a", b'{"v":2,"type":"notify","src":"x","seq":1,"ts":1}', b""],
        [b"a", b'{"v":1,"type":"notify","ts":1}', b""],
    ],
)
def test_decode_rejects_what_is_not_the_wire_format(frames: list[bytes]) -> None:
    with pytest.raises(WireFormatError):
        decode(frames)


def test_decode_skips_unknown_message_types_from_newer_bridges() -> None:
    assert decode([b"a", b'{"v":1,"type":"future","src":"x","ts":1}', b""]) is None


# -- the subscriber reading a hand-fed PUB socket --------------------------------


class Feed:
    """A raw PUB socket and a subscriber connected to it (plain zmq both sides)."""

    def __init__(self, channels: tuple[str, ...] = ("orders",), **kwargs: object) -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.linger = 0
        self.pub.bind("tcp://127.0.0.1:0")
        endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sub = NotifySubscriber(endpoint, channels, green=False, **kwargs)  # type: ignore[arg-type]
        # Slow joiner: publish heartbeats until one arrives (bounded).
        deadline = time.monotonic() + 5
        while not self.sub.sources:
            assert time.monotonic() < deadline, "subscriber never connected"
            self.pub.send_multipart(heartbeat({}, src="handshake", bridge="handshake"))
            with contextlib.suppress(TimeoutError):
                self.sub.wait_connected(timeout=0.05)

    def send(self, frames: list[bytes]) -> None:
        self.pub.send_multipart(frames)

    def close(self) -> None:
        self.sub.close()
        self.ctx.destroy(linger=0)


@pytest.fixture
def feed() -> Iterator[Feed]:
    f = Feed()
    yield f
    f.close()


def drain(sub: NotifySubscriber, n: int, timeout: float = 5.0) -> list[object]:
    return [sub.get(timeout=timeout) for _ in range(n)]


def test_first_message_of_a_source_sets_the_sequence_so_late_starters_see_no_gap(
    feed: Feed,
) -> None:
    for seq in (57, 58, 59):
        feed.send(notify(seq))
    events = drain(feed.sub, 3)
    assert [e.seq for e in events if isinstance(e, Notification)] == [57, 58, 59]


def test_a_jump_in_sequence_numbers_is_reported_as_a_gap_before_the_message(feed: Feed) -> None:
    for seq in (1, 2, 6):
        feed.send(notify(seq))
    events = drain(feed.sub, 4)
    assert events[2] == Gap(SRC, "orders", expected=3, got=6, missed=3)
    assert isinstance(events[3], Notification)
    assert events[3].seq == 6


def test_a_heartbeat_reveals_messages_lost_at_the_end_of_a_burst(feed: Feed) -> None:
    feed.send(notify(1))
    feed.send(heartbeat({"orders": 4, "other": 100}))
    feed.send(notify(5))
    events = drain(feed.sub, 3)
    assert events[1] == Gap(SRC, "orders", expected=2, got=5, missed=3)
    assert isinstance(events[2], Notification)
    with pytest.raises(TimeoutError):  # "other" is not subscribed: no gap for it
        feed.sub.get(timeout=0.1)


def test_sequences_are_tracked_per_channel(feed: Feed) -> None:
    feed.send(notify(1, "orders"))
    feed.send(notify(1, "orders_eu"))
    feed.send(notify(2, "orders"))
    events = drain(feed.sub, 3)
    assert all(isinstance(e, Notification) for e in events)


def test_a_new_source_under_a_known_bridge_name_is_a_restart(feed: Feed) -> None:
    feed.send(notify(10))
    feed.send(notify(1, src="bbbbbbbbbbbbbbbb"))
    events = drain(feed.sub, 3)
    assert events[1] == BridgeRestarted(SRC, "bbbbbbbbbbbbbbbb", "b1")
    assert isinstance(events[2], Notification)
    assert events[2].seq == 1


def test_two_bridges_with_their_own_sources_are_not_restarts(feed: Feed) -> None:
    feed.send(notify(10))
    feed.send(notify(1, src="cccccccccccccccc", bridge="b2"))
    events = drain(feed.sub, 2)
    assert all(isinstance(e, Notification) for e in events)


def test_reconnected_messages_become_reconnected_events(feed: Feed) -> None:
    feed.send(
        encode_reconnected(
            "orders", source=SRC, bridge="b1", seq=1, ts=3.0, reason="server closed the connection"
        )
    )
    assert feed.sub.get(timeout=5) == Reconnected(("orders",), 3.0, "server closed the connection")


def test_a_source_that_stops_talking_is_reported_silent_once() -> None:
    f = Feed(heartbeat_timeout=0.3)
    try:
        f.send(notify(1))
        started = time.monotonic()
        events = drain(f.sub, 3, timeout=3)  # the notification, then both sources silent
        silent = [e for e in events if isinstance(e, BridgeSilent)]
        assert {e.source for e in silent} == {SRC, "handshake"}
        assert time.monotonic() - started < 2
        with pytest.raises(TimeoutError):
            f.sub.get(timeout=0.5)
    finally:
        f.close()


def test_get_times_out_and_closed_subscriber_ends_iteration(feed: Feed) -> None:
    with pytest.raises(TimeoutError):
        feed.sub.get(timeout=0.05)
    feed.sub.close()
    assert list(feed.sub) == []


def test_subscriber_rejects_a_malformed_endpoint() -> None:
    with pytest.raises(ConfigurationError, match="cannot connect"):
        NotifySubscriber("tcp://127.0.0.1", green=False)
    with pytest.raises(ConfigurationError, match="cannot connect"):
        NotifySubscriber("nosuch://x", green=False)


# -- the bridge fed by an in-test source -----------------------------------------


class FakeSubscription:
    def __init__(self) -> None:
        self.queue: Queue = Queue()
        self.dropped = 0
        self.closed = False

    def get(self, timeout: float | None = None) -> object:
        return self.queue.get(timeout=timeout)

    def close(self) -> None:
        self.closed = True


class FakeHub:
    def __init__(self) -> None:
        self.subs: dict[str, FakeSubscription] = {}
        self.options: dict[str, tuple[int, str]] = {}

    def subscribe(
        self, channel: str, maxsize: int = 1000, overflow: str = "drop_oldest"
    ) -> FakeSubscription:
        self.options[channel] = (maxsize, overflow)
        self.subs[channel] = FakeSubscription()
        return self.subs[channel]


def note(channel: str, n: int) -> Notification:
    return Notification(channel, f"p{n}", 7, time.time(), n, "hub")


def test_bridge_subscribes_bounded_drop_oldest_and_counts_its_own_drops_as_gaps() -> None:
    hub = FakeHub()
    with ZmqNotifyBridge(hub, ["a"], heartbeat_interval=0.05, queue_size=5) as bridge:
        assert hub.options["a"] == (5, "drop_oldest")
        sub = NotifySubscriber(bridge.endpoint, ["a"])
        try:
            sub.wait_connected(timeout=5)
            hub.subs["a"].queue.put(note("a", 1))
            events = drain(sub, 1)
            hub.subs["a"].dropped = 2  # the hub dropped two before the next one
            hub.subs["a"].queue.put(note("a", 4))
            hub.subs["a"].queue.put(Reconnected(("a",), 5.0, "eof"))
            events += drain(sub, 3)
        finally:
            sub.close()
        assert isinstance(events[0], Notification)
        assert events[0].seq == 1
        assert events[1] == Gap(bridge.source_id, "a", expected=2, got=4, missed=2)
        assert isinstance(events[2], Notification)
        assert events[2].seq == 4
        assert events[3] == Reconnected(("a",), 5.0, "eof")
        stats = bridge.stats()
        assert stats["dropped_in_bridge"] == 2
        assert stats["heartbeats"] >= 1
    assert all(s.closed for s in hub.subs.values())


def test_heartbeats_consume_no_sequence_numbers() -> None:
    hub = FakeHub()
    with ZmqNotifyBridge(hub, ["a"], heartbeat_interval=0.02) as bridge:
        raw = gzmq.Context.instance().socket(zmq.SUB)  # green: the bridge runs in this hub
        raw.linger = 0
        raw.subscribe(b"")
        raw.connect(bridge.endpoint)
        try:
            assert raw.poll(5000)
            hb = decode(raw.recv_multipart())
            assert hb is not None
            assert hb.seqs == {"a": 0}
            hub.subs["a"].queue.put(note("a", 1))
            seen: list[int] = []
            while 1 not in seen:
                assert raw.poll(5000)
                m = decode(raw.recv_multipart())
                assert m is not None
                seen.append(m.seq if m.kind == "notify" else m.seqs.get("a", -1))
            assert all(s in (0, 1) for s in seen)
        finally:
            raw.close()


def test_bridge_refuses_a_bad_bind_address_with_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="cannot bind"):
        ZmqNotifyBridge(FakeHub(), ["a"], bind="tcp://127.0.0.1")
    with (
        ZmqNotifyBridge(FakeHub(), ["a"]) as bridge,
        pytest.raises(ConfigurationError, match="Address already in use"),
    ):
        ZmqNotifyBridge(FakeHub(), ["a"], bind=bridge.endpoint)


@pytest.mark.parametrize("port", ["-1", "65536", "65537", "99999999", "", "x", "1e3", "\uff15"])
def test_a_port_outside_1_to_65535_is_refused_before_zeromq_wraps_it(port: str) -> None:
    # libzmq bound -1 as 65535 and 65537 as 1
    with pytest.raises(ConfigurationError, match="port must be 1 to 65535"):
        ZmqNotifyBridge(FakeHub(), ["a"], bind=f"tcp://127.0.0.1:{port}")
    with pytest.raises(ConfigurationError, match="port must be 1 to 65535"):
        ZmqNotifyBridge(FakeHub(), ["a"], replay_bind=f"tcp://127.0.0.1:{port}")
    with pytest.raises(ConfigurationError, match="port must be 1 to 65535"):
        NotifySubscriber(f"tcp://127.0.0.1:{port}", green=False)


def test_port_zero_or_star_picks_a_free_port_to_bind_but_is_no_place_to_connect() -> None:
    for free in ("0", "*"):
        with ZmqNotifyBridge(FakeHub(), ["a"], bind=f"tcp://127.0.0.1:{free}") as bridge:
            assert 1 <= int(bridge.endpoint.rpartition(":")[2]) <= 65535
        with pytest.raises(ConfigurationError, match="port must be 1 to 65535"):
            NotifySubscriber(f"tcp://127.0.0.1:{free}", green=False)
    with pytest.raises(ArgumentTypeError, match="bind"):
        ZmqNotifyBridge(FakeHub(), ["a"], bind=5555)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="connect"):
        NotifySubscriber([5555], green=False)  # type: ignore[list-item]


def test_bridge_rejects_bad_options() -> None:
    with pytest.raises(ConfigurationError):
        ZmqNotifyBridge(FakeHub(), [])
    with pytest.raises(ConfigurationError):
        ZmqNotifyBridge(FakeHub(), ["a"], heartbeat_interval=0)
    with pytest.raises(ConfigurationError, match="resubscribe_initial"):
        ZmqNotifyBridge(FakeHub(), ["a"], resubscribe_initial=0)
    with pytest.raises(ConfigurationError, match="z85"):
        ZmqNotifyBridge(FakeHub(), ["a"], curve_secret_key="short", curve_public_key="x")


# -- the bridge on a real hub: channels whose hub subscription ends ----------------


def probe_until_through(sub: NotifySubscriber, hub: NotificationHub, channel: str) -> Notification:
    """Bounded slow-joiner handshake: notify until a probe arrives, return the last one."""
    sub.wait_connected(timeout=5)
    deadline = time.monotonic() + 10
    n = 0
    while time.monotonic() < deadline:
        n += 1
        hub.notify(channel, f"probe-{n}")
        with contextlib.suppress(TimeoutError):
            event = sub.get(timeout=0.2)
            while not (isinstance(event, Notification) and event.payload == f"probe-{n}"):
                event = sub.get(timeout=5)
            return event
    raise AssertionError("no probe reached the subscriber within 10 s")


def until(sub: NotifySubscriber, kind: type, timeout: float = 5.0) -> list[object]:
    deadline = time.monotonic() + timeout
    events = [sub.get(timeout=max(0.01, deadline - time.monotonic()))]
    while not isinstance(events[-1], kind):
        events.append(sub.get(timeout=max(0.01, deadline - time.monotonic())))
    return events


def test_a_channel_whose_hub_subscription_ends_is_resubscribed_and_reported(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        NotificationHub(dsn) as hub,
        ZmqNotifyBridge(hub, ["orders"], heartbeat_interval=0.05) as bridge,
        NotifySubscriber(bridge.endpoint, ["orders"]) as sub,
    ):
        probe = probe_until_through(sub, hub, "orders")
        mine = bridge._subscriptions["orders"]

        def broken(batch: object) -> None:
            raise RuntimeError("subscriber broke")

        monkeypatch.setattr(mine, "_offer", broken)  # the hub's listener shuts it as faulty
        hub.notify("orders", "lost")
        events = until(sub, Reconnected)
        assert not [e for e in events if isinstance(e, Notification)]
        gap = events[-1]
        assert isinstance(gap, Reconnected)
        assert gap.channels == ("orders",)
        assert "resubscribed" in gap.reason
        assert mine.closed and bridge._subscriptions["orders"] is not mine

        hub.notify("orders", "after")
        after = until(sub, Notification)
        assert not [e for e in after if isinstance(e, Gap)]  # seqs stay contiguous
        got = after[-1]
        assert isinstance(got, Notification)
        assert (got.payload, got.seq) == ("after", probe.seq + 2)  # the reconnected took one
        assert bridge.stats()["reconnected"] == 1


def test_channels_of_a_closed_hub_are_no_longer_advertised_so_the_bridge_goes_silent(
    dsn: str,
) -> None:
    hub = NotificationHub(dsn)
    try:
        with (
            ZmqNotifyBridge(hub, ["orders"], heartbeat_interval=0.05) as bridge,
            NotifySubscriber(bridge.endpoint, ["orders"], heartbeat_timeout=0.5) as sub,
        ):
            probe_until_through(sub, hub, "orders")
            hub.close()  # the bridge's subscription ends and cannot be renewed
            silent = until(sub, BridgeSilent, timeout=5)[-1]
            assert isinstance(silent, BridgeSilent)
            assert silent.source == bridge.source_id
    finally:
        hub.close()


@given(
    source=st.text(),
    bridge=st.text(),
    seq=st.integers(min_value=0, max_value=2**63),
    pid=st.integers(min_value=0, max_value=2**31),
    ts=st.floats(allow_nan=True, allow_infinity=True) | st.integers(),
)
def test_a_notify_header_is_byte_for_byte_what_json_dumps_makes_of_its_fields(
    source: str, bridge: str, seq: int, pid: int, ts: float
) -> None:
    # encode_notify formats the header from a cached prefix (the bridge's hot path).
    fields = {"v": 1, "type": "notify", "src": source, "bridge": bridge, "seq": seq, "pid": pid,
              "ts": ts}  # fmt: skip
    expected = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()
    header = encode_notify("c", "p", source=source, bridge=bridge, seq=seq, pid=pid, ts=ts)[1]
    assert header == expected


# -- silence follows each source's own interval; restarts count from seq 1 (#16) -------------


def _heartbeat_every(f: Feed, src: str, interval: float, beats: int) -> None:
    for beat in range(beats):
        if beat:
            time.sleep(interval)  # the source's own pace, not a synchronisation
        f.send(
            encode_heartbeat(
                source=src, bridge=src, ts=time.time(), interval=interval, seqs={"orders": 0}
            )
        )


def test_silence_defaults_to_three_of_each_sources_own_heartbeat_intervals() -> None:
    f = Feed()
    try:
        slow, quick = "s" * 16, "q" * 16
        _heartbeat_every(f, slow, 3.3, 2)  # 3.3 s apart: past the old fixed 3 s
        _heartbeat_every(f, quick, 0.1, 1)  # then it stops
        events: list[object] = []
        with contextlib.suppress(TimeoutError):
            while True:
                events.append(f.sub.get(timeout=1.0))
        silent = {e.source for e in events if isinstance(e, BridgeSilent)}
        assert slow not in silent  # healthy: its heartbeats came every interval
        assert quick in silent  # silent after ~0.3 s
    finally:
        f.close()


def test_an_explicit_heartbeat_timeout_applies_to_every_source() -> None:
    f = Feed(heartbeat_timeout=0.3)
    try:
        f.send(encode_heartbeat(source=SRC, bridge="b1", ts=time.time(), interval=10.0, seqs={}))
        events = drain(f.sub, 2, timeout=3)
        assert SRC in {e.source for e in events if isinstance(e, BridgeSilent)}
    finally:
        f.close()


def test_what_a_restarted_bridge_sent_before_it_was_heard_is_an_exact_gap(feed: Feed) -> None:
    feed.send(notify(10))
    new = "bbbbbbbbbbbbbbbb"
    feed.send(notify(201, src=new))  # 200 published before this subscriber heard it
    events = drain(feed.sub, 4)
    assert events[1] == BridgeRestarted(SRC, new, "b1")
    assert events[2] == Gap(new, "orders", 1, 201, 200)
    assert isinstance(events[3], Notification) and events[3].seq == 201


def test_a_restarted_bridge_heard_first_by_its_heartbeat_counts_from_seq_1(feed: Feed) -> None:
    feed.send(notify(3))
    new = "bbbbbbbbbbbbbbbb"
    feed.send(heartbeat({"orders": 50}, src=new))
    events = drain(feed.sub, 3)
    assert events[1] == BridgeRestarted(SRC, new, "b1")
    assert events[2] == Gap(new, "orders", 1, 51, 50)
