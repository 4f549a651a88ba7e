"""ActorRef: the handle through which everyone else talks to an actor.

A ref owns the actor's mailbox and lifecycle; the actor instance behind it
may be replaced by a supervisor restart while the ref (and the messages
queued in its mailbox) stays the same.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

import gevent
from gevent import Greenlet, getcurrent
from gevent.event import AsyncResult, Event
from gevent.queue import Empty, Full, Queue

from actors.errors import _HANDLER_ERRORS, ActorStopped, AskTimeout, MailboxFull
from actors.log import get_logger

if TYPE_CHECKING:
    from actors.actor import Actor

__all__ = ["ActorRef", "ActorState", "MailboxOverflow"]

#: What a send to a full bounded mailbox does: wait for room (``"block"``) or raise at once.
MailboxOverflow = Literal["block", "fail"]

#: Default bound, in seconds, on how long ``tell``/``ask`` wait for room in a
#: full mailbox with ``overflow="block"`` before raising MailboxFull.
DEFAULT_SEND_TIMEOUT = 1.0
#: Default bound, in seconds, on ``stop()``.
DEFAULT_STOP_TIMEOUT = 5.0
# After a timed-out stop kills the greenlet, how long to wait for it to die.
_KILL_GRACE = 0.5

_log = get_logger("actors")

# Queued behind the messages already in the mailbox by stop(): the loop ends
# when it reaches it, so earlier messages are still handled.
_STOP = object()

# Posted to wake an actor's greenlet parked on its empty mailbox when a
# handler run inline on a sender's greenlet raised on a tell: the actor's own
# greenlet then crashes with it (see ActorRef._inline_crash).
_CRASH = object()


class ActorState(StrEnum):
    """Where an actor is in its life: starting → running → stopping → stopped.

    ``starting`` also covers the gap while a supervisor restarts a crashed
    actor; messages sent then are queued for the new instance.
    """

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _ChildOwner(Protocol):
    """What a ref needs from the supervisor that owns it."""

    def _child_crashed(self, ref: ActorRef, exc: BaseException) -> None: ...

    def _child_finished(self, ref: ActorRef) -> None: ...


class _TimedReply(AsyncResult):  # type: ignore[misc]
    """Reply of an ask with a timeout: the first outcome wins, later ones are dropped."""

    def __init__(self, ref: ActorRef, timeout: float) -> None:
        super().__init__()
        self._timer = gevent.get_hub().loop.timer(timeout)
        self._timer.start(self._expire, ref.name, timeout)

    def _expire(self, name: str, timeout: float) -> None:
        self.set_exception(AskTimeout(f"actor {name!r} did not answer within {timeout} s"))

    def set(self, value: Any = None) -> None:
        if not self.ready():
            self._timer.close()
            super().set(value)

    def set_exception(self, exception: BaseException, exc_info: Any = None) -> None:
        if not self.ready():
            self._timer.close()
            super().set_exception(exception, exc_info)


class ActorRef:
    """Handle to a running actor: ``tell``, ``ask``, ``stop``.

    Refs are created by ``Actor.start()`` or ``Supervisor.spawn()``, never
    directly. A ref stays valid across supervisor restarts. Once the actor
    has stopped, ``tell``/``ask`` raise :class:`ActorStopped`.

    Every result returned by ``ask`` is eventually answered or failed,
    whatever happens to the actor. That promise covers only those results:
    a message that carries its own reply channel (an AsyncResult, a Queue)
    inside it is the application's to settle if the actor stops before
    handling it: the ref hands each told message left in the mailbox to the
    actor's ``on_dropped`` hook (Akka's dead letters), which does nothing
    unless the actor overrides it.
    """

    __slots__ = (
        "__weakref__",
        "_actor_class",
        "_args",
        "_busy",
        "_closed",
        "_done",
        "_greenlet",
        "_hub",
        "_inline",
        "_inline_owner",
        "_inline_waiter",
        "_instance",
        "_kwargs",
        "_log",
        "_mailbox",
        "_mailbox_size",
        "_name",
        "_overflow",
        "_pending_crash",
        "_post",
        "_restart",
        "_send_timeout",
        "_state",
        "_supervisor",
    )

    def __init__(
        self,
        actor_class: type[Actor],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        name: str,
        mailbox_size: int | None,
        overflow: MailboxOverflow,
        send_timeout: float,
        supervisor: _ChildOwner | None = None,
    ) -> None:
        _check_options(name, mailbox_size, overflow, send_timeout)
        self._actor_class = actor_class
        self._args = args
        self._kwargs = kwargs
        self._name = name
        self._mailbox_size = mailbox_size
        self._overflow = overflow
        self._send_timeout = send_timeout
        self._mailbox: Queue = Queue(mailbox_size)
        self._post: Callable[[tuple[Any, AsyncResult | None]], None]
        if mailbox_size is None:
            self._post = self._mailbox.put  # never blocks: the hot path is one call
        elif overflow == "fail":
            self._post = self._post_or_fail
        else:
            self._post = self._post_or_block
        self._closed = False  # set once stop() began or the actor ended: no more sends
        self._state = ActorState.STARTING
        self._greenlet: Greenlet | None = None
        self._done = Event()
        self._supervisor = supervisor
        self._restart: Greenlet | None = None  # pending supervisor restart
        self._log = _log.bind(actor=name)
        # Inline dispatch (``Actor.inline``, its section below): the
        # running instance while its loop may be bypassed, whether a handler
        # runs now, on which greenlet when inline, and an Event the loop
        # waits on if that handler yielded.
        self._inline: Actor | None = None
        self._instance: Actor | None = None  # the running instance, for on_dropped
        self._pending_crash: tuple[BaseException, object] | None = None  # see _inline_crash
        self._busy = False
        self._inline_owner: Greenlet | None = None
        self._inline_waiter: Event | None = None
        self._hub = gevent.get_hub()

    # -- public API ---------------------------------------------------------

    @property
    def name(self) -> str:
        """The actor's name (unique only if you made it so)."""
        return self._name

    @property
    def actor_class(self) -> type[Actor]:
        """The Actor subclass this ref runs."""
        return self._actor_class

    @property
    def state(self) -> ActorState:
        """Current lifecycle state."""
        return self._state

    @property
    def is_alive(self) -> bool:
        """True until the actor has stopped (while stopping or restarting too)."""
        return self._state is not ActorState.STOPPED

    @property
    def mailbox_depth(self) -> int:
        """Messages waiting in the mailbox now (for metrics; reading it costs nothing else)."""
        return int(self._mailbox.qsize())

    def tell(self, message: object) -> bool:
        """Post ``message`` and return at once.

        Returns True when an ``inline`` actor handled it on this greenlet
        before returning (see :class:`~actors.Actor`), False when it was
        queued.

        If the handler raises, the actor crashes: ``on_failure`` runs, the
        crash is logged and reported to the supervisor (which may restart
        it); unsupervised, the actor stops.

        Raises :class:`ActorStopped` if ``stop()`` has begun or the actor has
        stopped, and :class:`MailboxFull` if a bounded mailbox has no room
        (at once with ``overflow="fail"``, after ``send_timeout`` with
        ``overflow="block"``).
        """
        if self._closed:
            raise self._stopped_error()
        actor = self._inline
        if actor is not None and not self._busy and not self._mailbox.qsize():
            current = getcurrent()
            if current is not self._hub:
                return self._handle_inline(actor, message, None, current)
        self._post((message, None))
        return False

    def ask(self, message: object, timeout: float | None = None) -> AsyncResult:
        """Post ``message`` and return an AsyncResult for the handler's reply.

        The handler's return value, or the exception it raised (a
        ``gevent.Timeout`` from a timed wait inside it included), is set on
        the result; such an exception does not crash the actor. If the actor
        stops before handling the message, the result fails with
        :class:`ActorStopped`. With ``timeout`` (seconds), the result fails
        with :class:`AskTimeout` if no answer came in time; the actor may
        still handle the message later, and that late answer is dropped.

        Raises (rather than returning a failed result) :class:`ActorStopped`
        if ``stop()`` has begun, and :class:`MailboxFull` as for ``tell``.

        Cost: with the actor idle, one ask round trip is four greenlet
        switches (caller → hub → actor → hub → caller), the same as a bare
        queue-plus-AsyncResult ping-pong; allocations are the envelope tuple
        and the AsyncResult. For an ``inline`` actor that is idle, none: the
        handler runs on the caller's greenlet and the result is ready on return.
        """
        if self._closed:
            raise self._stopped_error()
        actor = self._inline
        if actor is not None and not self._busy and not self._mailbox.qsize():
            current = getcurrent()
            if current is not self._hub:
                reply = AsyncResult()
                self._handle_inline(actor, message, reply, current)
                return reply
        reply = AsyncResult() if timeout is None else _TimedReply(self, timeout)
        self._post((message, reply))
        return reply

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop the actor gracefully and wait until it has stopped.

        Messages queued before ``stop()`` are still handled, then
        ``on_stop`` runs. If that takes longer than ``timeout`` seconds, the
        greenlet is killed (``on_stop`` does not run) and every asked message
        still queued fails with :class:`ActorStopped`. Sends made after
        ``stop()`` began raise :class:`ActorStopped`.

        Called from the actor's own greenlet, it only begins the stop and
        returns: the actor finishes its current message and the ones already
        queued, bounded by ``timeout`` as above. On a stopped actor it does
        nothing. A supervised actor stopped this way is not restarted.
        """
        if self._state is ActorState.STOPPED:
            return
        greenlet = self._greenlet
        current = getcurrent()
        if greenlet is not None and (
            current is greenlet or (self._busy and current is self._inline_owner)
        ):
            if not self._closed:
                self._close()
                gevent.spawn(self._await_stop, timeout, True)
            return
        if self._closed:
            self._await_stop(timeout, False)
            return
        self._close()
        if greenlet is None or greenlet.dead:
            # Between two lives (restart pending): nothing to drain into.
            self._cancel_restart()
            self._finish(None)
            return
        self._await_stop(timeout, True)

    def __repr__(self) -> str:
        return f"<ActorRef {self._name!r} {self._actor_class.__name__} {self._state.value}>"

    # -- posting ------------------------------------------------------------

    def _post_or_fail(self, item: tuple[Any, AsyncResult | None]) -> None:
        try:
            self._mailbox.put_nowait(item)
        except Full:
            raise self._full_error() from None

    def _post_or_block(self, item: tuple[Any, AsyncResult | None]) -> None:
        try:
            self._mailbox.put(item, True, self._send_timeout)
        except Full:
            raise self._full_error() from None
        if self._state is ActorState.STOPPED:
            # We were blocked while the actor ended; nobody will read this.
            raise self._stopped_error()

    def _full_error(self) -> MailboxFull:
        waited = "" if self._overflow == "fail" else f" after waiting {self._send_timeout} s"
        return MailboxFull(
            f"mailbox of actor {self._name!r} is full ({self._mailbox_size} messages){waited}"
        )

    def _stopped_error(self, detail: str = "is stopping or stopped") -> ActorStopped:
        return ActorStopped(f"actor {self._name!r} {detail}")

    # -- lifecycle (also driven by actors.actor and actors.supervisor) ------

    def _close(self) -> None:
        self._closed = True
        self._state = ActorState.STOPPING

    def _await_stop(self, timeout: float, post_stop: bool) -> None:
        deadline = time.monotonic() + timeout
        if post_stop:
            # Straight to the queue: the overflow policy is for senders. If
            # the mailbox stays full past the timeout, the kill below ends it.
            with contextlib.suppress(Full):
                self._mailbox.put((_STOP, None), True, max(0.0, timeout))
        if not self._done.wait(max(0.0, deadline - time.monotonic())):
            self._kill(timeout)

    def _kill(self, timeout: float) -> None:
        greenlet = self._greenlet
        self._log.warning("actor_killed", timeout=timeout)
        if greenlet is not None and not greenlet.dead:
            greenlet.kill(block=True, timeout=_KILL_GRACE)
        if not self._done.is_set():
            self._finish(None, f"was killed after stop timed out ({timeout} s)")

    def _reopen(self) -> None:
        """Make a stopped ref usable again (a parent supervisor restarting ours)."""
        self._closed = False
        self._state = ActorState.STARTING
        self._done = Event()

    def _cancel_restart(self) -> None:
        restart, self._restart = self._restart, None
        if restart is not None:
            restart.kill(block=False)

    def _finish(self, cause: BaseException | None, why: str = "stopped") -> None:
        """Mark stopped, settle what is left in the mailbox, wake stop() waiters.

        An ask's reply (the one ``ask`` created) is failed with ActorStopped;
        a told message goes to the last instance's ``on_dropped``, which may
        settle a reply channel inside it (see the class docstring). The ask
        being handled, if any, is the loop's to fail.
        """
        if self._state is ActorState.STOPPED:
            return
        self._closed = True
        self._state = ActorState.STOPPED
        self._inline = None
        instance, self._instance = self._instance, None
        dropped = 0
        while True:
            try:
                message, reply = self._mailbox.get_nowait()
            except Empty:
                break
            if message is _STOP or message is _CRASH:
                continue
            dropped += 1
            if reply is not None:
                error = self._stopped_error(f"{why} before handling {type(message).__name__}")
                error.__cause__ = cause
                reply.set_exception(error)
            elif instance is not None:
                try:
                    instance.on_dropped(message)
                except _HANDLER_ERRORS:
                    self._log.exception("actor_on_dropped_failed")
        self._done.set()
        self._log.debug("actor_stopped", reason=why, dropped=dropped)
        if self._supervisor is not None:
            self._supervisor._child_finished(self)

    # -- inline dispatch ------------------------------------------------------
    # ``tell``/``ask`` to an idle ``inline`` actor with an empty mailbox run the
    # handler at once on the caller's greenlet (the contract is under "Inline
    # dispatch" in the ``Actor`` docstring). These methods are the hand-off
    # between that sender and the actor's own greenlet: who runs a handler now,
    # waiting for one that yielded, passing on the crash of a tell.

    def _handle_inline(
        self, actor: Actor, message: object, reply: AsyncResult | None, current: Greenlet
    ) -> bool:
        """Run the handler of an idle ``inline`` actor on the sender's greenlet.

        Same outcome as through the mailbox: the reply of an ask gets the
        result or the handler's exception; a tell that raises crashes the
        actor (its own greenlet runs ``on_failure``, ``on_dropped`` for the
        message and the supervisor's restart, before anything queued
        meanwhile). Returns False when the message crashed the actor.
        """
        self._busy = True
        self._inline_owner = current
        try:
            result = type(actor)._dispatch[type(message)](actor, message)
        except _HANDLER_ERRORS as exc:
            if reply is None:
                self._inline_crash(exc, message)
                return False
            self._inline_done()
            reply.set_exception(exc)
            return True
        except BaseException as exc:
            # The sender is being killed (a handler that yielded) or the
            # process is exiting: answer the ask, leave the actor usable.
            self._inline_done()
            if reply is not None:
                reply.set_exception(exc)
            raise
        self._inline_done()
        if reply is not None:
            reply.set(result)
        return True

    def _inline_done(self) -> None:
        """A handler run inline returned: the actor is idle, or its greenlet goes next."""
        self._inline_owner = None
        waiter = self._inline_waiter
        if waiter is None:
            self._busy = False
            return
        # The actor's greenlet took a message while this handler yielded and
        # waits: it goes next, still busy, so nothing sent meanwhile runs
        # inline before it.
        self._inline_waiter = None
        waiter.set()

    def _inline_crash(self, exc: BaseException, message: object) -> None:
        """A tell run inline raised ``exc``: hand the crash to the actor's greenlet."""
        # Stays busy: nothing more runs inline until the actor's greenlet,
        # which takes the crash before any message, has crashed.
        self._inline_owner = None
        self._pending_crash = (exc, message)
        waiter = self._inline_waiter
        if waiter is not None:
            self._inline_waiter = None
            waiter.set()
        elif not self._mailbox.qsize():
            self._mailbox.put_nowait((_CRASH, None))  # wake the loop parked on the mailbox

    def _await_inline_handler(self) -> None:
        """From the actor's greenlet: wait for a handler running inline that yielded."""
        while self._inline_owner is not None:
            waiter = self._inline_waiter
            if waiter is None:
                waiter = self._inline_waiter = Event()
            waiter.wait()

    def _take_pending_crash(self, message: object, reply: AsyncResult | None) -> tuple[Any, Any]:
        """From the actor's greenlet: the crash an inline tell left, if any.

        The message the loop holds was never handled: it goes back to the
        head of the mailbox, for the restarted instance (or ``on_dropped``).
        """
        pending, self._pending_crash = self._pending_crash, None
        if pending is not None and message is not _CRASH:
            self._mailbox.queue.appendleft((message, reply))
        return pending  # type: ignore[return-value]


def _check_options(name: str, mailbox_size: int | None, overflow: str, send_timeout: float) -> None:
    if mailbox_size is not None and (
        not isinstance(mailbox_size, int) or isinstance(mailbox_size, bool) or mailbox_size < 1
    ):
        raise ValueError(
            f"actor {name!r}: mailbox_size must be None (unbounded) or a positive int, "
            f"not {mailbox_size!r}"
        )
    if overflow not in ("block", "fail"):
        raise ValueError(f"actor {name!r}: overflow must be 'block' or 'fail', not {overflow!r}")
    if not send_timeout >= 0:
        raise ValueError(f"actor {name!r}: send_timeout must be >= 0 seconds, not {send_timeout!r}")
