"""The wait queue a pool shares with its workers, and the checkout request it holds.

Requests that find no idle worker wait in a :class:`WaitQueue` in FIFO order:
the pool actor (:mod:`gdbpool.pool.pool_actor`) appends to it, times its requests
out and fails them on close; a worker that has just finished an interaction
takes the next waiting interaction from its head itself; under load
``submit()`` appends an interaction to the tail itself (:meth:`WaitQueue.offer`).
The :class:`_Checkout` request lives here because both the queue and the pool
actor need it (the pool actor imports this module, never the reverse).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from typing import Final

from gevent.event import AsyncResult

from gdbpool.interaction import Interaction

__all__ = ["WAIT_BUCKETS", "WaitQueue"]

#: Upper bounds (seconds) of the wait-time histogram buckets a WaitQueue keeps
#: (``le`` in the ``gdbpool_pool_wait_seconds`` metric; the last bucket is +Inf).
WAIT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0)


class _Checkout:
    """``get()``: lend a connection; the reply gets ``(conn, idle_since or None)``.

    A plain slotted class rather than a frozen dataclass: one is made per
    ``get()``, and a frozen dataclass's ``__init__`` costs twice as much.
    """

    __slots__ = ("reply", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.reply: AsyncResult = AsyncResult()

    def __repr__(self) -> str:
        return f"_Checkout(timeout={self.timeout!r})"


# One waiting request: (request, monotonic time it began waiting, deadline).
_Entry = tuple["Interaction | _Checkout", float, float]


class WaitQueue:
    """The FIFO of requests waiting for a connection: the pool's, shared with its workers.

    Like a balancing dispatcher's shared mailbox: the pool actor appends the
    requests that found no idle worker and does everything else with them
    (deadlines, counters, failing them on close); a worker that has just
    finished an interaction calls :meth:`take_interaction` and runs the next
    waiting interaction at once, instead of reporting idle and waiting for
    the pool actor to hand it back (two greenlet switches and a pool actor
    wake-up less per interaction under load). Checkouts are only ever lent by
    the pool actor, so a worker takes the head only when it is an
    interaction; FIFO order is kept either way.

    Under load, ``submit()`` appends an interaction to the tail itself
    (:meth:`offer`) when that is exactly what the pool actor would do with it:
    requests already wait (so no worker is idle: the pool actor never leaves
    a request waiting beside an idle worker), the pool has all ``max_size``
    workers (nothing to grow), ``max_waiting`` is not reached, the armed
    deadline timer fires no later than the new request's deadline, and no
    request is on its way through the pool actor's mailbox (so FIFO order
    holds). That saves the pool actor's handler and its bookkeeping (the
    pool actor is ``inline``, so no wake-up is saved any more, only work).

    Once the queue is closed (the pool is closing), workers read :attr:`closed`
    and no longer reconnect, and :meth:`offer` refuses.

    No lock: greenlets switch only where they block, and nothing here blocks.
    The pool actor alone writes :attr:`grown` and :attr:`timer_deadline`.
    """

    __slots__ = (
        "_items",
        "closed",
        "grown",
        "in_mailbox",
        "limit",
        "offered",
        "timer_deadline",
        "wait_buckets",
        "wait_ms",
    )

    def __init__(self, limit: int = 0) -> None:
        self._items: deque[_Entry] = deque()
        #: Total milliseconds that served requests waited (expired ones: see the pool).
        self.wait_ms = 0
        #: Requests that waited, by :data:`WAIT_BUCKETS` bucket (one more: +Inf), served
        #: and expired alike: one increment per request that had to wait, none for the rest.
        self.wait_buckets = [0] * (len(WAIT_BUCKETS) + 1)
        #: Set by :meth:`close`: nothing waits any more, workers must not reconnect.
        self.closed = False
        #: ``max_waiting`` (0: unbounded); :meth:`offer` refuses at the bound.
        self.limit = limit
        #: True while the pool has all ``max_size`` workers (set by the pool actor).
        self.grown = False
        #: When the armed deadline timer fires (inf when none is armed; the pool actor's).
        self.timer_deadline = float("inf")
        #: Requests told to the pool actor and not yet handled by it.
        self.in_mailbox = 0
        #: Interactions appended by :meth:`offer` (counted into the pool's stats).
        self.offered = 0

    def offer(self, interaction: Interaction, timeout: float) -> bool:
        """Append ``interaction`` for a caller when the pool actor would only append it.

        Returns False when any condition in the class docstring does not
        hold; the request then counts as in the mailbox (:attr:`in_mailbox`)
        and the caller must tell it to the pool actor, which calls
        :meth:`received` when it handles it.
        """
        items = self._items
        if items and self.grown and not self.in_mailbox and not self.closed:
            now = time.monotonic()
            deadline = now + timeout
            own = interaction.deadline  # the caller's timeout bounds the wait too
            if own is not None and own < deadline:
                deadline = own
            if deadline >= self.timer_deadline and not 0 < self.limit <= len(items):
                items.append((interaction, now, deadline))
                self.offered += 1
                return True
        self.in_mailbox += 1
        return False

    def sent(self) -> None:
        """A request (a checkout) is being told to the pool actor."""
        self.in_mailbox += 1

    def received(self) -> None:
        """The pool actor handles a request counted by :meth:`offer` or :meth:`sent`."""
        self.in_mailbox -= 1

    def __len__(self) -> int:
        return len(self._items)

    def live(self) -> int:
        """Requests still waiting, after dropping those abandoned by their caller (reply set).

        An abandoned request otherwise stays in the queue until it is taken or
        expires, and ``len()`` counts it (for ``stats()`` and ``max_waiting``).
        """
        items = self._items
        if any(entry[0].reply.ready() for entry in items):
            kept = [entry for entry in items if not entry[0].reply.ready()]
            items.clear()
            items.extend(kept)
        return len(items)

    def append(self, request: Interaction | _Checkout, now: float, deadline: float) -> None:
        self._items.append((request, now, deadline))

    def appendleft(self, request: Interaction | _Checkout, now: float, deadline: float) -> None:
        self._items.appendleft((request, now, deadline))

    def take(self, now: float) -> Interaction | _Checkout | None:
        """Pop the first request still waiting (its reply not set), or None."""
        items = self._items
        while items:
            request, since, _deadline = items.popleft()
            if not request.reply.ready():
                self.waited(now - since)
                return request
        return None

    def take_interaction(self, now: float) -> Interaction | None:
        """Pop the head if it is an interaction still waiting, else None (for workers)."""
        items = self._items
        while items:
            request = items[0][0]
            if request.reply.ready():
                items.popleft()
                continue
            if isinstance(request, _Checkout):
                return None
            self.waited(now - items.popleft()[1])
            return request
        return None

    def waited(self, seconds: float) -> None:
        """Count a served request that waited ``seconds`` (total and histogram bucket)."""
        self.wait_ms += int(seconds * 1000)
        self.wait_buckets[bisect_left(WAIT_BUCKETS, seconds)] += 1

    def expire(self, now: float) -> list[tuple[Interaction | _Checkout, float]]:
        """Remove and return ``(request, waited)`` for requests past their deadline.

        Requests whose reply is already set are dropped silently.
        """
        expired: list[tuple[Interaction | _Checkout, float]] = []
        keep: list[_Entry] = []
        for entry in self._items:
            request, since, deadline = entry
            if request.reply.ready():
                continue
            if deadline <= now:
                expired.append((request, now - since))
                self.wait_buckets[bisect_left(WAIT_BUCKETS, now - since)] += 1
            else:
                keep.append(entry)
        if len(keep) != len(self._items):
            self._items.clear()
            self._items.extend(keep)
        return expired

    def next_deadline(self) -> float | None:
        """The earliest deadline of the waiting requests (None when none waits)."""
        return min((entry[2] for entry in self._items), default=None)

    def withdraw_interactions(self) -> list[Interaction]:
        """Remove and return the waiting interactions not aimed at this pool (``pool`` None).

        Checkouts and ``pool=NAME`` interactions stay, in order.
        """
        out: list[Interaction] = []
        keep: list[_Entry] = []
        for entry in self._items:
            request = entry[0]
            if request.reply.ready():
                continue
            if isinstance(request, Interaction) and request.pool is None:
                out.append(request)
            else:
                keep.append(entry)
        if out:
            self._items.clear()
            self._items.extend(keep)
        return out

    def close(self) -> list[Interaction | _Checkout]:
        """Mark the queue closed; remove and return every request still waiting."""
        self.closed = True
        requests = [entry[0] for entry in self._items if not entry[0].reply.ready()]
        self._items.clear()
        return requests
