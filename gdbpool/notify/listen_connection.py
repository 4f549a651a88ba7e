"""ListenConnection: the actor that owns a hub's one LISTEN connection.

One autocommit psycopg2 connection carries every channel of a
:class:`~gdbpool.notify.hub.NotificationHub`.  The actor owns it: only
the actor's greenlet executes statements on it or polls it.  A small reader
greenlet waits for the socket to become readable (``gevent.socket.wait_read``,
no polling) and then *asks* the actor to read; it waits for the answer before
waiting on the socket again.  So LISTEN/UNLISTEN statements
(``Subscribe``/``Unsubscribe`` messages) and reads are serialised by the
actor's mailbox and can never interleave on the connection.

A read drains ``conn.notifies``, numbers each notification (hub-wide ``seq``,
receive order, from 1) and tells each channel's route one batch per channel.

A connection can also die silently (a half-open TCP connection after a
network blackhole: nothing arrives, nothing fails).  So when nothing was read
for ``idle_check`` seconds (default 5), the reader asks the actor for an idle
check: a ``SELECT 1`` that must answer within ``idle_check`` seconds, or the
socket is shut down (:func:`~gdbpool.green.shutdown_socket`) and the
connection counts as lost.  libpq TCP keepalives are switched on as a second
line (unless the DSN sets its own).

When the connection is lost (``pg_terminate_backend``, server restart, network
error, a failed idle check) the actor closes it, and reconnects after a backoff of
``min(reconnect_max, reconnect_initial * 2**n)`` seconds, of which the second
half is random jitter; it retries until the hub closes.  Once connected it
re-issues LISTEN for every channel (one round trip) and tells every route a
:class:`~gdbpool.notify.notification.Reconnected` gap event.  Subscribe/Unsubscribe
while disconnected only update the channel table; it is applied on reconnect.

The channel table and the sequence counter live in
:class:`HubState` (above the actor, beside the Route protocol, the defaults
and the actor's messages), which is passed to the constructor: a
supervisor restart (a fresh instance after a crash) keeps them, reconnects,
and tells every route a gap event as well.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import gevent
import psycopg2
from gevent.event import Event
from gevent.socket import wait_read
from psycopg2 import sql

from actors import Actor, ActorError, handles
from gdbpool.errors import ConfigurationError, NotificationError, PoolConnectionError
from gdbpool.green import keepalive_options, shutdown_socket
from gdbpool.logging import describe_dsn, get_logger, redact
from gdbpool.notify.notification import Notification, Reconnected, make_notification
from gdbpool.notify.subscription import Subscription

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_IDLE_CHECK",
    "DEFAULT_RECONNECT_INITIAL",
    "DEFAULT_RECONNECT_MAX",
    "HubState",
    "ListenConnection",
    "ListeningChannels",
    "Route",
    "Subscribe",
    "Unsubscribe",
]

#: Seconds allowed for opening the LISTEN connection (each attempt).
DEFAULT_CONNECT_TIMEOUT = 5.0
#: First reconnect delay, in seconds (doubled per failed attempt, with jitter).
DEFAULT_RECONNECT_INITIAL = 0.1
#: Upper bound of the reconnect delay, in seconds.
DEFAULT_RECONNECT_MAX = 10.0
#: Seconds without anything read before the idle check (``SELECT 1``), which in
#: turn must answer within as many seconds; None switches it off.
DEFAULT_IDLE_CHECK = 5.0


class Route(Protocol):
    """What the connection needs from a channel's fan-out (a ChannelListener's handle)."""

    count: int

    def deliver(self, batch: tuple[Notification, ...]) -> None: ...

    def gap(self, event: Reconnected) -> None: ...

    def add(self, subscription: Subscription) -> None: ...

    def remove(self, subscription: Subscription) -> None: ...

    def stop(self) -> None: ...


@dataclass(slots=True)
class HubState:
    """State of a hub's LISTEN connection that must survive a restart of its actor.

    Mutated only from the ListenConnection actor's greenlet (the hub reads it).
    """

    dsn: str = field(repr=False)  # carries the password
    application_name: str
    source: str
    spawn_route: Callable[[str], Route]
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    reconnect_initial: float = DEFAULT_RECONNECT_INITIAL
    reconnect_max: float = DEFAULT_RECONNECT_MAX
    idle_check: float | None = DEFAULT_IDLE_CHECK
    routes: dict[str, Route] = field(default_factory=dict)
    received: int = 0  # notifications received so far: also the last seq handed out
    reconnects: int = 0
    started: bool = False
    connected: bool = False
    up: Event = field(default_factory=Event)  # set while connected (for waiters)
    down: Event = field(default_factory=Event)  # set while disconnected
    backend_pid: int | None = None


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Add a subscription; LISTEN on its channel if it is the first (ask it)."""

    subscription: Subscription


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Remove a subscription; UNLISTEN its channel if it was the last (ask or tell)."""

    subscription: Subscription


@dataclass(frozen=True, slots=True)
class ListeningChannels:
    """Ask for ``pg_listening_channels()`` as the server sees it on the LISTEN connection."""


@dataclass(frozen=True, slots=True)
class _Readable:
    generation: int


@dataclass(frozen=True, slots=True)
class _Idle:
    """Nothing was read for ``idle_check`` seconds: check the connection."""

    generation: int


@dataclass(frozen=True, slots=True)
class _Reconnect:
    pass


@dataclass(frozen=True, slots=True)
class Follow:
    """Listen on another server from now on (the primary changed): reconnect there at once."""

    dsn: str = field(repr=False)  # carries the password
    reason: str


@dataclass(frozen=True, slots=True)
class _ReaderFailed:
    error: BaseException


# Channels per LISTEN round trip when (re)connecting.
_LISTEN_CHUNK = 500
_LOST = (psycopg2.OperationalError, psycopg2.InterfaceError)


class _IdleTimeout(Exception):
    """Raised by the reader's wait when nothing was readable for ``idle_check`` seconds."""


