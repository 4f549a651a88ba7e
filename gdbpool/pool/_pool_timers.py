"""The pool actor's timers: the waiting requests' deadline timer and the housekeeping tick.

:class:`_Timers` is a mixin of :class:`~gdbpool.pool.pool_actor._PoolActor` and
holds no state of its own (the attributes it uses are the pool actor's). Its
``@handles`` methods (``_Expire``, ``_Tick``) are the pool actor's handlers:
:class:`~actors.Actor` collects handlers across the whole MRO when the actor
class is defined, so a mixin listed among its bases is enough.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import gevent

from actors import ActorRef, ActorStopped, handles
from gdbpool.errors import PoolTimeout
from gdbpool.pool._pool_messages import _Expire, _Status, _Tick
from gdbpool.pool.worker import Recycle

if TYPE_CHECKING:
    from gdbpool.pool.connection import PoolSettings
    from gdbpool.pool.wait_queue import WaitQueue

__all__: list[str] = []

_EXPIRE = _Expire()


class _Timers:
    """The pool actor's deadline timer and housekeeping tick (mixed into ``_PoolActor``).

    Waiting requests have one libev timer between them, armed for the
    earliest deadline (not one timer per request): when it fires, the pool
    fails every request past its deadline and re-arms for the next one.

    A ticker greenlet tells the pool actor :class:`_Tick` periodically: idle
    connections above ``min_size`` idle longer than ``max_idle`` are closed,
    and idle connections past their ``max_lifetime`` are replaced.
    """

    # The pool actor's state, set in its __init__ (declared here for the type checker).
    settings: PoolSettings
    status: _Status
    min_size: int
    max_idle: float
    idle: list[ActorRef]
    idle_since: dict[ActorRef, float]
    expires_at: dict[ActorRef, float]
    waiting: WaitQueue
    timer: Any
    timer_deadline: float
    ticker: gevent.Greenlet | None
    counters: dict[str, int]

    if TYPE_CHECKING:  # provided by Actor and _Workers (the pool actor's other bases)

        @property
        def ref(self) -> ActorRef: ...
        def _size(self) -> int: ...
        def _retire(self, worker: ActorRef) -> None: ...
        def _forget(self, worker: ActorRef) -> None: ...

    def _stop_timers(self) -> None:
        if self.ticker is not None:
            self.ticker.kill(block=False)
        self._disarm()

    # -- the deadline timer ----------------------------------------------------------

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
            request.reply.set_exception(PoolTimeout(self._timeout_message(waited)))
        deadline = self.waiting.next_deadline()
        if deadline is not None:
            self._arm(deadline, now)

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
