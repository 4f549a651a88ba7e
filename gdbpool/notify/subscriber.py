"""NotifySubscriber: follows one or more ZmqNotifyBridges over ZeroMQ SUB.

It yields :class:`~gdbpool.notify.notification.Notification` and
:class:`~gdbpool.notify.notification.Reconnected` (the bridge's listener lost its
connection: notifications may be missing) as they arrive, plus events of its
own, all about possible loss:

* :class:`Gap`: sequence numbers of one channel jumped (the subscriber was
  too slow and ZeroMQ dropped messages at a high-water mark, or the bridge
  had to drop them).  Seen on the next message of the channel or on the
  next heartbeat, which carries every channel's last sequence number.
* :class:`BridgeRestarted`: a new source id appeared under a bridge name
  already known (the bridge restarted: what happened in between is lost).
* :class:`BridgeSilent`: no message from a source for ``heartbeat_timeout``.
* :class:`Lagging`: with ``max_lateness``, messages arrive later than that
  (header ``ts`` against this clock); once per episode.

Sequence tracking starts at the first message seen from each source and
channel, so a subscriber that starts late reports no false gap (or at
``resume``, a :meth:`NotifySubscriber.position` saved by an earlier run).

**Replay** (on by default when a bridge advertises it in its heartbeats):
on a sequence jump, a heartbeat tail, or a position to resume from, the
subscriber asks the bridge's replay socket for the missing range (one
request in flight per bridge) and holds that channel's newer messages back
until the answer came; recovered notifications are delivered in order, each
once, with ``replayed=True``, and a :class:`Gap` is raised only for what the
bridge no longer holds (or when it does not answer within
``replay_timeout``).  Wire format: docs/reference/wire.md, "Replay".

``green``: True uses ``zmq.green`` (waits yield to the gevent hub), False
plain blocking ``zmq``; None (default) picks green when gevent has
monkey-patched ``socket`` or a gevent hub already exists in this thread
(something here runs greenlets), and plain ``zmq`` otherwise.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import zmq
import zmq.green as gzmq
from gevent import monkey

from gdbpool.errors import BridgeClosed, ConfigurationError, WireFormatError
from gdbpool.logging import get_logger
from gdbpool.notify.endpoint import check_endpoint
from gdbpool.notify.notification import Notification, Reconnected
from gdbpool.notify.wire import (
    RESERVED_PREFIX,
    ReplayAnswer,
    ReplayRequest,
    WireMessage,
    decode,
    decode_replay_answer,
    encode_replay_request,
)

__all__ = [
    "DEFAULT_HEARTBEAT_TIMEOUT",
    "DEFAULT_RCVHWM",
    "DEFAULT_REPLAY_TIMEOUT",
    "BridgeRestarted",
    "BridgeSilent",
    "Gap",
    "Lagging",
    "NotifySubscriber",
    "Position",
    "SubscriberEvent",
]

#: Seconds without any message from a source before :class:`BridgeSilent`,
#: for a source whose heartbeat interval is not known yet (no heartbeat heard,
#: or one that states no interval), when ``heartbeat_timeout`` is not given.
DEFAULT_HEARTBEAT_TIMEOUT = 3.0
#: Heartbeat intervals a source may miss before it counts as silent: by
#: default a source is silent after this many of its own advertised intervals.
HEARTBEAT_MISSES: Final = 3
#: Receive high-water mark: messages queued in this process before ZeroMQ drops.
DEFAULT_RCVHWM = 10_000
#: Seconds to wait for a replay answer before reporting the range as a Gap.
DEFAULT_REPLAY_TIMEOUT = 3.0
_REPLAY_RCVHWM: Final = 64


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages ``expected`` .. ``got - 1`` of ``channel`` from ``source`` were lost."""

    source: str
    channel: str
    expected: int
    got: int
    missed: int


@dataclass(frozen=True, slots=True)
class BridgeRestarted:
    """Bridge ``bridge`` restarted: ``old_source`` was replaced by ``new_source``."""

    old_source: str
    new_source: str
    bridge: str


@dataclass(frozen=True, slots=True)
class BridgeSilent:
    """No message (not even a heartbeat) from ``source`` since ``last_seen`` (unix time)."""

    source: str
    last_seen: float
    bridge: str


