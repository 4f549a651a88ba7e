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
  left stops heartbeating), and ``replay`` (the replay endpoint) when the
  bridge keeps a replay ring.
* ``payload``: the NOTIFY payload bytes (UTF-8); empty for other types.

``seq`` counts per ``(src, channel)``, from 1, contiguous over every message
on that channel's topic (notify and reconnected); heartbeats do not consume
one.  A per-channel counter (rather than one per bridge) is what lets a
subscriber that filters on some channels detect loss without false gaps.
Decoders ignore unknown header fields and drop unknown types, so fields can
be added without a version bump; a new ``v`` means an incompatible change.

Replay (additive to v1): a subscriber's DEALER socket sends one-frame
requests (:func:`encode_replay_request`) to the ROUTER endpoint a heartbeat
advertises; the bridge answers with one multipart message
(:func:`encode_replay_answer`): an answer header, then a header and a payload
frame per replayed message, exactly as they were published.  The full
specification is docs/reference/wire.md, "Replay".
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
    "MAX_HEADER_BYTES",
    "REPLAY_MAX_RANGE",
    "REPLAY_MAX_REQUEST_BYTES",
    "RESERVED_PREFIX",
    "WIRE_VERSION",
    "MessageKind",
    "ReplayAnswer",
    "ReplayRequest",
    "WireMessage",
    "decode",
    "decode_replay_answer",
    "decode_replay_request",
    "encode_heartbeat",
    "encode_notify",
    "encode_reconnected",
    "encode_replay_answer",
    "encode_replay_error",
    "encode_replay_request",
    "new_source_id",
]

#: Version of the wire format written in every header's ``v`` field.
WIRE_VERSION: Final = 1
#: Prefix of every reserved (non-channel) topic; starts with NUL, which no
#: PostgreSQL identifier can contain.
RESERVED_PREFIX: Final = b"\x00gdbpool."
#: Topic of heartbeat messages.
HEARTBEAT_TOPIC: Final = RESERVED_PREFIX + b"hb"

#: Most messages one replay answer covers; a longer range is answered in part.
REPLAY_MAX_RANGE: Final = 1000
#: Largest replay request the bridge reads (ZeroMQ drops a peer that sends more).
REPLAY_MAX_REQUEST_BYTES: Final = 1024

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
    channel: str,
    payload: str,
    *,
    source: str,
    bridge: str,
    seq: int,
    pid: int,
    ts: float,
    log_id: int | None = None,
    lsn: int | None = None,
) -> list[bytes]:
    """Frames of one notification.

    The header is byte for byte what ``json.dumps`` makes of ``{"v", "type",
    "src", "bridge", "seq", "pid", "ts"}``, but built from a cached prefix
    and ``%``-formatting: this runs once per message on the bridge's hot path,
    where a ``json.dumps`` call was a fifth of the bridge's CPU. ``repr`` of
    a finite float is how ``json`` writes it; anything else (a non-finite
    ``ts``, a non-int ``seq``/``pid``) takes the ``json.dumps`` path.
    ``log_id`` (a durable channel's log id) and ``lsn`` (the read-your-writes
    WAL position) are additive fields, written after ``ts`` when not None.
    """
    plain = log_id is None and lsn is None
    if type(seq) is int and type(pid) is int and type(ts) is float and _finite(ts) and plain:
        header = b'%s%d,"pid":%d,"ts":%r}' % (_notify_prefix(source, bridge), seq, pid, ts)
    else:
        fields: dict[str, Any] = {
            "v": WIRE_VERSION,
            "type": "notify",
            "src": source,
            "bridge": bridge,
            "seq": seq,
            "pid": pid,
            "ts": ts,
        }
        if log_id is not None:
            fields["log_id"] = log_id
        if lsn is not None:
            fields["lsn"] = lsn
        header = _header(fields)
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
    *,
    source: str,
    bridge: str,
    ts: float,
    interval: float,
    seqs: Mapping[str, int],
    replay: str = "",
) -> list[bytes]:
    """Frames of one heartbeat; ``seqs`` maps each channel to its last sequence number.

    ``replay``: the bridge's replay endpoint, left out of the header when empty.
    """
    header: dict[str, Any] = {
        "v": WIRE_VERSION,
        "type": "heartbeat",
        "src": source,
        "bridge": bridge,
        "ts": ts,
        "interval": interval,
        "seqs": dict(seqs),
    }
    if replay:
        header["replay"] = replay
    return [HEARTBEAT_TOPIC, _header(header), _EMPTY]


