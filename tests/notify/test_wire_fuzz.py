"""A rogue publisher on the subscriber's endpoint: bad input is skipped and counted.

Without CURVE any process that can reach a subscriber's endpoint can publish
to it (docs/guide/notify.md, "Who can publish").  A real PUB socket on
loopback sends thousands of malformed frames (wrong frame counts, bad JSON,
non-UTF-8, wrong types and out-of-range values in every header field, deep
nesting, huge frames, heartbeats on channel topics) interleaved with valid
notifications: ``get()`` never raises, every valid notification arrives in
order, every malformed message is counted in ``stats()["malformed"]``, and
none becomes an event (no spoofed notification, Gap or BridgeRestarted).
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Iterator

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from gdbpool import HEARTBEAT_TOPIC, Notification, NotifySubscriber, WireFormatError
from gdbpool.notify.wire import WireMessage, decode, encode_heartbeat, encode_notify

SRC = "0123456789abcdef"
BRIDGE = "tcp://127.0.0.1:1"


def valid_header(kind: str = "notify", **changes: object) -> dict[str, object]:
    header: dict[str, object] = {"v": 1, "type": kind, "src": SRC, "bridge": BRIDGE, "ts": 1.0}
    if kind == "notify":
        header.update(seq=1, pid=7)
    elif kind == "reconnected":
        header.update(seq=1, reason="eof")
    else:
        header.update(interval=1.0, seqs={"orders": 1})
    header.update(changes)
    return header


def frames(header: dict[str, object] | str | bytes, topic: bytes = b"orders") -> list[bytes]:
    if isinstance(header, dict):
        raw = json.dumps(header).encode()
    elif isinstance(header, str):
        raw = header.encode()
    else:
        raw = header
    return [HEARTBEAT_TOPIC if topic == b"hb" else topic, raw, b"payload"]


# Values that are wrong for the field they replace (type or range), each kind by kind.
WRONG: dict[str, list[object]] = {
    "v": [True, 1.0, "1", None, [1], {"v": 1}, 2, 0],
    "type": [None, 1, True, ["notify"], {"notify": 1}],
    "src": [123, None, "", True, ["x"], {"a": 1}, 1.5, "\ud800", "a\x00b", "x" * 2000],
    "bridge": [None, 5, "", [BRIDGE], {"b": 1}, "\udfff"],
    "ts": ["1", None, True, -1, [1.0], {"t": 1}, "1e999", 10**400],
    "seq": [None, "1", 1.5, True, 0, -1, [1], {"s": 1}, 2**64, "1e999"],
    "pid": ["7", 1.5, True, -1, 2**40, [7], None],
    "reason": [5, None, ["eof"], {"r": 1}],
    "interval": ["1", True, -1.0, [1], None, "1e999"],
    "seqs": [
        None,
        [["orders", 1]],
        {"orders": "1"},
        {"orders": True},
        {"orders": -1},
        {"orders": 1.5},
        {"": 1},
        {"x" * 64: 1},
        {"a\x00": 1},
        {"orders": [1]},
        "x",
    ],
    "replay": [5, None, ["tcp://127.0.0.1:9"], {"e": 1}, True],
}
FIELDS_OF = {
    "notify": ["v", "type", "src", "bridge", "ts", "seq", "pid"],
    "reconnected": ["v", "type", "src", "bridge", "ts", "seq", "reason"],
    "heartbeat": ["v", "type", "src", "bridge", "ts", "interval", "seqs", "replay"],
}


def with_wrong(kind: str, field: str, value: object) -> list[bytes]:
    header = valid_header(kind)
    header[field] = value
    raw = json.dumps(header)
    if value == "1e999":  # JSON for infinity (Python's json reads it as inf)
        raw = raw.replace('"1e999"', "1e999")
    return frames(raw, b"hb" if kind == "heartbeat" else b"orders")


def malformed(rng: random.Random) -> list[bytes]:
    """One message that is surely not the wire format, picked at random."""
    choice = rng.randrange(12)
    if choice <= 3:  # a wrong field (type or range), a new source among them
        kind = rng.choice(list(FIELDS_OF))
        field = rng.choice(FIELDS_OF[kind])
        message = with_wrong(kind, field, rng.choice(WRONG[field]))
        header = message[1].replace(SRC.encode(), secrets_hex(rng))
        return [message[0], header, message[2]]
    if choice == 4:  # a missing field
        kind = rng.choice(list(FIELDS_OF))
        header = valid_header(kind)
        del header[
            rng.choice(
                [f for f in FIELDS_OF[kind] if f not in ("pid", "reason", "interval", "replay")]
            )
        ]
        return frames(header, b"hb" if kind == "heartbeat" else b"orders")
    if choice == 5:  # wrong frame count
        n = rng.choice([1, 2, 4, 5, 9])
        return [rng.randbytes(rng.randrange(20)) for _ in range(n)]
    if choice == 6:  # not JSON, not an object, or not UTF-8
        return frames(
            rng.choice(
                [
                    b"not json",
                    b"",
                    b"[1]",
                    b"1",
                    b"null",
                    b'"x"',
                    b"{",
                    rng.randbytes(30),
                    json.dumps(valid_header()).encode("utf-16"),
                    b'{"v":1,"src":"\xff\xfe"}',
                    b'{"v":NaN}',
                    b'{"v":1,"type":"notify","ts":Infinity}',
                ]
            )
        )
    if choice == 7:  # deep nesting
        depth = rng.choice([1000, 10_000, 100_000])
        return frames(
            rng.choice(
                [
                    "[" * depth,
                    '{"v":' + "[" * depth + "]" * depth + "}",
                    '{"v":1,"type":"notify","src":' + '{"a":' * depth,
                ]
            )
        )
    if choice == 8:  # non-UTF-8 topic or payload, NUL, a payload too long for NOTIFY
        message = frames(valid_header())
        pick = rng.randrange(4)
        if pick == 0:
            message[0] = b"ord\xe9rs"
        elif pick == 1:
            message[2] = b"caf\xe9"
        elif pick == 2:
            message[2] = b"a\x00b"
        else:
            message[2] = b"x" * 8000
        return message
    if choice == 9:  # a heartbeat on a channel topic, a notification on a reserved one
        return rng.choice(
            [
                frames(valid_header("heartbeat"), b"orders"),
                frames(valid_header(), HEARTBEAT_TOPIC),
                frames(valid_header(), b"x" * 64),
            ]
        )
    if choice == 10 and rng.random() < 0.05:  # huge header (a few of them: 5 MiB each)
        return frames(b'{"v":1,"pad":"' + b"x" * (5 * 1024 * 1024) + b'"}')
    if choice == 10:
        return frames(valid_header(pid=rng.choice([-5, "7", 2**31])))
    # a known source under another bridge name
    return frames(valid_header(bridge="tcp://127.0.0.1:2", seq=10**6))


def secrets_hex(rng: random.Random) -> bytes:
    return rng.randbytes(8).hex().encode()


class Rogue:
    """A PUB socket on loopback that never drops (unbounded HWM) and a subscriber on it."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.linger = 0
        self.pub.sndhwm = 0
        self.pub.bind("tcp://127.0.0.1:0")
        endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sub = NotifySubscriber(endpoint, green=False, heartbeat_timeout=60, rcvhwm=0)
        deadline = time.monotonic() + 5
        while not self.sub.sources:
            assert time.monotonic() < deadline, "subscriber never connected"
            self.pub.send_multipart(
                encode_heartbeat(source=SRC, bridge=BRIDGE, ts=time.time(), interval=1.0, seqs={})
            )
            with contextlib.suppress(TimeoutError):
                self.sub.wait_connected(timeout=0.05)

    def close(self) -> None:
        self.sub.close()
        self.ctx.destroy(linger=0)


