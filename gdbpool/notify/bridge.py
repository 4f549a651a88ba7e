"""ZmqNotifyBridge: publishes a NotificationHub's notifications on a ZeroMQ PUB socket.

Decisions worth knowing:

* **Explicit channels.**  PostgreSQL ``LISTEN`` has no wildcards, so the
  bridge listens on the channels it is given.  Channel *prefix* selection
  happens on the subscriber side: topics are channel names and a SUB
  socket's filter is a prefix.
* **Never blocks its listeners.**  Each channel subscription on the hub is
  bounded (``queue_size``, drop oldest).  Notifications the bridge had to
  drop there still consume sequence numbers, so remote subscribers see them
  as a gap.  The PUB socket sends without blocking; above ``sndhwm``
  messages queued for one subscriber, ZeroMQ drops that subscriber's
  messages (which its sequence numbers then reveal).
* **One owner of the socket.**  A :class:`BridgePublisher` actor (in this
  module, above the bridge) owns the PUB socket and the sequence
  counters; one pump greenlet per channel feeds it, and a heartbeat greenlet
  asks it to beat every ``heartbeat_interval``.
  Heartbeats go through the same socket in order, so their per-channel last
  sequence numbers let a subscriber detect loss even when traffic stops.
* **CURVE** uses a ZAP handler greenlet on a ``zmq.green`` REP socket bound
  to ``inproc://zeromq.zap.01`` in the bridge's own context (pyzmq's
  ``ThreadAuthenticator`` runs an asyncio loop in a thread, which does not
  mix with a gevent hub).  A private context per bridge keeps allow-lists of
  several bridges in one process apart.  See :mod:`gdbpool.notify.curve`.
* **A channel keeps being bridged.**  When a channel's hub subscription ends
  while the bridge is open (the hub shut it, e.g. as a faulty subscriber),
  its pump resubscribes (backoff from ``resubscribe_initial`` doubling up to
  ``resubscribe_max``, until the bridge closes) and then publishes a
  ``reconnected`` message on the channel's topic: what was sent in between
  is lost.  If the hub is closed for good (``PoolClosed``), the channel is
  dropped from the heartbeats' ``seqs``; with no channel left the heartbeats
  stop, so subscribers see the source go silent rather than a quiet channel.
* **Replay.**  With ``replay_size`` > 0 (default 10,000) the publisher also
  keeps each channel's last ``replay_size`` messages in a
  :class:`~gdbpool.notify.replay.ReplayRing`, and a ROUTER socket (same
  context, same CURVE setup and ZAP allow-list as PUB) answers replay
  requests from it; every heartbeat advertises its endpoint.  Bounds and
  pacing: :mod:`gdbpool.notify.replay`; decisions: docs/design/bridge.md.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import gevent
import zmq
import zmq.green as gzmq
from gevent.event import Event

from actors import Actor, ActorError, ActorRef, handles
from gdbpool.errors import ConfigurationError, GDBPoolError, PoolClosed
from gdbpool.fork import fork_error, register, silence_zmq
from gdbpool.logging import get_logger
from gdbpool.notify.curve import authenticate, bind_zap, curve_key
from gdbpool.notify.endpoint import check_endpoint
from gdbpool.notify.notification import Reconnected
from gdbpool.notify.replay import DEFAULT_REPLAY_RATE, DEFAULT_REPLAY_SIZE, ReplayRing, ReplayServer
from gdbpool.notify.subscription import Overflow
from gdbpool.notify.wire import (
    encode_heartbeat,
    encode_notify,
    encode_reconnected,
    new_source_id,
)

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_REPLAY_RATE",
    "DEFAULT_REPLAY_SIZE",
    "DEFAULT_RESUBSCRIBE_INITIAL",
    "DEFAULT_RESUBSCRIBE_MAX",
    "DEFAULT_SNDHWM",
    "BridgePublisher",
    "NotificationSource",
    "ZmqNotifyBridge",
]

#: Seconds between heartbeats.
DEFAULT_HEARTBEAT_INTERVAL = 1.0
#: Send high-water mark: messages queued per subscriber before ZeroMQ drops.
DEFAULT_SNDHWM = 10_000
#: Bound of the bridge's subscription queue on the hub, per channel.
DEFAULT_QUEUE_SIZE = 10_000
#: First delay, in seconds, before resubscribing a channel whose subscription failed.
DEFAULT_RESUBSCRIBE_INITIAL = 0.1
#: Upper bound of the resubscribe delay, in seconds (the delay doubles per failure).
DEFAULT_RESUBSCRIBE_MAX = 5.0
_STOP_TIMEOUT = 5.0
# The publisher's per-frame send: the backend's, with int flags (pyzmq's flag
# enums and its sugar layer cost a microsecond or more per frame).
_send_frame = zmq.backend.Socket.send
_LAST = int(zmq.NOBLOCK)
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)


# -- the publisher actor ------------------------------------------------------------
# The bridge's pump greenlets tell it _Forward (one item of a channel) and
# _Unbridge (a channel whose hub is gone), its heartbeat greenlet tells it _Beat;
# _PublisherStats asks for its counters.


class _Forward:
    """One item taken from a channel subscription; ``dropped`` is its drop count so far.

    A slotted class, not a frozen dataclass: one is made per notification,
    and a frozen dataclass's ``__init__`` costs several times more.
    """

    __slots__ = ("channel", "dropped", "item")

    def __init__(self, channel: str, item: Any, dropped: int) -> None:
        self.channel = channel
        self.item = item
        self.dropped = dropped


@dataclass(frozen=True, slots=True)
class _Unbridge:
    """The hub is closed for good: stop advertising ``channel`` in heartbeats."""

    channel: str


@dataclass(frozen=True, slots=True)
class _Beat:
    """Time to publish a heartbeat."""


@dataclass(frozen=True, slots=True)
class _PublisherStats:
    """Ask for the publisher's counters."""


