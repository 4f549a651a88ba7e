"""Inline dispatch: an idle ``inline`` actor's handler run on the sender's greenlet.

``tell``/``ask`` to an actor with ``inline = True`` that is idle, with an
empty mailbox, run the handler at once on the caller's greenlet (the
contract is under "Inline dispatch" in the ``Actor`` docstring). These
functions are the hand-off between that sender and the actor's own
greenlet: who runs a handler now, waiting for one that yielded, passing on
the crash of a tell. They work on the ref's slots (``_busy``,
``_inline_owner``, ``_inline_waiter``, ``_pending_crash``, ``_mailbox``) and
live apart so that ``ActorRef`` stays about the mailbox and the lifecycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gevent.event import AsyncResult, Event

from actors.errors import _HANDLER_ERRORS

if TYPE_CHECKING:
    from gevent import Greenlet

    from actors.actor import Actor
    from actors.ref import ActorRef

# Posted to wake an actor's greenlet parked on its empty mailbox when a
# handler run inline on a sender's greenlet raised on a tell: the actor's own
# greenlet then crashes with it (see crash()).
CRASH = object()


def handle(
    ref: ActorRef, actor: Actor, message: object, reply: AsyncResult | None, current: Greenlet
) -> bool:
    """Run the handler of an idle ``inline`` actor on the sender's greenlet.

    Same outcome as through the mailbox: the reply of an ask gets the
    result or the handler's exception; a tell that raises crashes the
    actor (its own greenlet runs ``on_failure``, ``on_dropped`` for the
    message and the supervisor's restart, before anything queued
    meanwhile). Returns False when the message crashed the actor.
    """
    ref._busy = True
    ref._inline_owner = current
    try:
        result = type(actor)._dispatch[type(message)](actor, message)
    except _HANDLER_ERRORS as exc:
        if reply is None:
            crash(ref, exc, message)
            return False
        done(ref)
        reply.set_exception(exc)
        return True
    except BaseException as exc:
        # The sender is being killed (a handler that yielded) or the
        # process is exiting: answer the ask, leave the actor usable.
        done(ref)
        if reply is not None:
            reply.set_exception(exc)
        raise
    done(ref)
    if reply is not None:
        reply.set(result)
    return True


def done(ref: ActorRef) -> None:
    """A handler run inline returned: the actor is idle, or its greenlet goes next."""
    ref._inline_owner = None
    waiter = ref._inline_waiter
    if waiter is None:
        ref._busy = False
        return
    # The actor's greenlet took a message while this handler yielded and
    # waits: it goes next, still busy, so nothing sent meanwhile runs
    # inline before it.
    ref._inline_waiter = None
    waiter.set()


def crash(ref: ActorRef, exc: BaseException, message: object) -> None:
    """A tell run inline raised ``exc``: hand the crash to the actor's greenlet."""
    # Stays busy: nothing more runs inline until the actor's greenlet,
    # which takes the crash before any message, has crashed.
    ref._inline_owner = None
    ref._pending_crash = (exc, message)
    waiter = ref._inline_waiter
    if waiter is not None:
        ref._inline_waiter = None
        waiter.set()
    elif not ref._mailbox.qsize():
        ref._mailbox.put_nowait((CRASH, None))  # wake the loop parked on the mailbox


def await_handler(ref: ActorRef) -> None:
    """From the actor's greenlet: wait for a handler running inline that yielded."""
    while ref._inline_owner is not None:
        waiter = ref._inline_waiter
        if waiter is None:
            waiter = ref._inline_waiter = Event()
        waiter.wait()


def take_pending_crash(
    ref: ActorRef, message: object, reply: AsyncResult | None
) -> tuple[Any, Any]:
    """From the actor's greenlet: the crash an inline tell left, if any.

    The message the loop holds was never handled: it goes back to the
    head of the mailbox, for the restarted instance (or ``on_dropped``).
    """
    pending, ref._pending_crash = ref._pending_crash, None
    if pending is not None and message is not CRASH:
        ref._mailbox.queue.appendleft((message, reply))
    return pending  # type: ignore[return-value]
