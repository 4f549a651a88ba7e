"""NotificationHub: LISTEN/NOTIFY for one database, and its ChannelListener actors.

A :class:`NotificationHub` is the complete LISTEN/NOTIFY service for one
database: one shared LISTEN connection (owned by a
:class:`~gdbpool.notify.listen_connection.ListenConnection` actor, see there for
reading and reconnecting), one :class:`ChannelListener` actor per channel with
at least one subscriber (below the hub's messages, above the hub), and a
lazily opened connection for :meth:`notify`.
All of them are children of one ``actors.Supervisor``.

Flow of a notification: the connection's reader greenlet sees the socket
readable → the connection actor drains ``conn.notifies``, numbers them and
tells each channel's listener one batch → the listener offers the batch to
every subscription of the channel, without waiting (each subscription applies
its own bound and overflow policy).  A subscriber that never reads only loses
its own notifications.

Channels with no subscriber left are UNLISTENed and their listener stops.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.lock
import psycopg2
from gevent.event import Event

from actors import Actor, ActorError, ActorRef, AskTimeout, Supervisor, SupervisorGaveUp, handles
from gdbpool.errors import (
    ConfigurationError,
    GDBPoolError,
    NotificationError,
    PoolClosed,
    PoolConnectionError,
)
from gdbpool.green import ensure_green
from gdbpool.logging import describe_dsn, get_logger, redact
from gdbpool.notify.listen_connection import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IDLE_CHECK,
    DEFAULT_RECONNECT_INITIAL,
    DEFAULT_RECONNECT_MAX,
    Follow,
    HubState,
    ListenConnection,
    ListeningChannels,
    Route,
    Subscribe,
    Unsubscribe,
)
from gdbpool.notify.notification import (
    Notification,
    Reconnected,
    check_channel,
    check_payload,
)
from gdbpool.notify.subscription import (
    DEFAULT_MAXSIZE,
    DEFAULT_OVERFLOW,
    Overflow,
    QueueSubscription,
    Subscription,
    check_subscription_options,
)

__all__ = [
    "DEFAULT_APPLICATION_NAME",
    "DEFAULT_COMMAND_TIMEOUT",
    "ChannelListener",
    "NotificationHub",
]

# -- ChannelListener ------------------------------------------------------------------
# The hub starts one per channel with at least one subscriber, as a child of its
# supervisor. The hub's ListenConnection reaches it through a _ListenerRoute (the
# connection's Route), telling it Deliver batches and Relistened events and
# adding/removing subscribers. Its subscribers live in a ListenerState, which
# outlives a supervisor restart.


@dataclass(frozen=True, slots=True)
class Deliver:
    """Notifications for the listener's channel, in receive order."""

    batch: tuple[Notification, ...]


@dataclass(frozen=True, slots=True)
class Relistened:
    """The LISTEN connection was re-established: tell every subscription."""

    event: Reconnected


@dataclass(frozen=True, slots=True)
class AddSubscriber:
    subscription: Subscription


@dataclass(frozen=True, slots=True)
class RemoveSubscriber:
    subscription: Subscription


@dataclass(slots=True)
class ListenerState:
    """A ChannelListener's subscribers, kept across supervisor restarts."""

    subscribers: list[Subscription] = field(default_factory=list)
    starts: int = 0