def _oneline(exc: BaseException) -> str:
    """An error's message on one line, passwords masked (libpq messages span lines)."""
    return " ".join(redact(str(exc)).split())


def _listen_sql(verb: str, channels: list[str]) -> sql.Composed:
    return sql.SQL("; ").join(
        sql.SQL(verb + " {}").format(sql.Identifier(channel)) for channel in channels
    )


class ListenConnection(Actor):
    """Owns the hub's LISTEN connection, its reader greenlet and its reconnects."""

    def __init__(self, state: HubState) -> None:
        super().__init__()
        self._state = state
        self._conn: Any = None
        self._reader: gevent.Greenlet | None = None
        self._generation = 0
        self._attempt = 0
        self._timer: Any = None
        self._lost_reason = ""
        self._log = get_logger("gdbpool.listener", hub=state.source)

    # -- lifecycle ----------------------------------------------------------

    def on_start(self) -> None:
        state = self._state
        first, state.started = not state.started, True
        if first:
            self._connect()  # fail fast: a bad DSN or a standby is the caller's error
            return
        self._lost_reason = "listen connection actor restarted after a crash"
        try:
            self._connect()
        except (PoolConnectionError, psycopg2.Error) as exc:
            self._connection_lost(exc)
            return
        self._resumed()

    def on_stop(self) -> None:
        self._disconnect()

    def on_failure(self, exc: BaseException) -> None:
        self._disconnect()

    # -- handlers -----------------------------------------------------------

    @handles(Subscribe)
    def _subscribe(self, msg: Subscribe) -> None:
        sub = msg.subscription
        route = self._state.routes.get(sub.channel)
        if route is None:
            route = self._state.spawn_route(sub.channel)
            self._state.routes[sub.channel] = route
            route.add(sub)  # before LISTEN: the route sees every notification from then on
            route.count += 1
            self._execute("LISTEN", sub.channel)
        else:
            route.add(sub)
            route.count += 1

    @handles(Unsubscribe)
    def _unsubscribe(self, msg: Unsubscribe) -> None:
        sub = msg.subscription
        route = self._state.routes.get(sub.channel)
        if route is None:
            return
        route.remove(sub)
        route.count -= 1
        if route.count <= 0:
            del self._state.routes[sub.channel]
            self._execute("UNLISTEN", sub.channel)
            route.stop()

    @handles(ListeningChannels)
    def _listening(self, msg: ListeningChannels) -> list[str]:
        if self._conn is None:
            raise PoolConnectionError(
                f"the LISTEN connection is down (reconnecting): {self._lost_reason}"
            )
        with self._conn.cursor() as cur:
            cur.execute("SELECT pg_listening_channels()")
            channels = sorted(row[0] for row in cur.fetchall())
        self._route()
        return channels

    @handles(_Readable)
    def _readable(self, msg: _Readable) -> bool:
        """Read what the socket holds; False tells a stale or orphaned reader to exit."""
        if msg.generation != self._generation or self._conn is None:
            return False
        try:
            self._conn.poll()
        except _LOST as exc:
            self._connection_lost(exc)
            return False
        self._route()
        return True

    @handles(_Idle)
    def _idle(self, msg: _Idle) -> bool:
        """``SELECT 1`` bounded by ``idle_check``; False tells a stale reader to exit."""
        conn = self._conn
        limit = self._state.idle_check
        if msg.generation != self._generation or conn is None or limit is None:
            return False
        fired: list[bool] = []

        def expire() -> None:
            fired.append(True)
            shutdown_socket(conn)  # the pending read fails at once: no cancel, no wait

        timer = gevent.spawn_later(limit, expire)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        except _LOST as lost:
            # A reset lands here as well as the timer's shutdown: both are a lost
            # connection to reconnect, never a crash of this actor.
            exc: BaseException = lost
            if fired:
                exc = PoolConnectionError(
                    f"no answer to the idle check (SELECT 1) within {limit} s "
                    "(half-open connection?)"
                )
            self._connection_lost(exc)
            return False
        finally:
            timer.kill(block=False)
        self._route()  # notifications read along with the reply
        return True

    @handles(_Reconnect)
    def _reconnect(self, msg: _Reconnect) -> None:
        self._timer = None
        if self._conn is not None:
            return
        try:
            self._connect()
        except (PoolConnectionError, ConfigurationError, psycopg2.Error) as exc:
            self._attempt += 1
            self._schedule_reconnect(exc)
            return
        self._resumed()

    @handles(Follow)
    def _follow(self, msg: Follow) -> None:
        """Move to ``msg.dsn``: subscribers get one Reconnected whose reason is ``msg.reason``."""
        self._state.dsn = msg.dsn
        self._lost_reason = msg.reason
        self._log.info("listen_following", server=describe_dsn(msg.dsn), reason=msg.reason)
        self._disconnect()  # also cancels a reconnect timer aimed at the old server
        self._attempt = 0
        try:
            self._connect()
        except (PoolConnectionError, ConfigurationError, psycopg2.Error) as exc:
            self._schedule_reconnect(exc)
            return
        self._resumed()

    @handles(_ReaderFailed)
    def _reader_failed(self, msg: _ReaderFailed) -> None:
        raise msg.error  # crash: the supervisor restarts us, we reconnect and report a gap

    # -- the connection -----------------------------------------------------

    def _connect(self) -> None:
        state = self._state
        where = describe_dsn(state.dsn)
        conn: Any = None
        try:
            with gevent.Timeout(
                state.connect_timeout,
                PoolConnectionError(
                    f"LISTEN connection to {where} not established within {state.connect_timeout} s"
                ),
            ):
                conn = psycopg2.connect(
                    state.dsn,
                    application_name=state.application_name,
                    **keepalive_options(state.dsn),
                )
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_is_in_recovery(), pg_backend_pid()")
                    in_recovery, pid = cur.fetchone()
                    if in_recovery:
                        raise ConfigurationError(
                            f"{where} is a standby; LISTEN needs the primary's DSN"
                        )
                    channels = list(state.routes)
                    for i in range(0, len(channels), _LISTEN_CHUNK):
                        cur.execute(_listen_sql("LISTEN", channels[i : i + _LISTEN_CHUNK]))
        except psycopg2.Error as exc:
            if conn is not None:
                conn.close()
            raise PoolConnectionError(
                f"cannot open the LISTEN connection to {where}: {_oneline(exc)}"
            ) from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        self._conn = conn
        self._generation += 1
        state.connected = True
        state.down.clear()
        state.up.set()
        state.backend_pid = pid
        reader = gevent.spawn(self._read, conn.fileno(), self._generation)
        reader.name = f"listen-reader:{state.source}"
        self._reader = reader
        self._log.info("listen_connected", server=where, channels=len(channels), backend_pid=pid)

    def _read(self, fileno: int, generation: int) -> None:
        """The reader greenlet: wait for the socket, let the actor read, repeat.

        After ``idle_check`` seconds with nothing to read it asks for an idle
        check instead.
        """
        ref = self.ref
        readable = _Readable(generation)
        idle = _Idle(generation)
        limit = self._state.idle_check
        try:
            while True:
                try:
                    wait_read(fileno, timeout=limit, timeout_exc=_IdleTimeout)
                    message: _Readable | _Idle = readable
                except _IdleTimeout:
                    message = idle
                if not ref.ask(message).get():
                    return
        except ActorError:
            return  # the actor is stopping
        except Exception as exc:
            with contextlib.suppress(ActorError):
                ref.tell(_ReaderFailed(exc))

    def _execute(self, verb: str, channel: str) -> None:
        """Run LISTEN/UNLISTEN now, or leave it to the next reconnect when down."""
        if self._conn is None:
            return
        try:
            with self._conn.cursor() as cur:
                cur.execute(_listen_sql(verb, [channel]))
        except _LOST as exc:
            self._connection_lost(exc)
            return
        except psycopg2.Error as exc:
            raise NotificationError(f"{verb} {channel!r} failed: {exc}") from exc
        self._route()  # notifications read along with the statement's reply

    def _route(self) -> None:
        """Number the notifications read so far and tell each channel's route its batch."""
        conn = self._conn
        batch = conn.notifies
        if not batch:
            return
        conn.notifies = []  # swap, not copy: psycopg2 appends to whatever list is there
        state = self._state
        first = state.received + 1
        state.received += len(batch)
        now = time.time()
        source = state.source
        make = make_notification
        items = [
            make(n.channel, n.payload, n.pid, now, seq, source)
            for seq, n in enumerate(batch, first)
        ]
        routes = state.routes
        channels = {n.channel for n in batch}
        if len(channels) == 1:
            self._deliver(routes, channels.pop(), tuple(items))
            return
        groups: dict[str, list[Notification]] = {channel: [] for channel in channels}
        for item in items:
            groups[item.channel].append(item)
        for channel, group in groups.items():
            self._deliver(routes, channel, tuple(group))

    def _deliver(
        self, routes: dict[str, Route], channel: str, batch: tuple[Notification, ...]
    ) -> None:
        route = routes.get(channel)
        if route is None:  # arrived while its UNLISTEN was on the way
            return
        try:
            route.deliver(batch)
        except ActorError as exc:
            self._log.error("route_failed", channel=channel, error=str(exc))

    def _connection_lost(self, exc: BaseException) -> None:
        self._lost_reason = f"{type(exc).__name__}: {_oneline(exc)}"
        self._log.warning("connection_lost", reason=self._lost_reason)
        self._disconnect()
        self._attempt = 0
        self._schedule_reconnect(None)

    def _schedule_reconnect(self, error: BaseException | None) -> None:
        state = self._state
        ceiling = min(state.reconnect_max, state.reconnect_initial * 2**self._attempt)
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if error is not None:
            self._log.warning(
                "reconnect_failed",
                attempt=self._attempt,
                retry_in=round(delay, 3),
                error=_oneline(error),
            )
        self._timer = gevent.get_hub().loop.timer(delay)
        self._timer.start(self._fire_reconnect)

    def _fire_reconnect(self) -> None:
        # Runs in the hub: tell() on an unbounded mailbox never blocks.
        with contextlib.suppress(ActorError):
            self.ref.tell(_Reconnect())

    def _resumed(self) -> None:
        state = self._state
        state.reconnects += 1
        event = Reconnected(channels=tuple(state.routes), at=time.time(), reason=self._lost_reason)
        self._log.info("listen_resumed", channels=len(event.channels), reason=self._lost_reason)
        for route in list(state.routes.values()):
            try:
                route.gap(event)
            except ActorError as exc:
                self._log.error("route_failed", error=str(exc))

    def _disconnect(self) -> None:
        self._generation += 1
        self._state.connected = False
        self._state.up.clear()
        self._state.down.set()
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.close()
        reader, self._reader = self._reader, None
        if reader is not None and not reader.dead and reader is not gevent.getcurrent():
            reader.kill(block=True, timeout=1.0)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
