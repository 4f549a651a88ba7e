"""Supervisor: one-for-one restarts with backoff and an intensity limit."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeAlias

import gevent
from gevent import Greenlet

from actors.actor import DEFAULT_START_TIMEOUT, Actor, _launch, _start
from actors.errors import ActorError, ActorStartError, SupervisorGaveUp
from actors.log import get_logger
from actors.ref import DEFAULT_SEND_TIMEOUT, DEFAULT_STOP_TIMEOUT, ActorRef, MailboxOverflow

__all__ = ["Supervisor"]

_log = get_logger("actors")

_Child: TypeAlias = "ActorRef | Supervisor"


class Supervisor:
    """Restarts crashed children one-for-one, and gives up past a limit.

    A supervisor is a plain object, not an actor: it has no mailbox and no
    greenlet of its own. It reacts in the greenlet of the child that crashed
    and uses short-lived greenlets for backoff timers and escalation.

    When a child crashes (a told message raised), a NEW instance is built
    with the same constructor arguments after a backoff of
    ``backoff_initial * 2**(n-1)`` seconds (capped at ``backoff_max``), where
    n counts that child's restarts within the last ``within`` seconds. The
    new instance reads the same mailbox: the child's ref keeps working and
    messages queued meanwhile are handled by the new instance.

    A child that would need more than ``max_restarts`` restarts within
    ``within`` seconds makes the supervisor give up: that child is stopped
    at once (its queued asks fail with ActorStopped), the other children
    are stopped gracefully, and the supervisor escalates a
    :class:`SupervisorGaveUp`: ``on_give_up(error)`` is called, and a
    ``parent`` supervisor treats it as a crash of this supervisor, i.e.
    restarts all of its children afresh on their same refs (subject to the
    parent's own intensity limit), or gives up in turn.

    Defaults: ``max_restarts=3``, ``within=5.0`` s, ``backoff_initial=0.01``
    s, ``backoff_max=1.0`` s.
    """

    def __init__(
        self,
        name: str = "supervisor",
        *,
        max_restarts: int = 3,
        within: float = 5.0,
        backoff_initial: float = 0.01,
        backoff_max: float = 1.0,
        on_give_up: Callable[[SupervisorGaveUp], None] | None = None,
        parent: Supervisor | None = None,
    ) -> None:
        if max_restarts < 0:
            raise ValueError(f"supervisor {name!r}: max_restarts must be >= 0")
        if within <= 0 or backoff_initial < 0 or backoff_max < backoff_initial:
            raise ValueError(
                f"supervisor {name!r}: need within > 0 and 0 <= backoff_initial <= backoff_max"
            )
        self.name = name
        self.max_restarts = max_restarts
        self.within = within
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.on_give_up = on_give_up
        self._parent = parent
        self._children: list[ActorRef] = []
        self._supervisors: list[Supervisor] = []
        self._restarts: dict[_Child, deque[float]] = {}
        #: Restarts of children done so far, in total (for metrics).
        self.restarts = 0
        self._running = True
        self._stopped = False  # stopped for good by stop(), not revivable
        self._restart: Greenlet | None = None  # pending restart by our parent
        self._log = _log.bind(supervisor=name)
        if parent is not None:
            parent._supervisors.append(self)

    @property
    def children(self) -> list[ActorRef]:
        """Refs of the actors this supervisor runs (a copy)."""
        return list(self._children)

    @property
    def is_alive(self) -> bool:
        """False once stopped or given up (until a parent restarts it)."""
        return self._running

    def spawn(
        self,
        actor_class: type[Actor],
        *args: Any,
        name: str | None = None,
        mailbox_size: int | None = None,
        overflow: MailboxOverflow = "block",
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        **kwargs: Any,
    ) -> ActorRef:
        """Start ``actor_class(*args, **kwargs)`` as a supervised child.

        Same keywords and errors as ``Actor.start``; raises
        :class:`ActorError` if the supervisor is stopped or has given up.
        A failure of the first start is not retried.
        """
        if not self._running:
            raise ActorError(f"supervisor {self.name!r} is stopped; cannot spawn")
        ref = _start(
            actor_class,
            args,
            kwargs,
            name,
            mailbox_size,
            overflow,
            send_timeout,
            start_timeout,
            self,
        )
        self._children.append(ref)
        return ref

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop every child (and child supervisor) gracefully, in parallel.

        Each child gets ``timeout`` seconds, as for ``ActorRef.stop``. The
        supervisor cannot be used afterwards; calling it again is a no-op.
        Called from a child's own handler, it only begins the stop and
        returns (as ``ActorRef.stop`` does from inside an actor).
        """
        if self._stopped:
            return
        current = gevent.getcurrent()
        if any(ref._greenlet is current for ref in self._children):
            # Called from a child's handler: waiting here for that child to
            # stop would wait for ourselves. Stop from a helper instead.
            gevent.spawn(self.stop, timeout)
            return
        self._stopped = True
        self._halt(timeout)
        self._children.clear()
        self._supervisors.clear()
        if self._parent is not None and self in self._parent._supervisors:
            self._parent._supervisors.remove(self)
        self._log.debug("supervisor_stopped")

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<Supervisor {self.name!r} {state} children={len(self._children)}>"

    # -- reactions (called from children's greenlets) -----------------------

    def _child_crashed(self, child: _Child, exc: BaseException) -> None:
        if not self._running:
            if isinstance(child, ActorRef):
                child._finish(exc, "crashed")
            return
        now = time.monotonic()
        history = self._restarts.setdefault(child, deque())
        while history and now - history[0] > self.within:
            history.popleft()
        if len(history) >= self.max_restarts:
            self._give_up(child, exc, len(history) + 1)
            return
        history.append(now)
        self.restarts += 1
        delay = min(self.backoff_initial * 2 ** (len(history) - 1), self.backoff_max)
        child._restart = gevent.spawn_later(delay, self._restart_child, child, len(history))

    def _child_finished(self, ref: ActorRef) -> None:
        # A child stopped for good while we run (its own stop()): forget it.
        if self._running and ref in self._children:
            self._children.remove(ref)
            self._restarts.pop(ref, None)

    def _restart_child(self, child: _Child, count: int) -> None:
        child._restart = None
        if not self._running:
            return
        if isinstance(child, Supervisor):
            child._revive()
            self._log.warning("supervisor_restarted", child=child.name, restarts=count)
            return
        if child._closed:
            return
        try:
            _launch(child)
        except ActorStartError as exc:
            child._log.error("actor_restart_failed", exc_info=exc)
            self._child_crashed(child, exc)
            return
        child._log.warning("actor_restarted", restarts=count)

    def _give_up(self, child: _Child, exc: BaseException, crashes: int) -> None:
        name = child.name
        error = SupervisorGaveUp(
            f"supervisor {self.name!r} gave up: {name!r} crashed {crashes} times within "
            f"{self.within} s (max_restarts={self.max_restarts})"
        )
        error.__cause__ = exc
        self._running = False
        if isinstance(child, ActorRef):
            child._finish(exc, "was given up by its supervisor")
        self._log.error("supervisor_gave_up", child=name, crashes=crashes)
        gevent.spawn(self._escalate, error)

    def _escalate(self, error: SupervisorGaveUp) -> None:
        self._halt(DEFAULT_STOP_TIMEOUT)
        if self.on_give_up is not None:
            try:
                self.on_give_up(error)
            except Exception:
                self._log.exception("supervisor_on_give_up_failed")
        if self._parent is not None and not self._stopped:
            self._parent._child_crashed(self, error)

    # -- lifecycle -------------------------------------------------------------

    def _halt(self, timeout: float) -> None:
        """Stop all children but remember them, so a parent can revive us."""
        self._running = False
        restart, self._restart = self._restart, None
        if restart is not None:
            restart.kill(block=False)
        stoppers = [gevent.spawn(ref.stop, timeout) for ref in self._children]
        stoppers += [gevent.spawn(sup._halt, timeout) for sup in self._supervisors]
        gevent.joinall(stoppers, timeout=timeout + 1.0)

    def _revive(self) -> None:
        """Restart every child afresh on its same ref (parent's restart of us)."""
        if self._stopped:
            return
        self._running = True
        self._restarts.clear()
        for ref in list(self._children):
            ref._reopen()
            try:
                _launch(ref)
            except ActorStartError as exc:
                ref._log.error("actor_restart_failed", exc_info=exc)
                self._child_crashed(ref, exc)
        for sup in self._supervisors:
            sup._revive()