@dataclass(frozen=True, slots=True)
class WireMessage:
    """One decoded bridge message.

    ``channel`` is empty and ``seq`` is 0 for heartbeats; ``seqs``,
    ``interval`` and ``replay`` (the replay endpoint, empty when the bridge
    offers none) are only set on heartbeats, ``reason`` on reconnected;
    ``log_id`` and ``lsn`` on notifications that carried them (else None).
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
    replay: str = ""
    log_id: int | None = None
    lsn: int | None = None


#: Largest header frame decoded (a heartbeat of ~50,000 channels); larger is malformed.
MAX_HEADER_BYTES: Final = 4 * 1024 * 1024
_MAX_SEQ: Final = 2**63 - 1
_MAX_PID: Final = 2**31 - 1
_MAX_LSN: Final = 2**64 - 1
_MAX_SECONDS: Final = 1e15  # ts, interval: finite, and an int this large still fits a float
_MAX_NAME: Final = 1024  # src, bridge, replay endpoint, reason: characters
_MAX_CHANNEL_BYTES: Final = 63  # notification.MAX_CHANNEL_BYTES (a NOTIFY identifier)
_MAX_PAYLOAD_BYTES: Final = 7999  # notification.MAX_PAYLOAD_BYTES


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# NaN and Infinity are not JSON (Python's json accepts them by default).
_json_decoder: Final = json.JSONDecoder(parse_constant=_no_constant)


def _parse_object(raw: bytes, what: str) -> dict[str, Any]:
    """``raw`` as a JSON object of a supported version, or :class:`WireFormatError`.

    Strict UTF-8 (``json.loads`` would also take UTF-16/32), no NaN/Infinity,
    nesting too deep for the parser (``RecursionError``) is malformed too;
    ``v`` must be the int 1 (``true == 1`` in Python).
    """
    try:
        obj = _json_decoder.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise WireFormatError(f"{what} is not UTF-8 JSON: {raw[:80]!r}") from exc
    if type(obj) is not dict:
        raise WireFormatError(f"{what} is not a JSON object: {raw[:80]!r}")
    version = obj.get("v")
    if type(version) is not int or version != WIRE_VERSION:
        raise WireFormatError(
            f"unsupported wire format version {version!r:.40} in {what} (this side speaks "
            f"{WIRE_VERSION}); upgrade gdbpool on the subscriber side"
        )
    return obj


def _is_text(value: str) -> bool:
    """True if ``value`` is valid Unicode text: no lone surrogate, no NUL."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return "\x00" not in value


