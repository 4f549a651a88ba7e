"""Subscription: one subscriber's bounded queue of notifications on one channel.

A channel's listener puts every notification into each of its subscriptions
without ever waiting: when a subscription is full, its overflow policy
decides what is lost, and the loss is counted (``dropped``) and logged once
per burst (a warning when dropping starts, an info line with the burst's
count when the subscriber has caught up), never once per message.  A slow
subscriber therefore never slows the listener or the other subscribers.

Counters (plain ints, stable names): ``delivered`` counts notifications
handed to the consumer by :meth:`Subscription.get` or iteration, ``dropped``
those lost to overflow, ``pending`` those waiting; every notification offered
is in exactly one of the three (until ``close()`` discards the pending ones).
:class:`~gdbpool.notify.notification.Reconnected` gap events are not counted: they
are never dropped, do not count against ``maxsize``, and consecutive ones
(nothing read in between) are folded into the latest.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, Self

import gevent
from gevent.event import Event

from gdbpool.errors import ConfigurationError, SubscriptionClosed
from gdbpool.logging import get_logger
from gdbpool.notify.notification import Notification, Reconnected

__all__ = ["DEFAULT_MAXSIZE", "DEFAULT_OVERFLOW", "Overflow", "Subscription"]

Overflow = Literal["drop_oldest", "drop_newest"]
Item = Notification | Reconnected

#: Default bound on a subscription's queue, in notifications.
DEFAULT_MAXSIZE = 1000
#: Default overflow policy: keep the most recent notifications.
DEFAULT_OVERFLOW: Overflow = "drop_oldest"


def check_subscription_options(maxsize: int, overflow: str) -> None:
    """Raise ConfigurationError unless ``maxsize`` >= 1 and ``overflow`` is a known policy."""
    if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
        raise ConfigurationError(f"maxsize must be a positive int, not {maxsize!r}")
    if overflow not in ("drop_oldest", "drop_newest"):
        raise ConfigurationError(
            f"overflow must be 'drop_oldest' or 'drop_newest', not {overflow!r}"
        )


class Subscription:
    """A subscriber's bounded queue of :class:`Notification` and :class:`Reconnected` items.

    Made by ``NotificationHub.subscribe()``, not directly.  Read it with
    :meth:`get` or by iterating (iteration ends when the subscription is
    closed); use it as a context manager to close it on exit.

    ``maxsize`` (default 1000) bounds the queue.  ``overflow`` says what a full
    queue loses: ``"drop_oldest"`` (default) evicts the oldest queued
    notification to make room, so the most recent ``maxsize`` are kept;
    ``"drop_newest"`` refuses the incoming one, so the queue keeps the oldest.

    :meth:`close` unsubscribes (the channel is UNLISTENed when this was its
    last subscriber) and discards what is still queued.  A hub that closes
    closes its subscriptions too.
    """

    def __init__(
        self,
        channel: str,
        *,
        maxsize: int = DEFAULT_MAXSIZE,
        overflow: Overflow = DEFAULT_OVERFLOW,
        on_close: Callable[[Subscription], None] | None = None,
        log_context: dict[str, Any] | None = None,
    ) -> None:
        check_subscription_options(maxsize, overflow)
        self.channel = channel
        self.maxsize = maxsize
        self.overflow: Overflow = overflow
        self.delivered = 0
        self.dropped = 0
        self.gaps = 0  # reconnects the hub told this subscription of (Reconnected events)
        self.closed = False
        self.close_reason = ""
        self._items: deque[Item] = deque()
        self._gaps = 0  # Reconnected events in _items (they do not count against maxsize)
        self._ready = Event()  # set while _items is non-empty or the subscription is closed
        self._closed_event = Event()
        self._on_close = on_close
        self._burst = 0  # drops in the current overflow burst (0: not overflowing)
        self._log = get_logger("gdbpool.listener", channel=channel, **(log_context or {}))

    # -- consumer side ------------------------------------------------------

    @property
    def pending(self) -> int:
        """Notifications queued and not read yet."""
        return len(self._items) - self._gaps

    def get(self, timeout: float | None = None) -> Item:
        """Return the next notification or gap event, waiting up to ``timeout`` seconds.

        ``timeout=None`` waits until something arrives or the subscription is
        closed.  Raises ``gevent.Timeout`` (a ``BaseException``, as for
        ``AsyncResult.get``) when ``timeout`` passes with nothing to read,
        and :class:`SubscriptionClosed` once the subscription is closed.
        """
        items = self._items
        if not items:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not items:
                if self.closed:
                    raise SubscriptionClosed(
                        f"subscription to channel {self.channel!r} is closed ({self.close_reason})"
                    )
                self._ready.clear()
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not self._ready.wait(remaining) and not items:
                    raise gevent.Timeout(timeout)
        item = items.popleft()
        if type(item) is Notification:
            self.delivered += 1
        else:
            self._gaps -= 1
        return item

    def __iter__(self) -> Iterator[Item]:
        return self

    def __next__(self) -> Item:
        try:
            return self.get()
        except SubscriptionClosed:
            raise StopIteration from None

    def close(self) -> None:
        """Unsubscribe, discard what is queued, and wake readers (idempotent).

        When this was the channel's last subscriber, the channel is UNLISTENed
        before ``close()`` returns (bounded by the hub's ``command_timeout``).
        """
        if self._shut("closed by its owner"):
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"<Subscription {self.channel!r} {state} pending={self.pending} "
            f"delivered={self.delivered} dropped={self.dropped}>"
        )

    # -- listener side (called from the channel's listener; never blocks) ---

    def _offer(self, batch: Sequence[Notification]) -> None:
        """Queue ``batch`` (in order) under the overflow policy, without waiting."""
        if self.closed:
            return
        items = self._items
        room = self.maxsize - (len(items) - self._gaps)
        if len(batch) <= room:
            items.extend(batch)
            if self._burst:
                self._end_burst()
        elif self.overflow == "drop_newest":
            if room > 0:
                items.extend(batch[:room])
            self._count_drops(len(batch) - max(room, 0))
        else:
            items.extend(batch)
            self._count_drops(self._evict_oldest(len(items) - self._gaps - self.maxsize))
        self._ready.set()

    def _offer_gap(self, event: Reconnected) -> None:
        """Queue a gap event; never dropped, folded into a gap event queued just before."""
        if self.closed:
            return
        items = self._items
        if items and type(items[-1]) is Reconnected:
            items[-1] = event
        else:
            items.append(event)
            self._gaps += 1
        self._ready.set()

    def _shut(self, reason: str) -> bool:
        """Close without unsubscribing (the hub is going away). False if already closed."""
        if self.closed:
            return False
        self.closed = True
        self.close_reason = reason
        self._items.clear()
        self._gaps = 0
        self._ready.set()
        self._closed_event.set()
        if self._burst:
            self._end_burst()
        return True

    def _evict_oldest(self, excess: int) -> int:
        items = self._items
        if not self._gaps:
            for _ in range(excess):
                items.popleft()
            return excess
        # Rare: keep gap events where they are, evict the oldest notifications around them.
        kept: deque[Item] = deque()
        evicted = 0
        for item in items:
            if evicted < excess and type(item) is Notification:
                evicted += 1
            else:
                kept.append(item)
        self._items = kept
        return evicted

    def _count_drops(self, n: int) -> None:
        self.dropped += n
        if not self._burst:
            self._log.warning("subscription_overflow", maxsize=self.maxsize, overflow=self.overflow)
        self._burst += n

    def _end_burst(self) -> None:
        self._log.info("subscription_caught_up", dropped_in_burst=self._burst, dropped=self.dropped)
        self._burst = 0


class QueueSubscription(Subscription):
    """A subscription that forwards into a caller's gevent queue (``listen_on``).

    Items go straight into ``result_queue`` with ``put_nowait``: the listener
    never waits on it.  If that queue is bounded and full, the incoming item is
    dropped and counted (``drop_newest``); gap events are dropped only then.
    ``delivered`` counts notifications put into the queue.
    """

    def __init__(
        self,
        channel: str,
        result_queue: Any,
        *,
        on_close: Callable[[Subscription], None] | None = None,
        log_context: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            channel, maxsize=1, overflow="drop_newest", on_close=on_close, log_context=log_context
        )
        self._put = result_queue.put_nowait

    def _offer(self, batch: Sequence[Notification]) -> None:
        if self.closed:
            return
        put = self._put
        for i, item in enumerate(batch):
            try:
                put(item)
            except gevent.queue.Full:
                self._count_drops(len(batch) - i)
                return
            self.delivered += 1
        if self._burst:
            self._end_burst()

    def _offer_gap(self, event: Reconnected) -> None:
        if self.closed:
            return
        try:
            self._put(event)
        except gevent.queue.Full:
            self._log.warning("gap_event_dropped", reason="result queue full")
