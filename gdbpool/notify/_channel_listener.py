"""ChannelListener: the actor that fans one channel's notifications out to its subscriptions.

A :class:`~gdbpool.notify.hub.NotificationHub` starts one per channel
with at least one subscriber, as a child of its supervisor.  The hub's
:class:`~gdbpool.notify.listen_connection.ListenConnection` reaches it through a
:class:`_ListenerRoute` (the connection's ``Route``), telling it ``Deliver``
batches and ``Gap`` events and adding/removing subscribers.  Its subscribers
live in a :class:`ListenerState`, which outlives a supervisor restart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from actors import Actor, ActorRef, handles
from gdbpool.logging import get_logger
from gdbpool.notify.notification import Notification, Reconnected
from gdbpool.notify.subscription import Subscription

if TYPE_CHECKING:
    from gdbpool.notify.hub import NotificationHub

__all__ = [
    "AddSubscriber",
    "ChannelListener",
    "Deliver",
    "Gap",
    "ListenerState",
    "RemoveSubscriber",
]


@dataclass(frozen=True, slots=True)
class Deliver:
    """Notifications for the listener's channel, in receive order."""

    batch: tuple[Notification, ...]


@dataclass(frozen=True, slots=True)
class Gap:
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

    @handles(Gap)
    def _on_gap(self, msg: Gap) -> None:
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
        self.ref.tell(Gap(event))

    def add(self, subscription: Subscription) -> None:
        self.ref.tell(AddSubscriber(subscription))

    def remove(self, subscription: Subscription) -> None:
        self.ref.tell(RemoveSubscriber(subscription))

    def stop(self) -> None:
        self.ref.stop()
