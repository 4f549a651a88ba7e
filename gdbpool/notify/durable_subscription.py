"""DurableSubscription: a subscription that heals its gaps from ``gdbpool.notify_log``.

Made by ``NotificationHub.subscribe(channel, durable=True, since=None)``.  Its
cursor is a snapshot horizon (every committed row of the channel whose xid is
below it has been delivered) plus the ids delivered at or above it; the rule
and why it never skips a late commit are in docs/design/durable.md.

The listener side only parses and queues (never a round trip).  Catch-up reads
run on the consumer's greenlet, inside :meth:`get`, when a gap is next in line
(a :class:`Reconnected` event, or notifications lost to overflow), so
recovered events come out before anything received after the gap.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import gevent

from gdbpool.errors import GDBPoolError
from gdbpool.notify.durable import CatchUp, parse
from gdbpool.notify.notification import Notification, Reconnected
from gdbpool.notify.subscription import Item, Overflow, Subscription

__all__ = ["DURABLE_REFRESH", "DurableSubscription"]

#: Seconds after which an idle durable subscription re-reads the log once (moving
#: its cursor forward, so ``prune_durable`` may delete what it has read).
DURABLE_REFRESH = 60.0
# After a failed catch-up read, live notifications flow on; the read is retried
# no sooner than this many seconds later.
_RETRY = 1.0

Reader = Callable[[str, "int | None", int], CatchUp]


class DurableSubscription(Subscription):
    """A :class:`Subscription` whose notifications survive reconnects and overflow.

    Every notification has ``log_id`` set and is delivered once; those read
    back from the table after a gap have ``replayed=True``.  A gap healed this
    way is not shown to the consumer (``gaps`` still counts it); a
    :class:`Reconnected` event is returned only when the catch-up read itself
    failed (it is retried on later reads, at most once a second).
    """

    def __init__(
        self,
        channel: str,
        reader: Reader,
        *,
        since: int | None,
        maxsize: int,
        overflow: Overflow,
        on_close: Callable[[Subscription], None] | None = None,
        log_context: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            channel, maxsize=maxsize, overflow=overflow, on_close=on_close, log_context=log_context
        )
        self._reader = reader
        self._since = since
        self._after = since or 0  # ids at or below it are never delivered
        self._horizon = 0  # every committed row with xid below it was delivered
        self._seen: dict[int, int] = {}  # id -> xid, delivered with xid >= _horizon
        self._recovered: deque[Notification] = deque()
        # log id -> xid of queued live notifications (Notification has no xid field)
        self._xids: dict[int, int] = {}
        self._need_catchup = False
        self._last_read = 0.0
        self._retry_at = 0.0
        self.recovered = 0  # notifications read back from the table

    @property
    def cursor(self) -> int:
        """The horizon: rows of this channel with a lower xid were all delivered."""
        return self._horizon

    @property
    def last_log_id(self) -> int:
        """The highest log id delivered so far (``since=`` for a restarted subscriber)."""
        return max(self._seen, default=self._after)

    def _start(self) -> None:
        """The first read, after LISTEN is confirmed (on the subscribing greenlet)."""
        if self._since is None:
            found = self._reader(self.channel, None, 0)
            self._horizon = found.horizon
            self._seen = {row[0]: row[2] for row in found.rows}  # before us: not delivered
            self._last_read = time.monotonic()
        else:
            self._catch_up(0)

    # -- consumer side ------------------------------------------------------

    def get(self, timeout: float | None = None) -> Item:
        """As :meth:`Subscription.get`; gaps are healed from the log table first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._need_catchup and time.monotonic() >= self._retry_at:
                failed = self._try_catch_up()
                if failed is not None:
                    return failed
            if self._recovered:
                self.delivered += 1
                return self._recovered.popleft()
            idle = not self._items and not self.closed
            if idle and time.monotonic() - self._last_read > DURABLE_REFRESH:
                self._need_catchup = True
                continue
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._need_catchup and (remaining is None or remaining > 0):
                wait = max(0.0, self._retry_at - time.monotonic())
                remaining = wait if remaining is None else min(wait, remaining)
            try:
                item = super().get(remaining)
            except gevent.Timeout:
                if self._need_catchup and (deadline is None or time.monotonic() < deadline):
                    continue
                raise gevent.Timeout(timeout) from None
            if type(item) is Reconnected:
                self._need_catchup = True
                continue
            assert isinstance(item, Notification)
            if self._fresh(item):
                return item
            self.delivered -= 1  # a duplicate of one delivered already

    def _fresh(self, n: Notification) -> bool:
        """Decide once per live notification: deliver it, or it was delivered already."""
        log_id = n.log_id
        if log_id is None:
            return True  # a plain NOTIFY on a durable channel: passed through
        xid = self._xids.pop(log_id, None)
        if log_id <= self._after or log_id in self._seen:
            return False
        if xid is not None and xid < self._horizon:
            return False  # final before the last read: that read delivered it
        self._seen[log_id] = self._horizon if xid is None else xid
        return True

    def _try_catch_up(self) -> Reconnected | None:
        try:
            self._catch_up(self._horizon)
        except (GDBPoolError, OSError) as exc:
            self._retry_at = time.monotonic() + _RETRY
            self._log.warning("durable_catch_up_failed", error=str(exc))
            return Reconnected((self.channel,), time.time(), f"catch-up read failed: {exc}")
        return None

    def _catch_up(self, horizon: int) -> None:
        found = self._reader(self.channel, horizon, self._after)
        now = time.time()
        seen = self._seen
        added = 0
        for log_id, payload, xid in found.rows:
            if log_id in seen:
                continue
            seen[log_id] = xid
            added += 1
            n = Notification(
                self.channel, payload, 0, now, 0, "", replayed=True, log_id=log_id, lsn=found.lsn
            )
            self._recovered.append(n)
        self.recovered += added
        horizon = self._horizon = max(self._horizon, found.horizon)
        self._seen = {i: x for i, x in seen.items() if x >= horizon}
        queued = {n.log_id for n in self._items if type(n) is Notification}
        self._xids = {i: x for i, x in self._xids.items() if i in queued}  # drops leave
        self._need_catchup = False
        self._last_read = time.monotonic()

    # -- listener side ------------------------------------------------------

    def _offer(self, batch: Sequence[Notification]) -> None:
        """Split the id prefix off each payload, then queue as usual."""
        out = []
        xids = self._xids
        for n in batch:
            parsed = parse(n.payload)
            if parsed is None:
                out.append(n)
                continue
            log_id, xid, payload = parsed
            xids[log_id] = xid
            out.append(
                Notification(
                    n.channel,
                    payload,
                    n.pid,
                    n.received_at,
                    n.seq,
                    n.source,
                    log_id=log_id,
                    lsn=n.lsn,
                )
            )
        super()._offer(out)

    def _count_drops(self, n: int) -> None:
        super()._count_drops(n)
        self._need_catchup = True  # what was dropped is still in the table
