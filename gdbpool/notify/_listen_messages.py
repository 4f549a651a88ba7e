"""What a hub and its ListenConnection actor share: the HubState, the Route, the messages.

:class:`HubState` is the part of a hub's LISTEN connection that must survive a
supervisor restart of its :class:`~gdbpool.notify.listen_connection.ListenConnection`
actor (the channel table, the sequence counter, the tunables); a
:class:`Route` is the actor's handle on one channel's fan-out.  The messages
are what the hub asks of the actor (``Subscribe``, ``Unsubscribe``,
``ListeningChannels``) and what the actor's reader greenlet and timers tell it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gevent.event import Event

from gdbpool.notify.notification import Notification, Reconnected
from gdbpool.notify.subscription import Subscription

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_IDLE_CHECK",
    "DEFAULT_RECONNECT_INITIAL",
    "DEFAULT_RECONNECT_MAX",
    "HubState",
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
class _ReaderFailed:
    error: BaseException