class BridgePublisher(Actor):
    """Owns the PUB socket and the per-channel sequence counters.

    Every ``_Forward`` becomes one message on its channel's topic; every
    ``_Beat`` one heartbeat of the channels still bridged (none: no
    heartbeat).  Sends never block.  The socket is closed when the actor
    stops.

    An ``inline`` actor (see :class:`~actors.Actor`): no handler waits (a PUB
    socket never blocks a ``NOBLOCK`` send; at its high-water mark it drops),
    so a pump greenlet's ``tell`` publishes on its own greenlet when the
    actor is idle, without a hop through the mailbox.

    Frames go out through a plain (not ``zmq.green``) shadow of the green
    socket, frame by frame: the green wrapper's send exists to wait on
    ``EAGAIN``, which a ``NOBLOCK`` PUB send never needs, and it cost more
    than the rest of the message's path.  The green socket stays the owner
    (CURVE and ZAP are set on it; closing it closes the shadow).
    """

    inline = True

    def __init__(
        self,
        socket: zmq.Socket[bytes],
        channels: Sequence[str],
        source: str,
        bridge: str,
        heartbeat_interval: float,
        ring: ReplayRing | None = None,
        replay_endpoint: str = "",
    ) -> None:
        super().__init__()
        self._socket = socket
        self._raw: zmq.Socket[bytes] = zmq.Socket.shadow(socket.underlying)
        self._ring = ring
        self._replay_endpoint = replay_endpoint
        self._source = source
        self._bridge = bridge
        self._interval = heartbeat_interval
        self._seqs: dict[str, int] = dict.fromkeys(channels, 0)
        self._seen_dropped: dict[str, int] = dict.fromkeys(channels, 0)
        self._counts = {
            "published": 0,
            "reconnected": 0,
            "heartbeats": 0,
            "dropped_in_bridge": 0,
            "send_failed": 0,
        }
        self._log = get_logger("gdbpool.bridge", bridge=bridge, source=source)

    def on_stop(self) -> None:
        self._socket.close(linger=0)

    @handles(_Forward)
    def forward(self, msg: _Forward) -> None:
        channel = msg.channel
        # Notifications the hub dropped from our subscription queue still take
        # sequence numbers: subscribers then see the loss as a gap.
        lost = msg.dropped - self._seen_dropped[channel]
        if lost > 0:
            self._seen_dropped[channel] = msg.dropped
            self._counts["dropped_in_bridge"] += lost
            self._log.warning("bridge_queue_overflow", channel=channel, dropped=lost)
        seq = self._seqs[channel] + lost + 1
        self._seqs[channel] = seq
        item = msg.item
        if hasattr(item, "payload"):
            frames = encode_notify(
                channel,
                item.payload,
                source=self._source,
                bridge=self._bridge,
                seq=seq,
                pid=item.pid,
                ts=item.received_at,
                log_id=item.log_id,
                lsn=item.lsn,
            )
            self._counts["published"] += 1
        else:
            reason = str(getattr(item, "reason", "listener reconnected"))
            frames = encode_reconnected(
                channel,
                source=self._source,
                bridge=self._bridge,
                seq=seq,
                ts=float(getattr(item, "at", time.time())),
                reason=reason,
            )
            self._counts["reconnected"] += 1
            self._log.warning("listener_reconnected_forwarded", channel=channel, reason=reason)
        if self._ring is not None:
            self._ring.add(channel, seq, frames[1], frames[2])
        self._send(frames)

    @handles(_Unbridge)
    def unbridge(self, msg: _Unbridge) -> None:
        self._seqs.pop(msg.channel, None)
        if self._ring is not None:
            self._ring.drop(msg.channel)
        self._log.error("channel_unbridged", channel=msg.channel, remaining=len(self._seqs))

    @handles(_Beat)
    def beat(self, msg: _Beat) -> None:
        if not self._seqs:
            return  # nothing is bridged any more: let subscribers see the silence
        self._counts["heartbeats"] += 1
        self._send(
            encode_heartbeat(
                source=self._source,
                bridge=self._bridge,
                ts=time.time(),
                interval=self._interval,
                seqs=self._seqs,
                replay=self._replay_endpoint,
            )
        )

    @handles(_PublisherStats)
    def stats(self, msg: _PublisherStats) -> dict[str, int]:
        return dict(self._counts)

    def _send(self, frames: list[bytes]) -> None:
        raw = self._raw
        try:
            for frame in frames[:-1]:
                _send_frame(raw, frame, _MORE)
            _send_frame(raw, frames[-1], _LAST)
        except zmq.Again:
            # PUB drops on its high-water mark rather than failing; count it anyway.
            self._counts["send_failed"] += 1


