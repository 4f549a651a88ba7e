"""The bridge's wire format: how one NOTIFY (or heartbeat) becomes ZeroMQ frames.

Every message on the bridge's PUB socket is three frames, ``[topic, header,
payload]``:

* ``topic``: the PostgreSQL channel name in UTF-8, so a SUB socket's prefix
  filter selects channels.  Bridge housekeeping uses topics that start with
  :data:`RESERVED_PREFIX` (``b"\\x00gdbpool."``); PostgreSQL strings cannot
  contain a NUL byte, so no channel name can start with (or be a prefix
  filter matching) a reserved topic by accident.
* ``header``: a compact UTF-8 JSON object.  Always present: ``v`` (format
  version, 1), ``type`` (``"notify"``, ``"reconnected"`` or
  ``"heartbeat"``), ``src`` (random source id of one bridge run), ``bridge``
  (the bridge's stable name, by default its bound endpoint) and ``ts`` (unix
  time, float).  ``notify`` adds ``seq`` and ``pid``; ``reconnected`` adds
  ``seq`` and ``reason`` (sent after the bridge's LISTEN connection or its
  own hub subscription of the channel was renewed); ``heartbeat`` adds
  ``interval`` and ``seqs`` (every channel still bridged; a bridge with none
  left stops heartbeating).
* ``payload``: the NOTIFY payload bytes (UTF-8); empty for other types.

``seq`` counts per ``(src, channel)``, from 1, contiguous over every message
on that channel's topic (notify and reconnected); heartbeats do not consume
one.  A per-channel counter (rather than one per bridge) is what lets a
subscriber that filters on some channels detect loss without false gaps.
Decoders ignore unknown header fields and drop unknown types, so fields can
be added without a version bump; a new ``v`` means an incompatible change.
"""

from __future__ import annotations

import functools
import json
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from gdbpool.errors import WireFormatError

__all__ = [
    "HEARTBEAT_TOPIC",
    "RESERVED_PREFIX",
    "WIRE_VERSION",
    "MessageKind",
    "WireMessage",
    "decode",
    "encode_heartbeat",
    "encode_notify",
    "encode_reconnected",
    "new_source_id",
]

#: Version of the wire format written in every header's ``v`` field.
WIRE_VERSION: Final = 1
#: Prefix of every reserved (non-channel) topic; starts with NUL, which no
#: PostgreSQL identifier can contain.
RESERVED_PREFIX: Final = b"\x00gdbpool."
#: Topic of heartbeat messages.
HEARTBEAT_TOPIC: Final = RESERVED_PREFIX + b"hb"

MessageKind = Literal["notify", "reconnected", "heartbeat"]
_KINDS: Final = frozenset({"notify", "reconnected", "heartbeat"})
_EMPTY: Final = b""
_finite = math.isfinite


def new_source_id() -> str:
    """A fresh random source id (16 hex digits) for one bridge run."""
    return secrets.token_hex(8)


def _header(fields: Mapping[str, Any]) -> bytes:
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


@functools.lru_cache(maxsize=64)
def _notify_prefix(source: str, bridge: str) -> bytes:
    """The part of a notify header that is the same for every message of one bridge run."""
    fields = {"v": WIRE_VERSION, "type": "notify", "src": source, "bridge": bridge, "seq": 0}
    return _header(fields)[: -len(b"0}")]


def encode_notify(
    channel: str, payload: str, *, source: str, bridge: str, seq: int, pid: int, ts: float
) -> list[bytes]:
    """Frames of one notification.

    The header is byte for byte what ``json.dumps`` makes of ``{"v", "type",
    "src", "bridge", "seq", "pid", "ts"}``, but built from a cached prefix
    and ``%``-formatting: this runs once per message on the bridge's hot path,
    where a ``json.dumps`` call was a fifth of the bridge's CPU. ``repr`` of
    a finite float is how ``json`` writes it; anything else (a non-finite
    ``ts``, a non-int ``seq``/``pid``) takes the ``json.dumps`` path.
    """
    if type(seq) is int and type(pid) is int and type(ts) is float and _finite(ts):
        header = b'%s%d,"pid":%d,"ts":%r}' % (_notify_prefix(source, bridge), seq, pid, ts)
    else:
        header = _header(
            {
                "v": WIRE_VERSION,
                "type": "notify",
                "src": source,
                "bridge": bridge,
                "seq": seq,
                "pid": pid,
                "ts": ts,
            }
        )
    return [channel.encode(), header, payload.encode()]