class ChannelListener(Actor):
    """Fans one channel's notifications out to its subscriptions.

    Never waits on a subscriber.  A subscription whose queue raises (a
    ``listen_on`` queue with a broken ``put_nowait``) is closed and logged, the
    others are unaffected.  After a crash the supervisor starts a fresh
    instance on the same subscribers, which first gives each a
    :class:`Reconnected` event (the batch being handled may have been lost).
    """

    def __init__(self, channel: str, state: ListenerState, hub: NotificationHub) -> None:
        super().__init__()
        self.channel = channel
        self._state = state
        self._hub = hub
        self._log = get_logger("gdbpool.listener", hub=hub.source, channel=channel)

    def on_start(self) -> None:
        self._state.starts += 1
        if self._state.starts > 1:
            self._gap(Reconnected((self.channel,), time.time(), "channel listener restarted"))

    @handles(Deliver)
    def _deliver(self, msg: Deliver) -> None:
        batch = msg.batch
        for sub in self._state.subscribers:
            try:
                sub._offer(batch)
            except Exception:
                self._faulty(sub)

    @handles(Relistened)
    def _on_relistened(self, msg: Relistened) -> None:
        self._gap(msg.event)

    @handles(AddSubscriber)
    def _add(self, msg: AddSubscriber) -> None:
        self._state.subscribers.append(msg.subscription)

    @handles(RemoveSubscriber)
    def _remove(self, msg: RemoveSubscriber) -> None:
        if msg.subscription in self._state.subscribers:
            self._state.subscribers.remove(msg.subscription)

    def _gap(self, event: Reconnected) -> None:
        for sub in self._state.subscribers:
            sub.gaps += 1
            try:
                sub._offer_gap(event)
            except Exception:
                self._faulty(sub)

    def _faulty(self, sub: Subscription) -> None:
        self._log.exception("subscriber_failed")
        self._state.subscribers = [s for s in self._state.subscribers if s is not sub]
        sub._shut("its queue raised while receiving; see the gdbpool.listener log")
        self._hub._release(sub)


class _ListenerRoute:
    """The connection actor's handle on one channel's ChannelListener."""

    __slots__ = ("count", "ref")

    def __init__(self, ref: ActorRef) -> None:
        self.ref = ref
        self.count = 0

    def deliver(self, batch: tuple[Notification, ...]) -> None:
        self.ref.tell(Deliver(batch))

    def gap(self, event: Reconnected) -> None:
        self.ref.tell(Relistened(event))

    def add(self, subscription: Subscription) -> None:
        self.ref.tell(AddSubscriber(subscription))

    def remove(self, subscription: Subscription) -> None:
        self.ref.tell(RemoveSubscriber(subscription))

    def stop(self) -> None:
        self.ref.stop()


# -- NotificationHub ------------------------------------------------------------------

#: application_name of the LISTEN connection (the notify connection adds "/notify").
DEFAULT_APPLICATION_NAME = "gdbpool-listener"
#: Seconds subscribe()/close() wait for the LISTEN connection actor to confirm.
DEFAULT_COMMAND_TIMEOUT = 10.0


