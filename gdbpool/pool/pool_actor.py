"""The pool actor behind DBConnectionPool.

The pool actor owns the pool's state: which worker is idle, busy or lent,
which requests wait, the counters. It never does I/O. Requests that find no
idle worker wait in a :class:`~gdbpool.pool.wait_queue.WaitQueue` in FIFO order; the pool actor
appends to it, times its requests out and fails them on close, and a worker
that has just finished an interaction takes the next waiting interaction from
its head itself (see :class:`WaitQueue`). While requests already wait and the
pool has all its connections, ``submit()`` appends an interaction to the tail
itself (:meth:`WaitQueue.offer`): the pool actor would decide nothing but that.

Every request the pool actor accepts is answered: served, or failed with
PoolTimeout, TooManyRequests or PoolClosed, also when the pool closes while it
waits or is being retried, and when the pool actor itself breaks
(``on_failure``: everything waiting fails with PoolClosed saying why, and
``on_dropped`` fails the requests it had not read yet). A
request abandoned by its caller (its reply already set) is skipped. A worker
found stopped when handed a request (its supervisor gave up) is forgotten and
the request goes back to the head of the queue.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass
from typing import Any

import gevent
from gevent.event import Event

from actors import Actor, ActorError, ActorRef, ActorStopped, Supervisor, handles
from gdbpool.errors import InteractionTimeout, PoolClosed, PoolTimeout, TooManyRequests
from gdbpool.interaction import Interaction
from gdbpool.pool.connection import PooledConnection, PoolSettings
from gdbpool.pool.wait_queue import WAIT_BUCKETS, WaitQueue, _Checkout
from gdbpool.pool.worker import (
    ConnectFailed,
    ConnectionWorker,
    Gone,
    Idle,
    Lost,
    Opened,
    Recycle,
)

__all__: list[str] = []

# -- messages ---------------------------------------------------------------------
# The pool actor tells itself _Expire (its deadline timer), _Tick (housekeeping)
# and _Spawn (start a worker from its own greenlet); the facade asks it _Ready,
# _PoolStats and _Close. _Status is the one piece of pool actor state the facade
# reads: written by the pool actor only.


@dataclass(frozen=True, slots=True)
class _Expire:
    """The earliest deadline of the waiting requests passed."""


@dataclass(frozen=True, slots=True)
class _Tick:
    """Periodic housekeeping: max_idle, max_lifetime of idle connections."""


@dataclass(frozen=True, slots=True)
class _Spawn:
    """Start one more connection worker (see the workers section of :class:`_PoolActor`)."""


@dataclass(frozen=True, slots=True)
class _Ready:
    """Ask: an Event set once ``min_size`` connections are open."""


@dataclass(frozen=True, slots=True)
class _PoolStats:
    """Ask: the counters."""


@dataclass(frozen=True, slots=True)
class _Busy:
    """Ask for (busy or lent workers, live waiting requests)."""


@dataclass(frozen=True, slots=True)
class _Close:
    """Ask: stop serving; the reply is an Event set once no worker is busy."""

    reason: str = ""  # why, when not the user's close() (e.g. the workers' supervisor gave up)


@dataclass(slots=True)
class _Status:
    """Written by the pool actor only; read by the facade."""

    healthy: bool = True
    closed: bool = False
    last_error: str = ""
    reason: str = ""  # why the pool closed, when it was not close(): for PoolClosed messages

    def closed_error(self, name: str) -> PoolClosed:
        """The PoolClosed to raise or set, saying why when it was not ``close()``."""
        why = f": {self.reason}" if self.reason else ""
        return PoolClosed(f"pool {name!r} is closed{why}")


_EXPIRE = _Expire()


def _deadline(request: Interaction | _Checkout, pool_deadline: float) -> float:
    """When ``request`` stops waiting: the pool's timeout, or the interaction's own if sooner."""
    own = request.deadline if isinstance(request, Interaction) else None
    return pool_deadline if own is None or own > pool_deadline else own


class _PoolActor(Actor):
    """Owns the pool's state: which worker is idle, busy or lent, who waits, counters.

    Sections, top to bottom: life cycle, requests, worker reports, the
    facade's questions (ready, stats, close), the workers (starting, counting,
    forgetting, retiring), and the timers (one deadline timer for all the
    waiting requests, and the housekeeping tick).

    An ``inline`` actor (see :class:`~actors.Actor`): its handlers never wait,
    so when it is idle a ``get()``, ``put()`` or a worker's :class:`Idle` is
    handled on the sender's greenlet, without the two greenlet switches of a
    mailbox round trip. The one thing that waits, starting a worker (the
    supervisor waits for its ``on_start``), is posted to itself as
    :class:`_Spawn` and done in its own greenlet.
    """

    inline = True

    def __init__(
        self,
        settings: PoolSettings,
        status: _Status,
        min_size: int,
        max_size: int,
        timeout: float,
        max_waiting: int,
        max_idle: float,
        supervisor: Supervisor,
        first_conn: PooledConnection | None,
        waiting: WaitQueue,
    ) -> None:
        super().__init__()
        self.timeout = timeout
        self.settings = settings
        self.status = status
        self.min_size = min_size
        self.max_size = max_size
        self.max_waiting = max_waiting
        self.max_idle = max_idle
        self.supervisor = supervisor
        self.first_conn = first_conn
        self.idle: list[ActorRef] = []  # LIFO stack
        self.idle_since: dict[ActorRef, float] = {}
        self.conns: dict[ActorRef, PooledConnection] = {}
        self.expires_at: dict[ActorRef, float] = {}  # each connection's max_lifetime deadline
        self.workers: set[ActorRef] = set()  # every live worker, whatever its state
        self.spawning = 0  # _Spawn posted, worker not started yet (counts as a worker)
        self.connecting = 0
        self.busy_since: dict[ActorRef, float] = {}  # running interactions, or lent
        self.lent: set[ActorRef] = set()
        self.ready: list[tuple[int, Event]] = []  # wait(): (connections wanted, event)
        self.waiting = waiting  # made by the facade, whose submit() may offer to it
        self.timer: Any = None  # the libev timer for the earliest deadline
        self.timer_deadline = 0.0
        self.drained: Event | None = None
        self.ticker: gevent.Greenlet | None = None
        self.numbers = itertools.count(1)
        self.counters = dict.fromkeys(
            (
                "requests_num",
                "requests_queued",
                "requests_wait_ms",
                "requests_errors",
                "connections_num",
                "connections_ms",
                "connections_errors",
                "connections_lost",
                "connections_replaced",
                "usage_ms",
            ),
            0,
        )

    def on_start(self) -> None:
        first, self.first_conn = self.first_conn, None
        for _ in range(self.min_size):
            self.connecting += 1
            self._start_worker(first)  # in our own greenlet already: no _Spawn needed
            first = None
        period = max(0.05, min(self.max_idle, self.settings.max_lifetime, 60.0) / 2)
        self.ticker = gevent.spawn(self._tick_forever, period)

    def on_stop(self) -> None:
        # After _Close nothing waits, but a request retried (Lost) or handed
        # back meanwhile must not be left behind with the mailbox.
        self.status.closed = True
        self._stop_timers()
        self._fail_waiting()

    def on_failure(self, exc: BaseException) -> None:
        # A bug in a handler ends this actor (it is not supervised: its state
        # cannot be rebuilt). Fail what waits, stop the workers, and make the
        # facade refuse new requests; the requests still in the mailbox fail
        # in on_dropped.
        self._break(f"its pool actor crashed ({type(exc).__name__}: {exc})")

    def on_dropped(self, message: object) -> None:
        # A request the pool actor never read (it broke, or was killed by a
        # stop that timed out): nobody else would ever answer it.
        if isinstance(message, Interaction | _Checkout) and not message.reply.ready():
            message.reply.set_exception(self.status.closed_error(self.settings.name))

    def _break(self, reason: str) -> None:
        """Close the pool at once for ``reason``: every waiting request fails with PoolClosed."""
        self.settings.log.error("pool_broken", reason=reason)
        self.status.reason = f"the pool broke: {reason}"
        self.status.closed = True
        self.status.healthy = False
        self._stop_timers()
        self._fail_waiting()
        for worker in list(self.workers):
            self._retire(worker)
        if self.drained is not None:
            self.drained.set()

    def _fail_waiting(self) -> None:
        for request in self.waiting.close():
            request.reply.set_exception(self.status.closed_error(self.settings.name))

    # -- requests ---------------------------------------------------------------

    @handles(Interaction)
    def submit(self, interaction: Interaction) -> None:
        self.waiting.received()
        self.counters["requests_num"] += 1
        if self.status.closed:
            interaction.reply.set_exception(self.status.closed_error(self.settings.name))
            return
        if not self._hand_to_idle(interaction):
            self._wait(interaction, self.timeout)

    @handles(_Checkout)
    def checkout(self, request: _Checkout) -> None:
        self.waiting.received()
        self.counters["requests_num"] += 1
        if request.reply.ready():
            return  # abandoned by get() before we saw it
        if self.status.closed:
            request.reply.set_exception(self.status.closed_error(self.settings.name))
            return
        if not self._hand_to_idle(request):
            self._wait(request, request.timeout)

    def _hand_to_idle(self, request: Interaction | _Checkout) -> bool:
        """Give ``request`` to an idle worker (False: none is idle; it must wait).

        Every request goes through here before it waits, so a request never
        waits beside an idle worker (WaitQueue.offer relies on it).
        """
        idle = self.idle
        while idle:
            worker = idle.pop()
            if isinstance(request, _Checkout):
                if self._lend(worker, request):
                    return True
                continue
            try:
                worker.tell(request)
            except ActorStopped:
                self._forget(worker)
                continue
            self.busy_since[worker] = time.monotonic()
            return True
        return False

    def _lend(self, worker: ActorRef, request: _Checkout, handed: bool = False) -> bool:
        """Lend ``worker``'s connection; ``handed``: its worker just used it.

        A connection a worker hands from its last use (:attr:`Idle.handed`)
        to a waiting ``get()`` was never idle, so ``get()`` skips the socket
        check (see "Checks" in :mod:`gdbpool.pool.worker`): the reply
        carries None for its idle time.
        """
        if not worker.is_alive:  # stopped by its supervisor giving up: its connection is gone
            self._forget(worker)
            return False
        self.busy_since[worker] = time.monotonic()
        self.lent.add(worker)
        since = None if handed else self.idle_since.get(worker, 0.0)
        request.reply.set((self.conns[worker], since))
        return True

    def _wait(self, request: Interaction | _Checkout, timeout: float) -> None:
        waiting = self.waiting
        if waiting.closed:
            request.reply.set_exception(self.status.closed_error(self.settings.name))
            return
        if 0 < self.max_waiting <= len(waiting) and self.max_waiting <= waiting.live():
            self.counters["requests_errors"] += 1
            request.reply.set_exception(
                TooManyRequests(
                    f"pool {self.settings.name!r}: {waiting.live()} requests already wait "
                    f"(max_waiting={self.max_waiting}); retry later or raise max_waiting"
                )
            )
            return
        self.counters["requests_queued"] += 1
        now = time.monotonic()
        deadline = _deadline(request, now + timeout)
        waiting.append(request, now, deadline)
        if self.timer is None or deadline < self.timer_deadline:
            self._arm(deadline, now)
        if self._size() < self.max_size:
            self._grow()

    def _requeue(self, request: Interaction | _Checkout) -> None:
        """A request handed out that never ran: first in line again, with a fresh wait."""
        if self.waiting.closed:
            request.reply.set_exception(self.status.closed_error(self.settings.name))
            return
        if self._hand_to_idle(request):
            return
        now = time.monotonic()
        deadline = _deadline(
            request, now + (request.timeout if isinstance(request, _Checkout) else self.timeout)
        )
        self.waiting.appendleft(request, now, deadline)
        if self.timer is None or deadline < self.timer_deadline:
            self._arm(deadline, now)
        self._grow()

    # -- worker reports ----------------------------------------------------------

    @handles(Idle)
    def idle_worker(self, msg: Idle) -> None:
        """A worker is done, or ``put()`` gave its clean connection back itself."""
        worker = msg.worker
        if self.lent:
            self.lent.discard(worker)
        since = self.busy_since.pop(worker, None)
        now = time.monotonic()
        if since is not None:
            self.counters["usage_ms"] += int((now - since) * 1000)
        if self.expires_at.get(worker, now) < now and not self.status.closed:
            self._recycle(worker)  # past max_lifetime (a worker checks too; put() does not)
            return
        self._serve(worker, now, msg.handed)

    @handles(Opened)
    def opened(self, msg: Opened) -> None:
        self.connecting -= 1
        self.conns[msg.worker] = msg.conn
        self.expires_at[msg.worker] = msg.expires_at
        self.counters["connections_num"] += 1
        self.counters["connections_ms"] += msg.connect_ms
        self.status.healthy = True
        self._serve(msg.worker, time.monotonic())
        if self.ready:
            self._check_ready()

    @handles(ConnectFailed)
    def connect_failed(self, msg: ConnectFailed) -> None:
        self.counters["connections_num"] += 1
        self.counters["connections_errors"] += 1
        self.status.last_error = msg.error
        if not self.idle and not self.busy_since:
            self.status.healthy = False

    @handles(Lost)
    def lost(self, msg: Lost) -> None:
        worker = msg.worker
        if msg.broken:
            self.counters["connections_lost"] += 1
        else:
            self.counters["connections_replaced"] += 1  # past max_lifetime (Recycle)
        self._drop(worker)
        if worker in self.workers and not self.status.closed:
            self.connecting += 1  # it reconnects (a closing worker does not)
        if msg.retry is not None:
            self._requeue(msg.retry)  # it never ran; PoolClosed if the pool is closing
        if self.status.closed:
            self._retire(worker)

    @handles(Gone)
    def gone(self, msg: Gone) -> None:
        worker = msg.worker
        self._drop(worker)
        if worker not in self.workers:  # retired or forgotten already: nothing to replace
            self._check_drained()
            return
        self.counters["connections_lost"] += 1
        self.workers.discard(worker)
        self._workers_changed()
        self.settings.log.warning("worker_killed", worker=worker.name)
        if self.status.closed:
            self._check_drained()
        elif self._size() < self.min_size:
            self._spawn_worker()
        else:
            self._grow()  # for the requests waiting, within max_size

    def _serve(self, worker: ActorRef, now: float, handed: bool = True) -> None:
        if self.status.closed:
            self._retire(worker)
            return
        self.idle_since[worker] = now
        request = self.waiting.take(now) if self.waiting else None
        if request is None:
            self.idle.append(worker)
        elif isinstance(request, _Checkout):
            if not self._lend(worker, request, handed):
                self._requeue(request)
        else:
            try:
                worker.tell(request)
            except ActorStopped:
                self._forget(worker)
                self._requeue(request)
                return
            self.busy_since[worker] = now

    def _check_drained(self) -> None:
        # Lent connections do not hold the close up: put() closes them.
        if self.drained is not None and len(self.busy_since) <= len(self.lent):
            self.drained.set()

    def _check_ready(self) -> None:
        opened = len(self.conns)
        for wanted, event in list(self.ready):
            if opened >= wanted:
                event.set()
                self.ready.remove((wanted, event))

    @handles(_Ready)
    def when_ready(self, msg: _Ready) -> Event:
        event = Event()
        self.ready.append((self.min_size, event))
        self._check_ready()
        return event

    @handles(_PoolStats)
    def stats(self, msg: _PoolStats) -> dict[str, int]:
        waiting = self.waiting
        counters = dict(self.counters)
        counters["requests_wait_ms"] += waiting.wait_ms
        counters["requests_num"] += waiting.offered
        counters["requests_queued"] += waiting.offered
        lent = len(self.lent)
        buckets = {
            f"requests_wait_bucket_{bound:g}": count
            for bound, count in zip(WAIT_BUCKETS, waiting.wait_buckets, strict=False)
        }
        buckets["requests_wait_bucket_inf"] = waiting.wait_buckets[-1]
        return {
            "pool_min": self.min_size,
            "pool_max": self.max_size,
            "pool_size": self._size(),
            "pool_available": len(self.idle),
            "requests_waiting": waiting.live(),
            **counters,
            "connections_idle": len(self.idle),
            "connections_busy": len(self.busy_since) - lent,
            "connections_lent": lent,
            "connections_connecting": self.connecting,
            "pool_mailbox_depth": self.ref.mailbox_depth,
            "worker_restarts": self.supervisor.restarts,
            **buckets,
        }

    @handles(_Busy)
    def busy(self, msg: _Busy) -> tuple[int, int]:
        return (len(self.busy_since), self.waiting.live())

    @handles(_Close)
    def close(self, msg: _Close) -> Event:
        if self.drained is not None:
            return self.drained  # closed already (or broke)
        if msg.reason:
            self.status.reason = msg.reason
        self.status.closed = True
        self.drained = Event()
        self._disarm()
        self._fail_waiting()
        for worker in list(self.idle):
            self._retire(worker)
        for worker in list(self.workers):
            if worker not in self.busy_since:
                self._retire(worker)  # still connecting
        self._check_drained()
        return self.drained

    # -- workers ---------------------------------------------------------------------
    # A worker counts from the moment the pool decides to start it (``spawning``),
    # so the pool never starts more than ``max_size``; starting one waits for its
    # ``on_start``, so it is posted as _Spawn and done in the pool actor's own
    # greenlet, never inline on a sender's.

    def _grow(self) -> None:
        if self._size() < self.max_size and self.connecting < len(self.waiting):
            self._spawn_worker()

    def _size(self) -> int:
        """Workers, counting those about to start."""
        return len(self.workers) + self.spawning

    def _spawn_worker(self) -> None:
        """Count one more worker now; start it from our own greenlet (:class:`_Spawn`)."""
        try:
            self.ref.tell(_Spawn())  # always queued: we are handling a message
        except ActorStopped:
            return  # stopping: no new workers
        self.spawning += 1
        self.connecting += 1
        self._workers_changed()

    @handles(_Spawn)
    def spawn(self, msg: _Spawn) -> None:
        self.spawning -= 1
        if self.status.closed:
            self.connecting -= 1
            self._workers_changed()
            return
        self._start_worker(None)

    def _start_worker(self, conn: PooledConnection | None) -> None:
        """Start a worker (waits for its ``on_start``); ``connecting`` already counts it."""
        name = f"{self.settings.name}.worker-{next(self.numbers)}"
        try:
            worker = self.supervisor.spawn(
                ConnectionWorker, self.settings, self.ref, self.waiting, conn, name=name
            )
        except ActorError as exc:  # the supervisor gave up: no worker can start any more
            self.connecting -= 1
            if not self.status.closed:
                self._break(f"cannot start a connection worker: {exc}")
            return
        self.workers.add(worker)
        self._workers_changed()

    def _drop(self, worker: ActorRef) -> None:
        """Forget what we knew of ``worker``'s connection (it is gone or being replaced)."""
        self.busy_since.pop(worker, None)
        self.lent.discard(worker)
        self.conns.pop(worker, None)
        self.idle_since.pop(worker, None)
        self.expires_at.pop(worker, None)
        if worker in self.idle:
            self.idle.remove(worker)

    def _forget(self, worker: ActorRef) -> None:
        """``worker`` stopped without telling us (its supervisor gave up on it or on all)."""
        self._drop(worker)
        self.workers.discard(worker)
        self._workers_changed()
        self.settings.log.warning("worker_vanished", worker=worker.name)
        if self.status.closed:
            self._check_drained()
        elif self._size() < self.min_size:
            self._spawn_worker()

    def _retire(self, worker: ActorRef) -> None:
        self.workers.discard(worker)
        self._workers_changed()
        self.conns.pop(worker, None)
        self.expires_at.pop(worker, None)
        self.idle_since.pop(worker, None)
        if worker in self.idle:
            self.idle.remove(worker)
        with contextlib.suppress(ActorStopped):
            worker.tell(Recycle(stop=True))
        self._check_drained()

    def _workers_changed(self) -> None:
        self.waiting.grown = self._size() >= self.max_size

    # -- timers ----------------------------------------------------------------------
    # Waiting requests have one libev timer between them, armed for the earliest
    # deadline (not one timer per request): when it fires, the pool fails every
    # request past its deadline and re-arms for the next one. A ticker greenlet
    # tells the pool actor _Tick periodically: idle connections above
    # ``min_size`` idle longer than ``max_idle`` are closed, and idle connections
    # past their ``max_lifetime`` are replaced.

    def _stop_timers(self) -> None:
        if self.ticker is not None:
            self.ticker.kill(block=False)
        self._disarm()

    def _arm(self, deadline: float, now: float) -> None:
        self._disarm()
        self.timer_deadline = self.waiting.timer_deadline = deadline
        self.timer = gevent.get_hub().loop.timer(max(0.0, deadline - now))
        self.timer.start(self._deadline_passed)

    def _disarm(self) -> None:
        self.waiting.timer_deadline = float("inf")
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.close()

    def _deadline_passed(self) -> None:
        # Runs in the hub: only post a message.
        with contextlib.suppress(ActorStopped):
            self.ref.tell(_EXPIRE)

    @handles(_Expire)
    def expire(self, msg: _Expire) -> None:
        self._disarm()
        now = time.monotonic()
        for request, waited in self.waiting.expire(now):
            self.counters["requests_errors"] += 1
            self.counters["requests_wait_ms"] += int(waited * 1000)
            request.reply.set_exception(self._timeout_error(request, waited, now))
        deadline = self.waiting.next_deadline()
        if deadline is not None:
            self._arm(deadline, now)

    def _timeout_error(
        self, request: Interaction | _Checkout, waited: float, now: float
    ) -> PoolTimeout | InteractionTimeout:
        """InteractionTimeout when the interaction's own timeout ran out, else PoolTimeout."""
        own = request.deadline if isinstance(request, Interaction) else None
        if own is not None and own <= now:
            return InteractionTimeout(
                f"interaction ran past its timeout of {request.timeout} s waiting for a "
                f"connection; nothing was run ({self._timeout_message(waited)})"
            )
        return PoolTimeout(self._timeout_message(waited))

    def _timeout_message(self, waited: float) -> str:
        text = (
            f"pool {self.settings.name!r} ({self.settings.target}): no connection available "
            f"within {waited:.2f} s"
        )
        if not self.status.healthy and self.status.last_error:
            text += f"; server unreachable: {self.status.last_error}"
        return text

    # -- housekeeping --------------------------------------------------------------

    def _tick_forever(self, period: float) -> None:
        tick = _Tick()
        while True:
            gevent.sleep(period)
            try:
                self.ref.tell(tick)
            except ActorStopped:
                return

    @handles(_Tick)
    def tick(self, msg: _Tick) -> None:
        now = time.monotonic()
        # The bottom of the LIFO stack has been idle longest.
        while self.idle and self._size() > self.min_size:
            oldest = self.idle[0]
            if now - self.idle_since.get(oldest, now) <= self.max_idle:
                break
            self.settings.log.debug("connection_idle_closed", worker=oldest.name)
            self._retire(oldest)
        # An idle connection past its lifetime is replaced now, not after one more use.
        for worker in [w for w in self.idle if self.expires_at.get(w, now) < now]:
            self.idle.remove(worker)
            self._recycle(worker)

    def _recycle(self, worker: ActorRef) -> None:
        self.settings.log.debug("connection_expired", worker=worker.name)
        try:
            worker.tell(Recycle())  # it reconnects and reports Lost, then Opened
        except ActorStopped:
            self._forget(worker)