# -- the bridge -----------------------------------------------------------------------


class _Subscription(Protocol):
    def get(self, timeout: float | None = None) -> Any: ...

    def close(self) -> None: ...


class NotificationSource(Protocol):
    """What the bridge needs from a hub: ``NotificationHub`` fits."""

    def subscribe(
        self, channel: str, maxsize: int = ..., overflow: Overflow = ..., *, durable: bool = ...
    ) -> Any: ...


class ZmqNotifyBridge:
    """Publishes notifications of ``channels`` from ``hub`` on a ZeroMQ PUB socket.

    The wire format is described in :mod:`gdbpool.notify.wire`.  Defaults:

    - ``bind``: ``tcp://127.0.0.1:0`` (loopback, a free port; read
      :attr:`endpoint`).  Binding elsewhere is an explicit choice.
    - ``sndhwm``: 10,000 messages per subscriber, then ZeroMQ drops.
    - ``heartbeat_interval``: 1.0 s.
    - ``queue_size``: 10,000 notifications per channel queued between the
      hub and the bridge (drop oldest beyond, counted as a gap).
    - ``source_id``: random per bridge run; ``name``: the bound endpoint.
    - ``resubscribe_initial``/``resubscribe_max``: 0.1 s doubling up to
      5.0 s between attempts to resubscribe a channel whose hub
      subscription ended (decisions: docs/design/bridge.md).
    - ``replay_size``: 10,000 messages kept per channel for replay (0: no
      replay socket, heartbeats advertise none); ``replay_bind``:
      ``tcp://127.0.0.1:0``; ``replay_rate``: at most 50,000 replayed
      messages per second (see :mod:`gdbpool.notify.replay` and the wire
      format's "Replay" section).
    - ``durable``: False; True subscribes every channel with ``durable=True``
      (written through ``gdbpool.notify()``): the hub heals its LISTEN gaps
      from the log table and each message's header carries ``log_id``.
    - CURVE: give ``curve_secret_key`` and ``curve_public_key`` (z85, as from
      ``zmq.curve_keypair()``) to encrypt; ``allowed_client_keys`` (z85
      public keys) to admit only those subscribers (None: any subscriber
      that knows the server key).

    Raises :class:`ConfigurationError` for a bad endpoint, an address in
    use, bad keys or bad bounds.  :meth:`close` stops everything; it is
    idempotent.  The bridge is also a context manager.  Not fork safe
    (ZeroMQ is not): in a child forked after it was made it stops publishing,
    :meth:`stats` raises :class:`~gdbpool.errors.ForkError` and :meth:`close`
    does nothing (docs/design/fork.md).
    """

    def __init__(
        self,
        hub: NotificationSource,
        channels: Sequence[str],
        *,
        bind: str = "tcp://127.0.0.1:0",
        sndhwm: int = DEFAULT_SNDHWM,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        source_id: str | None = None,
        name: str | None = None,
        resubscribe_initial: float = DEFAULT_RESUBSCRIBE_INITIAL,
        resubscribe_max: float = DEFAULT_RESUBSCRIBE_MAX,
        curve_secret_key: str | bytes | None = None,
        curve_public_key: str | bytes | None = None,
        allowed_client_keys: Iterable[str | bytes] | None = None,
        replay_size: int = DEFAULT_REPLAY_SIZE,
        replay_bind: str = "tcp://127.0.0.1:0",
        replay_rate: int = DEFAULT_REPLAY_RATE,
        durable: bool = False,
    ) -> None:
        channels = list(dict.fromkeys(channels))
        if not isinstance(durable, bool):
            raise TypeError(f"durable must be True or False, not {type(durable).__name__}")
        self._durable = durable
        for what, value in (("replay_size", replay_size), ("replay_rate", replay_rate)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{what} must be an int, not {type(value).__name__}")
        if replay_size < 0 or replay_rate < 1:
            raise ConfigurationError(
                f"replay_size must be >= 0 and replay_rate >= 1, got {replay_size} "
                f"and {replay_rate}"
            )
        check_endpoint(bind, name="bind", bind=True)
        check_endpoint(replay_bind, name="replay_bind", bind=True)
        if not channels or not all(isinstance(c, str) and c for c in channels):
            raise ConfigurationError(f"channels must be non-empty channel names, got {channels!r}")
        if sndhwm < 0 or queue_size < 1:
            raise ConfigurationError("sndhwm must be >= 0 and queue_size >= 1")
        if heartbeat_interval <= 0:
            raise ConfigurationError(f"heartbeat_interval must be > 0, got {heartbeat_interval}")
        if not 0 < resubscribe_initial <= resubscribe_max:
            raise ConfigurationError(
                "resubscribe_initial must be > 0 and <= resubscribe_max, got "
                f"{resubscribe_initial} and {resubscribe_max}"
            )
        self.source_id = source_id or new_source_id()
        self.channels: tuple[str, ...] = tuple(channels)
        self._closed = False
        self._ctx: zmq.Context[Any] = gzmq.Context()
        self._greenlets: list[gevent.Greenlet[Any, Any]] = []
        self._hub = hub
        self._queue_size = queue_size
        self._resubscribe = (resubscribe_initial, resubscribe_max)
        self._subscriptions: dict[str, _Subscription] = {}
        self._stop = Event()
        self._replay: ReplayServer | None = None
        self.replay_endpoint: str = ""
        router: zmq.Socket[bytes] | None = None
        try:
            zap = self._start_curve(curve_secret_key, curve_public_key, allowed_client_keys)
            socket = self._ctx.socket(zmq.PUB)
            socket.sndhwm = sndhwm
            socket.linger = 0
            self._bind(socket, bind, "PUB", zap, curve_secret_key, curve_public_key)
            if replay_size:
                router = self._ctx.socket(zmq.ROUTER)
                ReplayServer.configure(router)
                self._bind(router, replay_bind, "replay", zap, curve_secret_key, curve_public_key)
                self.replay_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException:
            self._ctx.destroy(linger=0)
            for greenlet in self._greenlets:
                greenlet.kill()
            raise
        self.endpoint: str = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.name = name or self.endpoint
        self._log = get_logger("gdbpool.bridge", bridge=self.name, source=self.source_id)
        ring = ReplayRing(self.channels, replay_size) if router is not None else None
        self._ref: ActorRef = BridgePublisher.start(
            socket,
            self.channels,
            self.source_id,
            self.name,
            heartbeat_interval,
            ring,
            self.replay_endpoint,
            name=f"bridge[{self.name}]",
        )
        if router is not None and ring is not None:
            self._replay = ReplayServer(
                router,
                ring,
                source=self.source_id,
                bridge=self.name,
                rate=replay_rate,
                stop=self._stop,
            )
            self._spawn(self._replay.serve)
        try:
            for channel in self.channels:
                sub = self._subscribe(hub, channel, queue_size)
                self._subscriptions[channel] = sub
                self._spawn(self._pump, channel, sub)
        except BaseException:
            self.close()
            raise
        self._spawn(self._heartbeat, heartbeat_interval)
        self._forked = False  # used in a fork() child: stats() raises ForkError
        register(self)
        self._log.info(
            "bridge_started",
            endpoint=self.endpoint,
            channels=list(self.channels),
            curve=zap,
            replay=self.replay_endpoint or None,
        )

    # -- public API ---------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def stats(self, timeout: float = 5.0) -> dict[str, int]:
        """Counters: published, reconnected, heartbeats, dropped_in_bridge, send_failed.

        With replay on, also: ``replay_requests`` (received), ``replay_answers``
        (sent), ``replay_messages`` (replayed in them), ``replay_refused``
        (error answers: malformed, busy, unknown source or channel) and
        ``replay_unsent`` (answers dropped because the requester did not read).
        """
        if self._forked:
            raise fork_error(f"ZmqNotifyBridge {self.name!r}")
        result: dict[str, int] = self._ref.ask(_PublisherStats()).get(timeout=timeout)
        if self._replay is not None:
            result.update(self._replay.counts)
        return result

    def close(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Stop the pumps and heartbeat, close the hub subscriptions and the socket."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        gevent.killall(self._greenlets, timeout=timeout)
        for sub in self._subscriptions.values():
            try:
                sub.close()
            except Exception:
                self._log.exception("subscription_close_failed")
        if self._ref.is_alive:
            self._ref.stop(timeout=timeout)
        self._ctx.destroy(linger=0)
        self._log.info("bridge_stopped")

    def _after_fork_in_child(self) -> None:
        """In a fork() child: stop every greenlet and actor without touching zmq (ForkError).

        The hub subscriptions are closed from a greenlet (the hub reopens in
        the child; nobody would read them).
        """
        if self._closed:
            return
        self._closed = True
        self._forked = True
        silence_zmq(self._ctx)
        for greenlet in self._greenlets:
            greenlet.kill(block=False)
        self._ref._abandon()
        gevent.spawn(self._close_subscriptions, list(self._subscriptions.values()))

    def _close_subscriptions(self, subs: list[_Subscription]) -> None:
        for sub in subs:
            with contextlib.suppress(Exception):
                sub.close()

    def __enter__(self) -> ZmqNotifyBridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<ZmqNotifyBridge {self.endpoint} source={self.source_id} {state}>"

    # -- internals ----------------------------------------------------------

    def _spawn(self, func: Any, *args: Any) -> None:
        greenlet = gevent.spawn(func, *args)
        greenlet.name = f"bridge-{func.__name__}"
        self._greenlets.append(greenlet)

    def _pump(self, channel: str, sub: _Subscription) -> None:
        """Forward ``channel``'s items; resubscribe when the subscription ends (module doc)."""
        tell = self._ref.tell
        lost_before = 0  # drops counted by this channel's earlier subscriptions
        try:
            while True:
                reason = self._forward(channel, sub, lost_before)
                if self._closed:
                    return
                lost_before += int(getattr(sub, "dropped", 0))
                self._log.error("subscription_ended", channel=channel, reason=reason)
                with contextlib.suppress(Exception):
                    sub.close()  # usually closed already; never leave it registered
                renewed = self._renew(channel)
                if renewed is None:
                    tell(_Unbridge(channel))
                    return
                sub = renewed
                self._log.warning("channel_resubscribed", channel=channel)
                gap = Reconnected(
                    (channel,),
                    time.time(),
                    f"bridge resubscribed: its hub subscription ended ({reason})",
                )
                tell(_Forward(channel, gap, lost_before))
        except ActorError:
            if not self._closed:
                self._log.error("bridge_publisher_gone", channel=channel)

    def _forward(self, channel: str, sub: _Subscription, lost_before: int) -> str:
        """Tell the publisher every item of ``sub`` until it ends; return why it ended."""
        tell = self._ref.tell
        try:
            while True:
                item = sub.get(timeout=None)
                if item is None:  # a closed subscription may answer None
                    return "subscription closed"
                tell(_Forward(channel, item, lost_before + int(getattr(sub, "dropped", 0))))
        except ActorError:
            raise
        except Exception as exc:
            return str(getattr(sub, "close_reason", "") or repr(exc))

    def _subscribe(self, hub: NotificationSource, channel: str, size: int) -> Any:
        if self._durable:
            return hub.subscribe(channel, maxsize=size, overflow="drop_oldest", durable=True)
        return hub.subscribe(channel, maxsize=size, overflow="drop_oldest")

    def _renew(self, channel: str) -> _Subscription | None:
        """Subscribe ``channel`` again, retrying with backoff; None once that cannot work."""
        delay, ceiling = self._resubscribe
        while not self._closed:
            try:
                sub: _Subscription = self._subscribe(self._hub, channel, self._queue_size)
            except PoolClosed as exc:
                self._log.error("resubscribe_impossible", channel=channel, error=str(exc))
                return None
            except GDBPoolError as exc:
                self._log.warning(
                    "resubscribe_failed", channel=channel, error=str(exc), retry_in=delay
                )
                if self._stop.wait(delay):
                    return None
                delay = min(ceiling, delay * 2)
                continue
            self._subscriptions[channel] = sub
            return sub
        return None

    @staticmethod
    def _bind(
        socket: zmq.Socket[bytes],
        endpoint: str,
        what: str,
        curve: bool,
        secret: str | bytes | None,
        public: str | bytes | None,
    ) -> None:
        """CURVE-serve (when on) and bind ``socket``; ConfigurationError when it cannot bind."""
        if curve:
            socket.curve_server = True
            socket.curve_secretkey = curve_key(secret, "curve_secret_key")
            socket.curve_publickey = curve_key(public, "curve_public_key")
        try:
            socket.bind(endpoint)
        except zmq.ZMQError as exc:
            socket.close(linger=0)
            raise ConfigurationError(
                f"cannot bind the bridge's {what} socket to {endpoint!r}: {exc.strerror}; give "
                "an endpoint such as tcp://127.0.0.1:5555 (port 0 picks a free port)"
            ) from exc

    def _heartbeat(self, interval: float) -> None:
        tell = self._ref.tell
        while not self._stop.wait(interval):
            tell(_Beat())

    def _start_curve(
        self,
        secret: str | bytes | None,
        public: str | bytes | None,
        allowed: Iterable[str | bytes] | None,
    ) -> bool:
        zap = bind_zap(self._ctx, secret, public, allowed)
        if zap is None:
            return False
        self._spawn(authenticate, *zap)
        return True