@dataclass(frozen=True, slots=True)
class Lagging:
    """Messages arrive ``by`` seconds after they were sent; the episode began at ``since``.

    Raised once per episode when the lateness (header ``ts`` against this
    process's clock) first exceeds ``max_lateness``; the episode ends when a
    message arrives within half of ``max_lateness``.
    """

    by: float
    since: float


SubscriberEvent = Notification | Reconnected | Gap | BridgeRestarted | BridgeSilent | Lagging

#: What :meth:`NotifySubscriber.position` returns and ``resume=`` takes:
#: ``{source_id: {"bridge": name, "seqs": {channel: last_seq}}}`` (JSON-ready).
Position = dict[str, dict[str, Any]]

_Key = tuple[str, str]  # (source, channel)
_Entry = tuple[SubscriberEvent, _Key | None, int]  # event, where it moves position to


class _Hole:
    """Seqs ``first`` .. ``last`` of one channel, missing and being asked for."""

    __slots__ = ("first", "last")

    def __init__(self, first: int, last: int) -> None:
        self.first = first
        self.last = last


class _Replayer:
    """The DEALER socket to one source's replay endpoint and its one request in flight."""

    __slots__ = ("deadline", "endpoint", "inflight", "socket")

    def __init__(self, deadline: float) -> None:
        self.endpoint = ""  # unknown until a heartbeat advertises it
        self.socket: zmq.Socket[bytes] | None = None
        self.inflight: tuple[int, _Key, int, int] | None = None  # id, key, first, last
        self.deadline = deadline  # for the endpoint to be known, or the answer to come


class _Source:
    __slots__ = ("bridge", "heard", "heard_wall", "silent", "silent_after")

    def __init__(self, bridge: str, silent_after: float) -> None:
        self.bridge = bridge
        self.heard = time.monotonic()
        self.heard_wall = time.time()
        self.silent = False
        self.silent_after = silent_after  # seconds without a message: BridgeSilent


def _use_green(green: bool | None) -> bool:
    if green is not None:
        return green
    from gevent._hub_local import get_hub_if_exists  # no public equivalent

    return bool(monkey.is_module_patched("socket")) or get_hub_if_exists() is not None


