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

Sequence tracking starts at the first message seen from each source and
channel, so a subscriber that starts late reports no false gap.

``green``: True uses ``zmq.green`` (waits yield to the gevent hub), False
plain blocking ``zmq``; None (default) picks green when gevent has
monkey-patched ``socket`` or a gevent hub already exists in this thread
(something here runs greenlets), and plain ``zmq`` otherwise.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.green as gzmq
from gevent import monkey

from gdbpool.errors import BridgeClosed, ConfigurationError, WireFormatError
from gdbpool.logging import get_logger
from gdbpool.notify.notification import Notification, Reconnected
from gdbpool.notify.wire import RESERVED_PREFIX, WireMessage, decode

__all__ = [
    "DEFAULT_HEARTBEAT_TIMEOUT",
    "DEFAULT_RCVHWM",
    "BridgeRestarted",
    "BridgeSilent",
    "Gap",
    "NotifySubscriber",
    "SubscriberEvent",
]

#: Seconds without any message from a source before :class:`BridgeSilent`.
DEFAULT_HEARTBEAT_TIMEOUT = 3.0
#: Receive high-water mark: messages queued in this process before ZeroMQ drops.
DEFAULT_RCVHWM = 10_000


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


SubscriberEvent = Notification | Reconnected | Gap | BridgeRestarted | BridgeSilent


class _Source:
    __slots__ = ("bridge", "heard", "heard_wall", "silent")

    def __init__(self, bridge: str) -> None:
        self.bridge = bridge
        self.heard = time.monotonic()
        self.heard_wall = time.time()
        self.silent = False


def _use_green(green: bool | None) -> bool:
    if green is not None:
        return green
    from gevent._hub_local import get_hub_if_exists  # no public equivalent

    return bool(monkey.is_module_patched("socket")) or get_hub_if_exists() is not None


class NotifySubscriber:
    """SUB client of one or more bridges; iterate it or call :meth:`get`.

    ``channels`` are topic prefixes (``"orders"`` also matches
    ``"orders_eu"``); empty means every channel.  Heartbeats are always
    subscribed.  Defaults: ``heartbeat_timeout`` 3.0 s (three default
    heartbeat intervals), ``rcvhwm`` 10,000 messages.  CURVE: pass the
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
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        rcvhwm: int = DEFAULT_RCVHWM,
        green: bool | None = None,
        curve_server_key: str | bytes | None = None,
        curve_public_key: str | bytes | None = None,
        curve_secret_key: str | bytes | None = None,
    ) -> None:
        endpoints = [connect] if isinstance(connect, str) else list(connect)
        if not endpoints:
            raise ConfigurationError("connect needs at least one bridge endpoint")
        if heartbeat_timeout <= 0:
            raise ConfigurationError(f"heartbeat_timeout must be > 0, got {heartbeat_timeout}")
        self.endpoints = tuple(endpoints)
        self.channels = tuple(channels)
        self.heartbeat_timeout = heartbeat_timeout
        self.green = _use_green(green)
        zmod: Any = gzmq if self.green else zmq
        self._ctx: zmq.Context[Any] = zmod.Context()
        self._socket: zmq.Socket[bytes] = self._ctx.socket(zmq.SUB)
        self._poller: zmq.Poller = zmod.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._pending: deque[SubscriberEvent] = deque()
        self._sources: dict[str, _Source] = {}
        self._by_bridge: dict[str, str] = {}
        self._last_seq: dict[tuple[str, str], int] = {}
        self._closed = False
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
                sock.curve_serverkey = _as_bytes(server_key)
                sock.curve_publickey = _as_bytes(public_key)
                sock.curve_secretkey = _as_bytes(secret_key)
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
        return self._pending.popleft()

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
        """Close the socket; idempotent."""
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
        try:
            frames = self._socket.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            now = time.monotonic()
            self._check_silence(now)
            if self._pending:
                return True
            wait = self._next_silence(now)
            if deadline is not None:
                if now >= deadline:
                    return False
                wait = min(wait, deadline - now) if wait is not None else deadline - now
            if not self._poller.poll(None if wait is None else max(1, int(wait * 1000) + 1)):
                return True  # loop: silence may be due, or the deadline reached
            frames = self._socket.recv_multipart(zmq.NOBLOCK)
        try:
            message = decode(frames)
        except WireFormatError as exc:
            self._log.warning("bad_bridge_message", error=str(exc))
            return True
        if message is not None:
            self._handle(message)
        return True

    def _handle(self, m: WireMessage) -> None:
        src = m.source
        state = self._sources.get(src)
        if state is None:
            old = self._by_bridge.get(m.bridge)
            if old is not None and old != src:
                self._forget(old)
                self._pending.append(BridgeRestarted(old, src, m.bridge))
                self._log.warning(
                    "bridge_restarted", bridge=m.bridge, old_source=old, new_source=src
                )
            state = self._sources[src] = _Source(m.bridge)
            self._by_bridge[m.bridge] = src
        else:
            state.heard = time.monotonic()
            state.heard_wall = time.time()
            state.silent = False
        if m.kind == "heartbeat":
            for channel, last in m.seqs.items():
                if self._wants(channel):
                    self._advance(src, channel, last, heartbeat=True)
            return
        self._advance(src, m.channel, m.seq, heartbeat=False)
        if m.kind == "notify":
            self._pending.append(
                Notification(
                    channel=m.channel,
                    payload=m.payload,
                    pid=m.pid,
                    received_at=m.ts,
                    seq=m.seq,
                    source=src,
                )
            )
        else:
            self._pending.append(Reconnected(channels=(m.channel,), at=m.ts, reason=m.reason))

    def _advance(self, src: str, channel: str, seq: int, *, heartbeat: bool) -> None:
        key = (src, channel)
        last = self._last_seq.get(key)
        # A heartbeat states the last seq sent; a message is the next one.
        expected_last = seq if heartbeat else seq - 1
        if last is not None and expected_last > last:
            got = seq + 1 if heartbeat else seq
            self._pending.append(Gap(src, channel, last + 1, got, expected_last - last))
            self._log.warning(
                "gap_detected", source=src, channel=channel, missed=expected_last - last
            )
        if last is None or seq > last or not heartbeat:
            self._last_seq[key] = seq

    def _forget(self, src: str) -> None:
        self._sources.pop(src, None)
        for key in [k for k in self._last_seq if k[0] == src]:
            del self._last_seq[key]

    def _wants(self, channel: str) -> bool:
        return not self.channels or channel.startswith(self.channels)

    def _check_silence(self, now: float) -> None:
        for src, state in self._sources.items():
            if not state.silent and now - state.heard >= self.heartbeat_timeout:
                state.silent = True
                self._pending.append(BridgeSilent(src, state.heard_wall, state.bridge))
                self._log.warning("bridge_silent", source=src, bridge=state.bridge)

    def _next_silence(self, now: float) -> float | None:
        due = [
            s.heard + self.heartbeat_timeout - now for s in self._sources.values() if not s.silent
        ]
        return max(0.0, min(due)) if due else None


def _as_bytes(key: str | bytes | None) -> bytes:
    if key is None:
        raise ConfigurationError("missing CURVE key")
    return key.encode() if isinstance(key, str) else key
