"""Errors raised by the actor kit.

Every error derives from :class:`ActorError`; each message names the actor
(or supervisor) concerned and says what went wrong. Also which exceptions
count as a handler's own failure (``_HANDLER_ERRORS``), shared by the
mailbox loop, the ref and inline dispatch.
"""

from __future__ import annotations

import gevent

__all__ = [
    "ActorError",
    "ActorStartError",
    "ActorStopped",
    "AskTimeout",
    "MailboxFull",
    "SupervisorGaveUp",
    "UnhandledMessage",
]

# What a handler or hook may raise and still count as its own failure: an
# ask's reply fails with it, a tell crashes the actor. gevent.Timeout is a
# BaseException but is what a timed wait inside a handler raises (e.g.
# ``AsyncResult.get(timeout=)``), so it is an ordinary handler error here.
# GreenletExit (the actor is being killed) and the other BaseExceptions
# (SystemExit, KeyboardInterrupt...) end the actor instead.
_HANDLER_ERRORS: tuple[type[BaseException], ...] = (Exception, gevent.Timeout)


class ActorError(Exception):
    """Base class of every error raised by :mod:`actors`."""


class ActorStopped(ActorError):
    """The actor is stopping or stopped and will not handle this message.

    Raised at once by ``tell``/``ask`` once ``stop()`` has begun, and set on
    the reply of every asked message still queued when the actor stops
    without handling it (forced stop, crash, supervisor giving up), and of
    the ask being handled when a stop that timed out killed the actor.
    """


class MailboxFull(ActorError):
    """A bounded mailbox had no room for the message.

    With ``overflow="fail"`` this is raised at once; with ``overflow="block"``
    after the sender waited ``send_timeout`` seconds for room.
    """


class ActorStartError(ActorError):
    """The actor could not be started.

    Raised by ``start()``/``spawn()`` when the constructor or ``on_start``
    raised (the cause is chained); the actor never runs. Invalid start
    options (``mailbox_size``, ``overflow``, ``send_timeout``) raise
    :class:`ValueError` instead, before anything is created.
    """


class UnhandledMessage(ActorError):
    """The actor has no ``@handles`` method for the message's type.

    Set on the reply for an ask; for a tell it crashes the actor like any
    other handler exception.
    """


class AskTimeout(ActorError, TimeoutError):
    """The actor did not answer an ask within its ``timeout``."""


class SupervisorGaveUp(ActorError):
    """A supervisor exceeded its restart intensity and stopped.

    Passed to the supervisor's ``on_give_up`` callback and reported to its
    parent supervisor as a crash; the child's last exception is chained as
    ``__cause__``.
    """