def _name(header: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = header.get(key, None if required else "")
    if (
        type(value) is not str
        or len(value) > _MAX_NAME
        or (required and not value)
        or not _is_text(value)
    ):
        raise WireFormatError(
            f"header field {key!r} must be a{' non-empty' if required else ''} string of at "
            f"most {_MAX_NAME} characters, got {type(value).__name__}"
        )
    return value


def _count(
    header: dict[str, Any], key: str, low: int, high: int, default: int | None = None
) -> int:
    value = header.get(key, default)
    if type(value) is not int or not low <= value <= high:
        raise WireFormatError(
            f"header field {key!r} must be an integer in {low}..{high}, got {value!r:.40}"
        )
    return value


def _seconds(header: dict[str, Any], key: str, default: float | None = None) -> float:
    value = header.get(key, default)
    if (type(value) is not float and type(value) is not int) or not 0 <= value <= _MAX_SECONDS:
        raise WireFormatError(
            f"header field {key!r} must be a finite number >= 0, got {value!r:.40}"
        )
    return float(value)


def _channel(topic: bytes) -> str:
    if not 0 < len(topic) <= _MAX_CHANNEL_BYTES or b"\x00" in topic:
        raise WireFormatError(
            f"topic must be a channel name of 1 to {_MAX_CHANNEL_BYTES} bytes without NUL, "
            f"got {topic[:80]!r}"
        )
    try:
        return topic.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireFormatError(f"topic is not UTF-8: {topic[:80]!r}") from exc


def _seqs(header: dict[str, Any]) -> dict[str, int]:
    seqs = header.get("seqs")
    if type(seqs) is not dict:
        raise WireFormatError(f"heartbeat seqs must be an object, got {type(seqs).__name__}")
    for channel, last in seqs.items():
        if (
            not channel
            or not _is_text(channel)
            or len(channel.encode("utf-8")) > _MAX_CHANNEL_BYTES
            or type(last) is not int
            or not 0 <= last <= _MAX_SEQ
        ):
            raise WireFormatError(
                f"heartbeat seqs must map channel names to integers >= 0, got "
                f"{channel[:70]!r}: {last!r:.40}"
            )
    return seqs


def decode(frames: list[bytes]) -> WireMessage | None:
    """Decode ``[topic, header, payload]``, checking every field's type and range.

    Returns None for a message of an unknown ``type`` (sent by a newer
    bridge).  Raises :class:`~gdbpool.errors.WireFormatError` for anything
    that is not this format: a wrong frame count, a header that is not a
    UTF-8 JSON object (or larger than :data:`MAX_HEADER_BYTES`), an
    unsupported version, a missing field or one of the wrong type or out of
    range (docs/reference/wire.md lists them), a topic or payload that is not
    a channel name or NOTIFY payload (UTF-8, PostgreSQL's limits), a
    heartbeat on a channel topic or a notification on a reserved one.  A
    subscriber counts such messages as ``malformed`` and skips them: they
    may come from any process that can reach its endpoint.
    """
    if len(frames) != 3:
        raise WireFormatError(f"expected 3 frames [topic, header, payload], got {len(frames)}")
    topic, raw_header, payload = frames
    if len(raw_header) > MAX_HEADER_BYTES:
        raise WireFormatError(f"header of {len(raw_header)} bytes (at most {MAX_HEADER_BYTES})")
    header = _parse_object(raw_header, "header")
    kind = header.get("type")
    if type(kind) is not str:
        raise WireFormatError(f"header field 'type' must be a string, got {type(kind).__name__}")
    if kind not in _KINDS:
        return None
    source = _name(header, "src")
    bridge = _name(header, "bridge")
    ts = _seconds(header, "ts")
    if kind == "heartbeat":
        if topic != HEARTBEAT_TOPIC:
            raise WireFormatError(f"a heartbeat on topic {topic[:80]!r}, not {HEARTBEAT_TOPIC!r}")
        return WireMessage(
            "heartbeat",
            source,
            bridge,
            ts,
            seqs=_seqs(header),
            interval=_seconds(header, "interval", 0.0),
            replay=_name(header, "replay", required=False),
        )
    channel = _channel(topic)
    seq = _count(header, "seq", 1, _MAX_SEQ)
    if kind == "reconnected":
        return WireMessage(
            "reconnected",
            source,
            bridge,
            ts,
            channel=channel,
            seq=seq,
            reason=_name(header, "reason", required=False),
        )
    if len(payload) > _MAX_PAYLOAD_BYTES:
        raise WireFormatError(f"payload of {len(payload)} bytes (at most {_MAX_PAYLOAD_BYTES})")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireFormatError(f"payload is not UTF-8: {payload[:80]!r}") from exc
    if "\x00" in text:
        raise WireFormatError("payload contains NUL (no NOTIFY payload can)")
    return WireMessage(
        "notify",
        source,
        bridge,
        ts,
        channel=channel,
        seq=seq,
        pid=_count(header, "pid", 0, _MAX_PID, 0),
        payload=text,
        log_id=None if header.get("log_id") is None else _count(header, "log_id", 1, _MAX_SEQ),
        lsn=None if header.get("lsn") is None else _count(header, "lsn", 0, _MAX_LSN),
    )


# -- replay: requests (DEALER -> ROUTER) and answers (ROUTER -> DEALER) -------------


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """Ask for messages ``first`` .. ``last`` of ``channel`` from source ``source``."""

    id: int
    source: str
    channel: str
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class ReplayAnswer:
    """The bridge's answer to request ``id``.

    ``error`` is non-empty when the request was refused (then nothing else
    but ``id`` is meaningful).  Otherwise the answer covers ``first`` ..
    ``last`` (``last`` may be below the request's: the range cap, or nothing
    newer was published; ``last < first`` covers nothing); ``messages`` are
    the ones the ring held in that range, in ``seq`` order; ``available_from``
    is the oldest ``seq`` the ring still held.  A ``seq`` of the covered range
    absent from ``messages`` is not available.
    """

    id: int
    error: str = ""
    source: str = ""
    channel: str = ""
    first: int = 0
    last: int = 0
    available_from: int = 0
    messages: tuple[WireMessage, ...] = ()


def _strict_int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise WireFormatError(f"replay {what} must be an integer, got {value!r}")
    return value


def _strict_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise WireFormatError(f"replay {what} must be a string, got {value!r}")
    return value


def encode_replay_request(request: ReplayRequest) -> list[bytes]:
    """The one frame of a replay request."""
    return [
        _header(
            {
                "v": WIRE_VERSION,
                "type": "replay",
                "id": request.id,
                "src": request.source,
                "channel": request.channel,
                "from": request.first,
                "to": request.last,
            }
        )
    ]


def decode_replay_request(frames: list[bytes]) -> ReplayRequest:
    """Decode a replay request; :class:`WireFormatError` says what is wrong with it."""
    if len(frames) != 1:
        raise WireFormatError(f"a replay request is 1 frame, got {len(frames)}")
    if len(frames[0]) > REPLAY_MAX_REQUEST_BYTES:
        raise WireFormatError(
            f"a replay request is at most {REPLAY_MAX_REQUEST_BYTES} bytes, got {len(frames[0])}"
        )
    obj = _parse_object(frames[0], "replay request")
    if obj.get("type") != "replay":
        raise WireFormatError(f"unknown request type {obj.get('type')!r}")
    first = _strict_int(obj.get("from"), "from")
    last = _strict_int(obj.get("to"), "to")
    if first < 1 or last < first:
        raise WireFormatError(f"replay range must be 1 <= from <= to, got {first}..{last}")
    return ReplayRequest(
        _strict_int(obj.get("id"), "id"),
        _strict_str(obj.get("src"), "src"),
        _strict_str(obj.get("channel"), "channel"),
        first,
        last,
    )


def encode_replay_answer(
    *,
    id: int,
    source: str,
    bridge: str,
    channel: str,
    first: int,
    last: int,
    available_from: int,
    entries: list[tuple[bytes, bytes]],
) -> list[bytes]:
    """Frames of a replay answer: its header, then ``header, payload`` per message."""
    header = {
        "v": WIRE_VERSION,
        "type": "replay",
        "id": id,
        "src": source,
        "bridge": bridge,
        "channel": channel,
        "from": first,
        "to": last,
        "available_from": available_from,
        "count": len(entries),
    }
    frames = [_header(header)]
    for entry in entries:
        frames.extend(entry)
    return frames


def encode_replay_error(id: int | None, error: str) -> list[bytes]:
    """The one frame of a refused request (``id`` None: the request had none readable)."""
    return [_header({"v": WIRE_VERSION, "type": "replay_error", "id": id, "error": error})]


def decode_replay_answer(frames: list[bytes]) -> ReplayAnswer:
    """Decode a replay answer or refusal; :class:`WireFormatError` for anything else."""
    if not frames:
        raise WireFormatError("empty replay answer")
    obj = _parse_object(frames[0], "replay answer")
    kind = obj.get("type")
    if kind == "replay_error":
        answer_id = obj.get("id")
        return ReplayAnswer(
            -1 if answer_id is None else _strict_int(answer_id, "id"),
            error=_strict_str(obj.get("error"), "error") or "refused",
        )
    if kind != "replay":
        raise WireFormatError(f"unknown replay answer type {kind!r}")
    count = _strict_int(obj.get("count"), "count")
    if len(frames) != 1 + 2 * count:
        raise WireFormatError(
            f"replay answer announces {count} messages but has {len(frames) - 1} frames after "
            "its header"
        )
    channel = _strict_str(obj.get("channel"), "channel")
    topic = channel.encode("utf-8", "surrogatepass")  # decode() judges it
    messages = []
    for i in range(count):
        message = decode([topic, frames[1 + 2 * i], frames[2 + 2 * i]])
        if message is not None:
            messages.append(message)
    return ReplayAnswer(
        _strict_int(obj.get("id"), "id"),
        source=_strict_str(obj.get("src"), "src"),
        channel=channel,
        first=_strict_int(obj.get("from"), "from"),
        last=_strict_int(obj.get("to"), "to"),
        available_from=_strict_int(obj.get("available_from"), "available_from"),
        messages=tuple(messages),
    )
