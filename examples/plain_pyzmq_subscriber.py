"""Follow a gdbpool bridge with plain pyzmq: no gdbpool import at all.

This is the proof that the wire format (see the README) is enough to write a
subscriber in any language with ZeroMQ.  Every message is three frames:

    [topic = channel name, header = compact JSON, payload = NOTIFY payload]

Heartbeats come on the reserved topic ``b"\\x00gdbpool.hb"`` with ``seqs``,
each channel's last sequence number.  Sequence numbers count per
``(src, channel)`` from 1, so a jump means lost messages (a gap), and a new
``src`` under a known ``bridge`` name means the bridge restarted.

    python examples/plain_pyzmq_subscriber.py --connect tcp://127.0.0.1:55555 \\
        --channel events [--count N] [--timeout S] [--json]

Exits 0 after ``--count`` notifications or on SIGTERM/SIGINT, 1 when nothing
arrived for ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

import zmq

RESERVED_PREFIX = b"\x00gdbpool."  # heartbeats and any future control topics
WIRE_VERSION = 1


class SequenceTracker:
    """Remembers the last ``seq`` per (source, channel) and reports what went missing."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], int] = {}
        self.bridges: dict[str, str] = {}  # bridge name -> its current source id

    def source(self, bridge: str, src: str) -> str | None:
        """Note ``src`` for ``bridge``; return the old source id if the bridge restarted."""
        old = self.bridges.get(bridge)
        self.bridges[bridge] = src
        if old is not None and old != src:
            self.last = {k: v for k, v in self.last.items() if k[0] != old}
            return old
        return None

    def missed(self, src: str, channel: str, seq: int, *, is_last: bool) -> int:
        """How many messages before ``seq`` never arrived (0 for the first one seen).

        ``is_last``: ``seq`` is a heartbeat's "last sent" rather than a new message.
        """
        key = (src, channel)
        previous = self.last.get(key)
        lost = 0
        if previous is not None:
            lost = max(0, (seq if is_last else seq - 1) - previous)
        if previous is None or seq > previous:
            self.last[key] = seq
        return lost


def main() -> int:
    """Subscribe, print one line per event, track sequence numbers."""
    parser = argparse.ArgumentParser(description="a gdbpool bridge subscriber in plain pyzmq")
    parser.add_argument("--connect", action="append", required=True)
    parser.add_argument("--channel", action="append", default=[],
                        help="channel name prefix (default: every channel)")
    parser.add_argument("--count", type=int, default=0, help="exit after N notifications")
    parser.add_argument("--timeout", type=float, default=0, help="exit 1 after S idle seconds")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args()

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.linger = 0
    sock.setsockopt(zmq.SUBSCRIBE, RESERVED_PREFIX)
    for prefix in args.channel or [""]:
        sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    for endpoint in args.connect:
        sock.connect(endpoint)

    tracker = SequenceTracker()
    wanted = tuple(args.channel)
    received = 0
    heard: set[str] = set()
    idle_since = time.monotonic()

    def emit(record: dict[str, Any], text: str) -> None:
        print(json.dumps(record) if args.json else text, flush=True)

    try:
        while True:
            if not sock.poll(500):  # wake up now and then to check --timeout
                if args.timeout and time.monotonic() - idle_since > args.timeout:
                    print(f"plain subscriber: nothing for {args.timeout:g} s", file=sys.stderr)
                    return 1
                continue
            topic, raw_header, payload = sock.recv_multipart()
            header = json.loads(raw_header)
            if header.get("v") != WIRE_VERSION:
                continue  # an incompatible format: skip rather than misread
            kind, src, bridge = header.get("type"), header["src"], header.get("bridge", "")
            if src not in heard:  # on stderr: stdout carries only events
                heard.add(src)
                print(f"plain subscriber: heard from bridge {bridge} (src {src})",
                      file=sys.stderr, flush=True)
            old = tracker.source(bridge, src)
            if old is not None:
                emit({"type": "bridge_restarted", "bridge": bridge, "old_source": old,
                      "source": src}, f"BRIDGE RESTARTED {bridge}: {old} -> {src}")
            if kind == "heartbeat":
                # The tail of a burst may be lost with no message after it: the
                # heartbeat's per-channel "last seq" reveals it.
                for channel, last in header["seqs"].items():
                    if channel.startswith(wanted):
                        lost = tracker.missed(src, channel, last, is_last=True)
                        if lost:
                            emit({"type": "gap", "channel": channel, "missed": lost,
                                  "source": src}, f"[{channel}] GAP: {lost} missed")
                continue
            if kind not in ("notify", "reconnected"):
                continue  # unknown types are for newer subscribers
            channel, seq = topic.decode(), header["seq"]
            lost = tracker.missed(src, channel, seq, is_last=False)
            if lost:
                emit({"type": "gap", "channel": channel, "missed": lost, "source": src},
                     f"[{channel}] GAP: {lost} missed before #{seq}")
            if kind == "reconnected":
                emit({"type": "reconnected", "channel": channel, "reason": header.get("reason")},
                     f"[{channel}] RECONNECTED: notifications may be lost")
                continue
            text = payload.decode()
            emit({"type": "notify", "channel": channel, "payload": text, "seq": seq,
                  "source": src, "pid": header.get("pid")},
                 f"[{channel}] #{seq} pid={header.get('pid')} src={src}: {text}")
            received += 1
            idle_since = time.monotonic()
            if received == args.count:
                return 0
    finally:
        ctx.destroy(linger=0)


if __name__ == "__main__":
    sys.exit(main())