class NotifySubscriber:
    """SUB client of one or more bridges; iterate it or call :meth:`get`.

    ``channels`` are topic prefixes (``"orders"`` also matches
    ``"orders_eu"``); empty means every channel.  Heartbeats are always
    subscribed.  ``heartbeat_timeout``: seconds without a message from a
    source before :class:`BridgeSilent`; by default (None) three of that
    source's own heartbeat intervals, as each heartbeat states (3.0 s until
    the first heartbeat says).  ``rcvhwm``: 10,000 messages by default.  CURVE: pass the
    bridge's ``curve_server_key`` and this subscriber's key pair (a fresh
    pair is made when only the server key is given).

    Raises :class:`ConfigurationError` for a malformed endpoint or bad keys.
    After :meth:`close`, :meth:`get` raises :class:`BridgeClosed` and
    iteration stops.
    """

    def __init__(
        self,
        connect: str | Sequence[str],
        channels: Sequence[str] = (),
        *,
        heartbeat_timeout: float | None = None,
        rcvhwm: int = DEFAULT_RCVHWM,
        green: bool | None = None,
        curve_server_key: str | bytes | None = None,
        curve_public_key: str | bytes | None = None,
        curve_secret_key: str | bytes | None = None,
        replay: bool = True,
        replay_timeout: float = DEFAULT_REPLAY_TIMEOUT,
        resume: Mapping[str, Any] | None = None,
        max_lateness: float | None = None,
    ) -> None:
        endpoints = [connect] if isinstance(connect, str) else list(connect)
        if not endpoints:
            raise ConfigurationError("connect needs at least one bridge endpoint")
        for endpoint in endpoints:
            check_endpoint(endpoint, name="connect", bind=False)
        if heartbeat_timeout is not None and not heartbeat_timeout > 0:
            raise ConfigurationError(
                f"heartbeat_timeout must be > 0 or None, got {heartbeat_timeout}"
            )
        if replay_timeout <= 0:
            raise ConfigurationError(f"replay_timeout must be > 0, got {replay_timeout}")
        if max_lateness is not None and max_lateness <= 0:
            raise ConfigurationError(f"max_lateness must be > 0 or None, got {max_lateness}")
        self.endpoints = tuple(endpoints)
        self.channels = tuple(channels)
        self.heartbeat_timeout = heartbeat_timeout
        self.green = _use_green(green)
        zmod: Any = gzmq if self.green else zmq
        self._ctx: zmq.Context[Any] = zmod.Context()
        self._socket: zmq.Socket[bytes] = self._ctx.socket(zmq.SUB)
        self._poller: zmq.Poller = zmod.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._pending: deque[_Entry] = deque()
        self._sources: dict[str, _Source] = {}
        self._by_bridge: dict[str, str] = {}
        self._last_seq: dict[_Key, int] = {}
        self._position: dict[_Key, int] = {}
        self._bridge_of: dict[str, str] = {}
        self._restarted: set[str] = set()  # sources that replaced a known one: count from 0
        self.replay = replay
        self.replay_timeout = replay_timeout
        self.max_lateness = max_lateness
        self._lagging = False
        self._streams: dict[_Key, deque[_Hole | _Entry]] = {}
        self._replayers: dict[str, _Replayer] = {}
        self._endpoints: dict[str, str] = {}  # replay endpoints advertised, per source
        self._resumed: set[str] = set()  # sources of ``resume`` not heard from yet
        self._request_ids = itertools.count(1)
        self._curve: tuple[bytes, bytes, bytes] | None = None
        self._closed = False
        self._received = 0
        self._malformed = 0
        self._unknown = 0
        if resume is not None:
            self._resume(resume)
        self._log = get_logger("gdbpool.subscriber", endpoints=list(self.endpoints))
        try:
            self._configure(rcvhwm, curve_server_key, curve_public_key, curve_secret_key)
            for endpoint in self.endpoints:
                try:
                    self._socket.connect(endpoint)
                except zmq.ZMQError as exc:
                    raise ConfigurationError(
                        f"cannot connect to bridge endpoint {endpoint!r}: {exc.strerror}; "
                        "expected e.g. tcp://127.0.0.1:5555"
                    ) from exc
        except BaseException:
            self._ctx.destroy(linger=0)
            raise

    def _configure(
        self,
        rcvhwm: int,
        server_key: str | bytes | None,
        public_key: str | bytes | None,
        secret_key: str | bytes | None,
    ) -> None:
        sock = self._socket
        sock.rcvhwm = rcvhwm
        sock.linger = 0
        if server_key is not None:
            if (public_key is None) != (secret_key is None):
                raise ConfigurationError(
                    "give both curve_public_key and curve_secret_key, or neither"
                )
            if public_key is None:
                public_key, secret_key = zmq.curve_keypair()
            try:
                self._curve = (_as_bytes(server_key), _as_bytes(public_key), _as_bytes(secret_key))
                sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self._curve
            except zmq.ZMQError as exc:
                raise ConfigurationError(
                    f"bad CURVE key ({exc.strerror}): keys are 40-character z85 strings"
                ) from exc
        elif public_key is not None or secret_key is not None:
            raise ConfigurationError("CURVE keys need curve_server_key (the bridge's public key)")
        sock.setsockopt(zmq.SUBSCRIBE, RESERVED_PREFIX)
        for prefix in self.channels or ("",):
            sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())

    # -- public API ---------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def sources(self) -> dict[str, str]:
        """Source ids heard from so far, mapped to their bridge names."""
        return {src: state.bridge for src, state in self._sources.items()}

    def get(self, timeout: float | None = None) -> SubscriberEvent:
        """Return the next event, waiting up to ``timeout`` seconds (None: forever).

        Raises :class:`TimeoutError` when nothing came in time and
        :class:`BridgeClosed` once closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._pending:
            if self._closed:
                raise BridgeClosed("the subscriber is closed")
            if not self._receive(deadline):
                raise TimeoutError(f"no bridge event within {timeout} s")
        event, key, seq = self._pending.popleft()
        if key is not None:
            self._position[key] = seq
        return event

    def stats(self) -> dict[str, int]:
        """Counters since construction: what arrived and what was skipped.

        ``received``: messages read from the bridges' PUB sockets;
        ``malformed``: those (and replay answers) skipped because they are not
        the wire format (:func:`gdbpool.notify.wire.decode` says why; logged
        as ``bad_bridge_message``), or claim a known source under another
        bridge name; ``unknown``: well-formed messages of a type this version
        does not know (from a newer bridge), skipped.  Without CURVE any
        process that can reach the endpoint can publish: docs/guide/notify.md,
        "Who can publish".
        """
        return {"received": self._received, "malformed": self._malformed, "unknown": self._unknown}

    def position(self) -> Position:
        """Where this subscriber stands: per source, the last seq handed out per channel.

        ``{source_id: {"bridge": name, "seqs": {channel: seq}}}``, JSON-ready;
        give it to ``NotifySubscriber(..., resume=...)`` in a later process to
        continue after ``seq`` (what the bridge's ring still holds is replayed,
        the rest is a :class:`Gap`; a restarted bridge is a
        :class:`BridgeRestarted`, never replayed across sources).  Counts only
        events already returned by :meth:`get`.
        """
        result: Position = {}
        for (src, channel), seq in self._position.items():
            entry = result.setdefault(src, {"bridge": self._bridge_of.get(src, ""), "seqs": {}})
            entry["seqs"][channel] = seq
        return result

    def wait_connected(self, timeout: float = 10.0, sources: int = 1) -> None:
        """Wait until messages from ``sources`` distinct bridges have arrived.

        The usual way past ZeroMQ's slow-joiner window: a heartbeat proves the
        subscription reached the bridge.  Events received meanwhile are kept
        for :meth:`get`.  Raises :class:`TimeoutError`.
        """
        deadline = time.monotonic() + timeout
        while len(self._sources) < sources:
            if not self._receive(deadline):
                raise TimeoutError(
                    f"heard from {len(self._sources)} of {sources} bridge(s) within {timeout} s"
                )

    def close(self) -> None:
        """Close the sockets; idempotent."""
        if not self._closed:
            self._closed = True
            self._ctx.destroy(linger=0)

    def __iter__(self) -> Iterator[SubscriberEvent]:
        while True:
            try:
                yield self.get()
            except BridgeClosed:
                return

    def __enter__(self) -> NotifySubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------

    def _receive(self, deadline: float | None) -> bool:
        """Receive and handle one message (or note silence); False at the deadline."""
        if self._replayers:
            self._serve_replay(time.monotonic())
            if self._pending:
                return True
        try:
            frames = self._socket.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            now = time.monotonic()
            self._check_silence(now)
            if self._pending:
                return True
            wait = self._next_silence(now)
            if self._replayers:
                due = max(0.0, min(r.deadline for r in self._replayers.values()) - now)
                wait = due if wait is None else min(wait, due)
            if deadline is not None:
                if now >= deadline:
                    return False
                wait = min(wait, deadline - now) if wait is not None else deadline - now
            if not self._poller.poll(None if wait is None else max(1, int(wait * 1000) + 1)):
                return True  # loop: silence may be due, or the deadline reached
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return True  # a replay answer woke us: the next round reads it
        self._received += 1
        try:
            message = decode(frames)
        except WireFormatError as exc:
            self._malformed += 1
            self._log.warning("bad_bridge_message", error=str(exc)[:300])
            return True
        if message is None:
            self._unknown += 1
        else:
            self._handle(message)
        return True

    def _handle(self, m: WireMessage) -> None:
        src = m.source
        state = self._sources.get(src)
        if state is None:
            old = self._by_bridge.get(m.bridge)
            if old is not None and old != src:
                self._forget(old)
                self._restarted.add(src)
                self._pending.append((BridgeRestarted(old, src, m.bridge), None, 0))
                self._log.warning(
                    "bridge_restarted", bridge=m.bridge, old_source=old, new_source=src
                )
            state = self._sources[src] = _Source(m.bridge, self._silence_default())
            self._by_bridge[m.bridge] = src
            self._bridge_of[src] = m.bridge
        elif m.bridge != state.bridge:
            # a source id belongs to one bridge run: this message is not from it
            self._malformed += 1
            self._log.warning("bad_bridge_message", error="source id under another bridge name")
            return
        else:
            state.heard = time.monotonic()
            state.heard_wall = time.time()
            state.silent = False
        if self.max_lateness is not None:
            self._check_lateness(m.ts)
        if m.kind == "heartbeat":
            if self.heartbeat_timeout is None and m.interval > 0:
                state.silent_after = HEARTBEAT_MISSES * m.interval
            if self.replay:
                self._advertised(src, m.replay)
            for channel, last in m.seqs.items():
                if self._wants(channel):
                    self._advance(src, channel, last, heartbeat=True)
            return
        if not self._advance(src, m.channel, m.seq, heartbeat=False):
            return  # already delivered (or replayed): each message once
        self._deliver((src, m.channel), _event_of(m, replayed=False), m.seq)

    def _advance(self, src: str, channel: str, seq: int, *, heartbeat: bool) -> bool:
        """Note ``seq`` of ``(src, channel)``; heal or report what it says is missing.

        Returns False for a message already covered (a duplicate).
        """
        key = (src, channel)
        last = self._last_seq.get(key)
        if last is None and src in self._restarted:
            # A restarted bridge numbers each channel from 1: everything it sent
            # before we heard from it is known, so its loss is exact (Gap or replay).
            last = self._last_seq[key] = 0
            self._position.setdefault(key, 0)
        if last is None:
            self._last_seq[key] = seq
            if heartbeat:
                self._position.setdefault(key, seq)  # a late starter starts here
            return True
        # A heartbeat states the last seq sent; a message is the next one.
        expected_last = seq if heartbeat else seq - 1
        if expected_last > last:
            self._missing(key, last + 1, expected_last)
        if seq > last:
            self._last_seq[key] = seq
            return True
        return heartbeat

    def _missing(self, key: _Key, first: int, last: int) -> None:
        """Seqs ``first`` .. ``last`` of ``key`` were not received: ask for them, or report."""
        src = key[0]
        if not self.replay or (src not in self._endpoints and src not in self._resumed):
            # not advertised (a resumed source may advertise in its first heartbeat)
            self._deliver_gap(key, first, last)
            return
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = deque()
        stream.append(_Hole(first, last))
        if src not in self._replayers:
            replayer = self._replayers[src] = _Replayer(time.monotonic() + self._silence_of(src))
            if src in self._endpoints:
                self._connect(src, replayer)

    def _deliver(self, key: _Key, event: SubscriberEvent, seq: int) -> None:
        """Hand ``event`` out now, or after the holes of its channel are healed."""
        stream = self._streams.get(key)
        if stream is None:
            self._pending.append((event, key, seq))
        else:
            stream.append((event, key, seq))

    def _deliver_gap(self, key: _Key, first: int, last: int) -> None:
        missed = last - first + 1
        self._log.warning("gap_detected", source=key[0], channel=key[1], missed=missed)
        self._deliver(key, Gap(key[0], key[1], first, last + 1, missed), last)

    def _forget(self, src: str) -> None:
        """``src`` was replaced by a restarted bridge: what it still owed is a Gap."""
        for key in [k for k in self._streams if k[0] == src]:
            self._flush(key, give_up=True)
        replayer = self._replayers.pop(src, None)
        if replayer is not None and replayer.socket is not None:
            self._poller.unregister(replayer.socket)
            replayer.socket.close(linger=0)
        self._resumed.discard(src)
        self._restarted.discard(src)
        self._endpoints.pop(src, None)
        self._sources.pop(src, None)
        for key in [k for k in self._last_seq if k[0] == src]:
            del self._last_seq[key]
        for key in [k for k in self._position if k[0] == src]:
            del self._position[key]

    # -- replay ---------------------------------------------------------------

    def _resume(self, resume: Mapping[str, Any]) -> None:
        """Start from a :meth:`position` of an earlier run (validated: it may come from a file)."""
        if not isinstance(resume, Mapping):
            raise TypeError(f"resume must be a position mapping, not {type(resume).__name__}")
        for src, entry in resume.items():
            bridge = entry.get("bridge") if isinstance(entry, Mapping) else None
            seqs = entry.get("seqs") if isinstance(entry, Mapping) else None
            if (
                not isinstance(src, str)
                or not isinstance(bridge, str)
                or not isinstance(seqs, Mapping)
                or not all(
                    isinstance(c, str) and isinstance(n, int) and not isinstance(n, bool) and n >= 0
                    for c, n in seqs.items()
                )
            ):
                raise ConfigurationError(
                    "resume must map source ids to {'bridge': name, 'seqs': {channel: seq}} "
                    f"as position() returns; got {src!r}: {entry!r}"[:300]
                )
            self._bridge_of[src] = bridge
            self._resumed.add(src)
            if bridge:
                self._by_bridge[bridge] = src
            for channel, seq in seqs.items():
                self._last_seq[(src, channel)] = seq
                self._position[(src, channel)] = seq

    def _advertised(self, src: str, endpoint: str) -> None:
        """A heartbeat of ``src`` said where (``endpoint``) or that (empty: not) it replays."""
        self._resumed.discard(src)
        if not endpoint:
            self._endpoints.pop(src, None)
            if src in self._replayers:
                self._give_up(src, "the bridge offers no replay")
            return
        self._endpoints[src] = endpoint
        replayer = self._replayers.get(src)
        if replayer is not None and replayer.endpoint != endpoint:
            self._connect(src, replayer)

    def _connect(self, src: str, replayer: _Replayer) -> None:
        """(Re)connect ``src``'s replayer to its advertised endpoint and ask what is missing."""
        endpoint = self._endpoints[src]
        if replayer.socket is not None:
            self._poller.unregister(replayer.socket)
            replayer.socket.close(linger=0)
            replayer.socket = None
        sock: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.rcvhwm = _REPLAY_RCVHWM
        if self._curve is not None:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self._curve
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            self._log.warning("replay_endpoint_unusable", endpoint=endpoint[:100], error=str(exc))
            self._endpoints.pop(src, None)
            self._give_up(src, "the advertised replay endpoint is unusable")
            return
        self._poller.register(sock, zmq.POLLIN)
        replayer.endpoint, replayer.socket, replayer.inflight = endpoint, sock, None
        self._request(src, replayer, time.monotonic())

    def _serve_replay(self, now: float) -> None:
        """Read answers, expire requests, send the next one per source."""
        for src, replayer in list(self._replayers.items()):
            sock = replayer.socket
            if sock is None:  # waiting for a heartbeat to say where to ask
                if now >= replayer.deadline:
                    self._give_up(src, "no heartbeat advertised a replay endpoint in time")
                continue
            while replayer.inflight is not None:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._answered(src, replayer, frames)
            if replayer.inflight is not None and now >= replayer.deadline:
                _, key, first, last = replayer.inflight
                self._log.warning("replay_timeout", source=src, channel=key[1])
                replayer.inflight = None
                self._fill(key, first, last, ())
            if replayer.inflight is None:
                self._request(src, replayer, now)

    def _request(self, src: str, replayer: _Replayer, now: float) -> None:
        if replayer.socket is None:
            return
        for key, stream in self._streams.items():
            if key[0] == src and stream and isinstance(stream[0], _Hole):
                hole = stream[0]
                request = ReplayRequest(next(self._request_ids), src, key[1], hole.first, hole.last)
                with contextlib.suppress(zmq.Again):  # unsent: the deadline makes it a Gap
                    replayer.socket.send_multipart(encode_replay_request(request), zmq.NOBLOCK)
                replayer.inflight = (request.id, key, hole.first, hole.last)
                replayer.deadline = now + self.replay_timeout
                return
        # nothing to ask for: this source needs no replayer until its next hole
        if replayer.socket is not None:
            self._poller.unregister(replayer.socket)
            replayer.socket.close(linger=0)
        del self._replayers[src]

    def _answered(self, src: str, replayer: _Replayer, frames: list[bytes]) -> None:
        assert replayer.inflight is not None
        request_id, key, first, last = replayer.inflight
        try:
            answer: ReplayAnswer = decode_replay_answer(frames)
        except WireFormatError as exc:
            self._malformed += 1
            self._log.warning("bad_replay_answer", source=src, error=str(exc)[:300])
            return
        if answer.id != request_id:
            return  # an answer to a request that timed out
        replayer.inflight = None
        if answer.error or answer.source != src or answer.channel != key[1]:
            self._log.warning("replay_refused", source=src, channel=key[1], error=answer.error)
            self._fill(key, first, last, ())
            return
        lost_to = min(answer.available_from - 1, last)
        covered = min(answer.last, last)
        if lost_to >= first and lost_to >= covered:
            # all of the answer's range left the ring, and so did what follows up to
            # available_from: one Gap for it all, then ask on from there
            self._fill(key, first, lost_to, (), rest=last)
        elif covered < first:  # nothing covered: nothing more to be had
            self._fill(key, first, last, ())
        else:
            self._fill(key, first, covered, answer.messages, rest=last)

    def _fill(
        self,
        key: _Key,
        first: int,
        last: int,
        messages: Sequence[WireMessage],
        rest: int | None = None,
    ) -> None:
        """Deliver ``messages`` for the head hole ``first`` .. ``last`` of ``key``, Gap the others.

        ``rest`` (> ``last``): the hole goes on to ``rest``, asked for next.
        """
        stream = self._streams.get(key)
        if not stream or not isinstance(stream[0], _Hole) or stream[0].first != first:
            return  # the hole went away (source forgotten)
        out = self._pending
        cursor = first
        for m in messages:
            if m.seq < cursor or m.seq > last:
                continue
            if m.seq > cursor:
                self._gap_now(key, cursor, m.seq - 1)
            out.append((_event_of(m, replayed=True), key, m.seq))
            cursor = m.seq + 1
        if cursor <= last:
            self._gap_now(key, cursor, last)
        if rest is not None and rest > last:
            stream[0].first = last + 1
            return
        stream.popleft()
        self._flush(key)

    def _gap_now(self, key: _Key, first: int, last: int) -> None:
        missed = last - first + 1
        self._log.warning("gap_detected", source=key[0], channel=key[1], missed=missed)
        self._pending.append((Gap(key[0], key[1], first, last + 1, missed), key, last))

    def _flush(self, key: _Key, *, give_up: bool = False) -> None:
        """Hand out what waited behind the head hole, up to the next hole (all: ``give_up``)."""
        stream = self._streams[key]
        while stream:
            head = stream[0]
            if isinstance(head, _Hole):
                if not give_up:
                    return
                stream.popleft()
                self._gap_now(key, head.first, head.last)
                continue
            stream.popleft()
            self._pending.append(head)
        del self._streams[key]

    def _give_up(self, src: str, why: str) -> None:
        """Replay from ``src`` cannot work: every hole of it becomes a Gap."""
        self._log.warning("replay_unavailable", source=src, reason=why)
        for key in [k for k in self._streams if k[0] == src]:
            self._flush(key, give_up=True)
        replayer = self._replayers.pop(src, None)
        if replayer is not None and replayer.socket is not None:
            self._poller.unregister(replayer.socket)
            replayer.socket.close(linger=0)

    def _check_lateness(self, ts: float) -> None:
        assert self.max_lateness is not None
        now = time.time()
        late = now - ts
        if not self._lagging:
            if late > self.max_lateness:
                self._lagging = True
                self._pending.append((Lagging(late, now), None, 0))
                self._log.warning("subscriber_lagging", by=round(late, 3))
        elif late <= self.max_lateness / 2:
            self._lagging = False

    def _wants(self, channel: str) -> bool:
        return not self.channels or channel.startswith(self.channels)

    def _silence_default(self) -> float:
        fixed = self.heartbeat_timeout
        return DEFAULT_HEARTBEAT_TIMEOUT if fixed is None else fixed

    def _silence_of(self, src: str) -> float:
        state = self._sources.get(src)
        return self._silence_default() if state is None else state.silent_after

    def _check_silence(self, now: float) -> None:
        for src, state in self._sources.items():
            if not state.silent and now - state.heard >= state.silent_after:
                state.silent = True
                self._pending.append((BridgeSilent(src, state.heard_wall, state.bridge), None, 0))
                self._log.warning("bridge_silent", source=src, bridge=state.bridge)

    def _next_silence(self, now: float) -> float | None:
        due = [
            s.heard + s.silent_after - now for s in self._sources.values() if not s.silent
        ]
        return max(0.0, min(due)) if due else None


def _event_of(m: WireMessage, *, replayed: bool) -> Notification | Reconnected:
    if m.kind == "notify":
        return Notification(
            channel=m.channel,
            payload=m.payload,
            pid=m.pid,
            received_at=m.ts,
            seq=m.seq,
            source=m.source,
            replayed=replayed,
        )
    return Reconnected(channels=(m.channel,), at=m.ts, reason=m.reason)


def _as_bytes(key: str | bytes | None) -> bytes:
    if key is None:
        raise ConfigurationError("missing CURVE key")
    return key.encode() if isinstance(key, str) else key