@pytest.fixture
def rogue() -> Iterator[Rogue]:
    r = Rogue()
    yield r
    r.close()


def valid(seq: int) -> list[bytes]:
    return encode_notify(
        "orders", f"p{seq}", source=SRC, bridge=BRIDGE, seq=seq, pid=7, ts=time.time()
    )


def test_a_rogue_publisher_s_malformed_frames_are_skipped_counted_and_never_raise(
    rogue: Rogue,
) -> None:
    rng = random.Random(16)
    bad = 0
    seq = 0
    for _ in range(4000):
        if rng.random() < 0.2:
            seq += 1
            rogue.pub.send_multipart(valid(seq))
        else:
            rogue.pub.send_multipart(malformed(rng))
            bad += 1
    seq += 1
    rogue.pub.send_multipart(valid(seq))  # the last one: everything before it has arrived

    events = []
    while True:
        event = rogue.sub.get(timeout=10)
        events.append(event)
        if isinstance(event, Notification) and event.seq == seq:
            break
    assert all(isinstance(e, Notification) for e in events), {type(e) for e in events}
    assert [(e.seq, e.payload, e.source, e.pid) for e in events] == [  # type: ignore[union-attr]
        (n, f"p{n}", SRC, 7) for n in range(1, seq + 1)
    ]
    stats = rogue.sub.stats()
    assert stats["malformed"] == bad
    assert stats["unknown"] == 0
    assert rogue.sub.sources == {SRC: BRIDGE}


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [(k, f, v) for k, fields in FIELDS_OF.items() for f in fields for v in WRONG[f]],
)
def test_decode_checks_every_header_field_s_type_and_range(
    kind: str, field: str, value: object
) -> None:
    with pytest.raises(WireFormatError):
        decode(with_wrong(kind, field, value))


def test_a_source_id_under_another_bridge_name_spoofs_no_restart(rogue: Rogue) -> None:
    rogue.pub.send_multipart(
        encode_notify("orders", "x", source=SRC, bridge="other", seq=1, pid=1, ts=time.time())
    )
    rogue.pub.send_multipart(valid(1))
    event = rogue.sub.get(timeout=5)
    assert isinstance(event, Notification) and event.payload == "p1"
    assert rogue.sub.stats()["malformed"] == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=120, deadline=None)
@given(
    topic=st.sampled_from([b"orders", HEARTBEAT_TOPIC, b"\xff", b""]) | st.binary(max_size=70),
    fields=st.dictionaries(
        st.sampled_from(
            [
                "v",
                "type",
                "src",
                "bridge",
                "ts",
                "seq",
                "pid",
                "reason",
                "interval",
                "seqs",
                "replay",
            ]
        ),
        json_values,
    ),
    base=st.sampled_from(["notify", "reconnected", "heartbeat"]),
    payload=st.binary(max_size=20),
)
def test_decode_answers_a_message_or_a_wire_format_error_for_any_header(
    topic: bytes, fields: dict[str, object], base: str, payload: bytes
) -> None:
    header = valid_header(base)
    header.update(fields)
    raw = json.dumps(header, allow_nan=True).encode()
    try:
        message = decode([topic, raw, payload])
    except WireFormatError:
        return
    if message is None:
        return
    assert isinstance(message, WireMessage)
    assert type(message.source) is str and message.source
    assert type(message.seq) is int and type(message.ts) is float