def encode_reconnected(
    channel: str, *, source: str, bridge: str, seq: int, ts: float, reason: str
) -> list[bytes]:
    """Frames telling subscribers of ``channel`` that notifications may have been lost."""
    header = {
        "v": WIRE_VERSION,
        "type": "reconnected",
        "src": source,
        "bridge": bridge,
        "seq": seq,
        "ts": ts,
        "reason": reason,
    }
    return [channel.encode(), _header(header), _EMPTY]


def encode_heartbeat(
    *, source: str, bridge: str, ts: float, interval: float, seqs: Mapping[str, int]
) -> list[bytes]:
    """Frames of one heartbeat; ``seqs`` maps each channel to its last sequence number."""
    header = {
        "v": WIRE_VERSION,
        "type": "heartbeat",
        "src": source,
        "bridge": bridge,
        "ts": ts,
        "interval": interval,
        "seqs": dict(seqs),
    }
    return [HEARTBEAT_TOPIC, _header(header), _EMPTY]


@dataclass(frozen=True, slots=True)
class WireMessage:
    """One decoded bridge message.

    ``channel`` is empty and ``seq`` is 0 for heartbeats; ``seqs`` and
    ``interval`` are only set on heartbeats, ``reason`` on reconnected.
    """

    kind: MessageKind
    source: str
    bridge: str
    ts: float
    channel: str = ""
    seq: int = 0
    pid: int = 0
    payload: str = ""
    reason: str = ""
    interval: float = 0.0
    seqs: Mapping[str, int] = field(default_factory=dict)


def decode(frames: list[bytes]) -> WireMessage | None:
    """Decode ``[topic, header, payload]``.

    Returns None for a message of an unknown ``type`` (sent by a newer
    bridge).  Raises :class:`~gdbpool.errors.WireFormatError` for anything
    that is not this format (wrong frame count, bad JSON, unsupported
    version, missing fields).
    """
    if len(frames) != 3:
        raise WireFormatError(f"expected 3 frames [topic, header, payload], got {len(frames)}")
    topic, raw_header, payload = frames
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireFormatError(f"header is not UTF-8 JSON: {raw_header[:80]!r}") from exc
    if not isinstance(header, dict):
        raise WireFormatError(f"header is not a JSON object: {raw_header[:80]!r}")
    if header.get("v") != WIRE_VERSION:
        raise WireFormatError(
            f"unsupported wire format version {header.get('v')!r} (this side speaks "
            f"{WIRE_VERSION}); upgrade gdbpool on the subscriber side"
        )
    kind = header.get("type")
    if kind not in _KINDS:
        return None
    try:
        source = str(header["src"])
        bridge = str(header.get("bridge", ""))
        ts = float(header["ts"])
        if kind == "heartbeat":
            seqs = {str(k): int(v) for k, v in header["seqs"].items()}
            return WireMessage(
                "heartbeat",
                source,
                bridge,
                ts,
                seqs=seqs,
                interval=float(header.get("interval", 0.0)),
            )
        channel = topic.decode()
        seq = int(header["seq"])
        if kind == "reconnected":
            return WireMessage(
                "reconnected",
                source,
                bridge,
                ts,
                channel=channel,
                seq=seq,
                reason=str(header.get("reason", "")),
            )
        return WireMessage(
            "notify",
            source,
            bridge,
            ts,
            channel=channel,
            seq=seq,
            pid=int(header.get("pid", 0)),
            payload=payload.decode(),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise WireFormatError(f"malformed {kind} header {raw_header[:120]!r}: {exc}") from exc