class NotificationHub:
    """LISTEN/NOTIFY for one database: subscribe, listen_on, notify, close.

    ``dsn`` must reach the primary (a standby refuses LISTEN; the constructor
    says so).  The constructor opens the LISTEN connection and raises
    :class:`PoolConnectionError` when it cannot (fail fast); later losses are
    reconnected in the background.

    Tunables (defaults): ``application_name="gdbpool-listener"`` (the LISTEN
    connection's, the notify connection adds ``/notify``);
    ``connect_timeout=5.0`` s per connection attempt; ``reconnect_initial=0.1``
    and ``reconnect_max=10.0`` s bound the reconnect backoff (doubling, half
    of it jitter, retried until closed); ``command_timeout=10.0`` s bounds how
    long ``subscribe``/``close`` wait for the LISTEN connection's actor;
    ``idle_check=5.0`` s: after that long with nothing read, a ``SELECT 1``
    must answer within as long again, or the connection is taken for lost
    (a half-open connection after a network failure) and reconnected — None
    switches the check off (libpq TCP keepalives stay on).

    Every subscriber receives :class:`Notification` items and, after a
    reconnect, a :class:`Reconnected` gap event.
    """

    def __init__(
        self,
        dsn: str,
        *,
        application_name: str = DEFAULT_APPLICATION_NAME,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        reconnect_initial: float = DEFAULT_RECONNECT_INITIAL,
        reconnect_max: float = DEFAULT_RECONNECT_MAX,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        idle_check: float | None = DEFAULT_IDLE_CHECK,
        name: str | None = None,
    ) -> None:
        if idle_check is not None and not idle_check > 0:
            raise ConfigurationError(
                f"idle_check must be a number of seconds > 0 (or None to switch it off), "
                f"not {idle_check!r}"
            )
        ensure_green()  # as a pool does (docs/design/green.md)
        self.source = uuid.uuid4().hex[:12]
        self.name = name or f"hub-{self.source}"
        self.command_timeout = command_timeout
        self._dsn = dsn
        self._application_name = application_name
        self._connect_timeout = connect_timeout
        self._closed = False
        self._close_reason = ""
        self._subscriptions: set[Subscription] = set()
        # delivered/dropped/gaps of closed subscriptions by (channel, overflow), so the
        # totals subscription_stats() reports never go down (metrics counters).
        self._retired: dict[tuple[str, str], list[int]] = {}
        self._notify_conn: Any = None
        self._notify_lock = gevent.lock.BoundedSemaphore()
        self._log = get_logger("gdbpool.listener", hub=self.source)
        self._supervisor = Supervisor(f"{self.name}-supervisor", on_give_up=self._gave_up)
        self._state = HubState(
            dsn=dsn,
            application_name=application_name,
            source=self.source,
            spawn_route=self._spawn_route,
            connect_timeout=connect_timeout,
            reconnect_initial=reconnect_initial,
            reconnect_max=reconnect_max,
            idle_check=idle_check,
        )
        self._connection: ActorRef | None = None
        try:
            self._connection = self._supervisor.spawn(
                ListenConnection,
                self._state,
                name=f"{self.name}-connection",
                start_timeout=connect_timeout + 5.0,
            )
        except ActorError as exc:
            self._supervisor.stop()
            cause = exc.__cause__
            if isinstance(cause, GDBPoolError):
                raise cause from exc
            raise PoolConnectionError(
                f"cannot start the LISTEN connection to {describe_dsn(dsn)}: {exc}"
            ) from exc

    # -- public API ---------------------------------------------------------

    def subscribe(
        self, channel: str, maxsize: int = DEFAULT_MAXSIZE, overflow: Overflow = DEFAULT_OVERFLOW
    ) -> Subscription:
        """Subscribe to ``channel``; LISTEN on it unless already listening.

        Returns once the server has confirmed the LISTEN (or, while the
        connection is down, once the channel is recorded for the reconnect).
        ``maxsize``/``overflow``: see :class:`Subscription`.  Raises
        :class:`NotificationError` for a bad channel name,
        :class:`ConfigurationError` for bad options, :class:`PoolClosed` after
        :meth:`close`.
        """
        check_channel(channel)
        check_subscription_options(maxsize, overflow)
        sub = Subscription(
            channel,
            maxsize=maxsize,
            overflow=overflow,
            on_close=self._unsubscribe,
            log_context={"hub": self.source},
        )
        self._register(sub)
        return sub

    def listen_on(self, result_queue: Any, channel_name: str, cancel_event: Event) -> None:
        """Deliver ``channel_name``'s notifications into ``result_queue`` until ``cancel_event``.

        The original gDBPool API.  Blocks the calling greenlet (waiting on the
        event, no polling) and returns once ``cancel_event`` is set or the hub
        closes, after unsubscribing (UNLISTEN if it was the last subscriber).
        Items are :class:`Notification` objects and, after a reconnect,
        :class:`Reconnected` gap events.  The listener uses
        ``result_queue.put_nowait``: with a bounded queue that is full, the
        notification is dropped (counted and logged), never waited for.
        """
        check_channel(channel_name)
        sub = QueueSubscription(
            channel_name,
            result_queue,
            on_close=self._unsubscribe,
            log_context={"hub": self.source},
        )
        self._register(sub)
        try:
            gevent.wait([cancel_event, sub._closed_event], count=1)
        finally:
            sub.close()

    def notify(self, channel: str, payload: str = "") -> None:
        """Send ``NOTIFY channel, payload`` (as ``SELECT pg_notify(%s, %s)``, parameters).

        Checked before any round trip: :class:`NotificationError` for a bad
        channel name or a payload over 7999 UTF-8 bytes.  Runs on the hub's own
        autocommit connection (opened on first use, application_name
        ``<application_name>/notify``; calls are serialised on it).  If that
        connection turns out to be broken, it is reopened and the statement
        retried once; :class:`PoolConnectionError` when the server cannot be
        reached.
        """
        check_channel(channel)
        check_payload(payload)
        self._on_notify_connection(
            "SELECT pg_notify(%s, %s)", (channel, payload), f"NOTIFY {channel!r}"
        )

    def queue_usage(self) -> float:
        """``pg_notification_queue_usage()`` of the server (0..1), on the NOTIFY connection.

        The fraction of the server's NOTIFY queue held by notifications some
        listener has not read yet (a stuck listener fills it; at 1.0 NOTIFY
        fails). Read by :mod:`gdbpool.metrics`; same connection rules as :meth:`notify`.
        """
        row = self._on_notify_connection(
            "SELECT pg_notification_queue_usage()", (), "pg_notification_queue_usage()"
        )
        return float(row[0])

    def _on_notify_connection(self, sql: str, params: tuple[Any, ...], what: str) -> Any:
        """Run ``sql`` on the notify connection (reopened and retried once); its first row."""
        self._check_open()
        with self._notify_lock:
            for attempt in (1, 2):
                fresh = self._notify_conn is None
                conn = self._notify_connection()
                try:
                    with conn.cursor() as cur:
                        cur.execute(sql, params)
                        return cur.fetchone()
                except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                    self._drop_notify_connection()
                    if fresh or attempt == 2:
                        raise PoolConnectionError(
                            f"{what} on {describe_dsn(self._dsn)} failed: "
                            f"{redact(str(exc)).strip()}"
                        ) from exc
                except psycopg2.Error as exc:
                    raise NotificationError(f"{what} failed: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def listening_channels(self) -> list[str]:
        """``pg_listening_channels()`` of the hub's LISTEN connection, sorted (a round trip)."""
        self._check_open()
        result: list[str] = self._ask(ListeningChannels(), "pg_listening_channels()")
        return result

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the LISTEN connection is up (e.g. after a loss); False on timeout."""
        return bool(self._state.up.wait(timeout))

    @property
    def channels(self) -> tuple[str, ...]:
        """Channels with at least one subscriber (the hub's channel table)."""
        return tuple(self._state.routes)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or the hub's supervisor gave up."""
        return self._closed

    def stats(self) -> dict[str, int]:
        """Counters: channels, subscriptions, received, reconnects, connected (0/1).

        Also ``restarts`` (of the hub's actors, by its supervisor) and
        ``mailbox_depth`` (the LISTEN connection actor's).
        """
        connection = self._connection
        return {
            "channels": len(self._state.routes),
            "subscriptions": len(self._subscriptions),
            "received": self._state.received,
            "reconnects": self._state.reconnects,
            "connected": int(self._state.connected),
            "restarts": self._supervisor.restarts,
            "mailbox_depth": 0 if connection is None else connection.mailbox_depth,
        }

    def subscription_stats(self) -> list[dict[str, Any]]:
        """Subscription counters by ``(channel, overflow)``, closed subscriptions included.

        One dict per channel and drop policy: ``channel``, ``overflow``,
        ``delivered`` (read by consumers), ``dropped`` (by the policy), ``gaps``
        (reconnects told), ``pending`` (queued now), ``open`` (subscriptions open
        now). Totals only grow: a closed subscription's counts stay in them.
        """
        out: dict[tuple[str, str], dict[str, Any]] = {}

        def entry(key: tuple[str, str]) -> dict[str, Any]:
            found = out.get(key)
            if found is None:
                found = out[key] = {"channel": key[0], "overflow": key[1], "delivered": 0,
                                    "dropped": 0, "gaps": 0, "pending": 0, "open": 0}  # fmt: skip
            return found

        for key, (delivered, dropped, gaps) in self._retired.items():
            e = entry(key)
            e["delivered"] += delivered
            e["dropped"] += dropped
            e["gaps"] += gaps
        for sub in list(self._subscriptions):
            e = entry((sub.channel, sub.overflow))
            e["delivered"] += sub.delivered
            e["dropped"] += sub.dropped
            e["gaps"] += sub.gaps
            e["pending"] += sub.pending
            e["open"] += 1
        return list(out.values())

    def close(self, timeout: float = 5.0) -> None:
        """Close every subscription, stop every listener and both connections (idempotent).

        Iterations over subscriptions end; ``listen_on`` calls return.  No
        greenlet of the hub is left running afterwards.  ``timeout`` bounds
        each actor's graceful stop.
        """
        if self._closed and not self._subscriptions and self._connection is None:
            return
        self._shutdown("hub closed", timeout)

    def __enter__(self) -> NotificationHub:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<NotificationHub {self.name!r} {state} channels={len(self._state.routes)}>"

    # -- internals ----------------------------------------------------------

    def _spawn_route(self, channel: str) -> Route:
        ref = self._supervisor.spawn(
            ChannelListener, channel, ListenerState(), self, name=f"{self.name}-listener:{channel}"
        )
        return _ListenerRoute(ref)

    def _register(self, sub: Subscription) -> None:
        self._check_open()
        self._subscriptions.add(sub)
        try:
            self._ask(Subscribe(sub), f"LISTEN {sub.channel!r}")
        except BaseException:
            self._forget(sub)
            sub._shut("subscribing failed")
            self._release(sub)
            raise

    def _unsubscribe(self, sub: Subscription) -> None:
        """Subscription.close(): wait (bounded) until the channel table dropped it."""
        self._forget(sub)
        if self._closed:
            return
        with contextlib.suppress(PoolClosed):
            self._ask(Unsubscribe(sub), f"UNLISTEN {sub.channel!r}")

    def _release(self, sub: Subscription) -> None:
        """Forget ``sub`` without waiting (from actors, which must not block on each other)."""
        self._forget(sub)
        if self._connection is not None:
            with contextlib.suppress(ActorError):
                self._connection.tell(Unsubscribe(sub))

    def _forget(self, sub: Subscription) -> None:
        """Drop ``sub`` from the open set, keeping its counts in the retired totals."""
        if sub in self._subscriptions:
            self._subscriptions.discard(sub)
            totals = self._retired.setdefault((sub.channel, sub.overflow), [0, 0, 0])
            totals[0] += sub.delivered
            totals[1] += sub.dropped
            totals[2] += sub.gaps

    def _ask(self, message: object, what: str) -> Any:
        connection = self._connection
        if connection is None:
            raise PoolClosed(f"notification hub {self.name!r} is closed ({self._close_reason})")
        try:
            return connection.ask(message, timeout=self.command_timeout).get()
        except AskTimeout as exc:
            raise NotificationError(
                f"{what} not confirmed within {self.command_timeout} s (command_timeout)"
            ) from exc
        except ActorError as exc:
            raise PoolClosed(f"notification hub {self.name!r} is closed: {exc}") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosed(f"notification hub {self.name!r} is closed ({self._close_reason})")

    def _notify_connection(self) -> Any:
        if self._notify_conn is None:
            try:
                with gevent.Timeout(
                    self._connect_timeout,
                    PoolConnectionError(
                        f"notify connection to {describe_dsn(self._dsn)} not established within "
                        f"{self._connect_timeout} s"
                    ),
                ):
                    conn = psycopg2.connect(
                        self._dsn, application_name=f"{self._application_name}/notify"
                    )
            except psycopg2.Error as exc:
                raise PoolConnectionError(
                    f"cannot open the notify connection to {describe_dsn(self._dsn)}: "
                    f"{redact(str(exc)).strip()}"
                ) from exc
            conn.autocommit = True
            self._notify_conn = conn
        return self._notify_conn

    def _follow(self, dsn: str, reason: str) -> None:
        """Listen on ``dsn`` from now on (the interaction pool's primary changed); never blocks.

        Subscribers get one :class:`Reconnected` whose ``reason`` is ``reason``,
        then the new server's notifications; ``notify()`` goes there too.
        """
        if self._closed or self._connection is None:
            return
        self._dsn = dsn
        self._drop_notify_connection()
        with contextlib.suppress(ActorError):
            self._connection.tell(Follow(dsn, reason))

    def _drop_notify_connection(self) -> None:
        conn, self._notify_conn = self._notify_conn, None
        if conn is not None:
            conn.close()

    def _gave_up(self, error: SupervisorGaveUp) -> None:
        self._log.error("hub_failed", error=str(error))
        gevent.spawn(self._shutdown, f"listener supervisor gave up: {error}", 5.0)

    def _shutdown(self, reason: str, timeout: float) -> None:
        self._closed = True
        if not self._close_reason:
            self._close_reason = reason
        subs = list(self._subscriptions)
        for sub in subs:
            self._forget(sub)
            sub._shut(reason)
        self._supervisor.stop(timeout)
        self._connection = None
        self._state.routes.clear()
        with self._notify_lock:
            self._drop_notify_connection()
        self._log.info("hub_closed", reason=reason)
