"""The pool actor's connection workers: starting, counting, forgetting and retiring them.

:class:`_Workers` is a mixin of :class:`~gdbpool.pool.pool_actor._PoolActor` and
holds no state of its own (the attributes it uses are the pool actor's), like
:class:`~gdbpool.pool._pool_timers._Timers`. Its ``@handles`` method (``_Spawn``)
is a pool actor handler: :class:`~actors.Actor` collects handlers across the
whole MRO.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import TYPE_CHECKING, Any

from actors import ActorError, ActorRef, ActorStopped, Supervisor, handles
from gdbpool.pool._pool_messages import _Spawn, _Status
from gdbpool.pool.worker import ConnectionWorker, Recycle

if TYPE_CHECKING:
    from gdbpool.pool.connection import PoolSettings
    from gdbpool.pool.wait_queue import WaitQueue

__all__: list[str] = []


class _Workers:
    """The pool actor's set of connection workers (mixed into ``_PoolActor``).

    A worker counts from the moment the pool decides to start it
    (``spawning``), so the pool never starts more than ``max_size``; starting
    one waits for its ``on_start``, so it is posted as :class:`_Spawn` and
    done in the pool actor's own greenlet, never inline on a sender's.
    """

    # The pool actor's state, set in its __init__ (declared here for the type checker).
    settings: PoolSettings
    status: _Status
    min_size: int
    max_size: int
    supervisor: Supervisor
    numbers: itertools.count[int]
    workers: set[ActorRef]
    spawning: int
    connecting: int
    idle: list[ActorRef]
    idle_since: dict[ActorRef, float]
    conns: dict[ActorRef, Any]
    expires_at: dict[ActorRef, float]
    busy_since: dict[ActorRef, float]
    lent: set[ActorRef]
    waiting: WaitQueue

    if TYPE_CHECKING:  # provided by Actor and _PoolActor

        @property
        def ref(self) -> ActorRef: ...
        def _break(self, reason: str) -> None: ...
        def _check_drained(self) -> None: ...

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

    def _start_worker(self, conn: Any) -> None:
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
