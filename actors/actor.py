"""Actor: the base class, message dispatch and the mailbox loop."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import gevent
from gevent import GreenletExit
from gevent.event import AsyncResult

from actors.errors import _HANDLER_ERRORS, ActorError, ActorStartError, UnhandledMessage
from actors.ref import (
    _STOP,
    DEFAULT_SEND_TIMEOUT,
    ActorRef,
    ActorState,
    MailboxOverflow,
    _ChildOwner,
)

__all__ = ["DEFAULT_START_TIMEOUT", "Actor", "handles"]

#: Default bound, in seconds, on how long ``start()`` waits for ``on_start``.
DEFAULT_START_TIMEOUT = 10.0

_F = TypeVar("_F", bound=Callable[..., Any])
_Handler = Callable[[Any, Any], Any]
_names = itertools.count(1)


def handles(*message_types: type) -> Callable[[_F], _F]:
    """Mark an Actor method as the handler of ``message_types``.

    A handler for a type also handles its subclasses, unless a more specific
    handler exists. The method receives the message only; what it returns is
    the reply to an ``ask``.
    """
    if not message_types or not all(isinstance(t, type) for t in message_types):
        raise TypeError(f"@handles needs one or more message types, got {message_types!r}")

    def mark(method: _F) -> _F:
        method._actor_handles = message_types  # type: ignore[attr-defined]
        return method

    return mark


class _DispatchTable(dict[type, _Handler]):
    """Message type → handler function, filled lazily along the message's MRO."""

    __slots__ = ("_actor_class", "_names")

    def __init__(self, actor_class: type[Actor], names: dict[type, str]) -> None:
        super().__init__()
        self._actor_class = actor_class
        self._names = names

    def __missing__(self, message_type: type) -> _Handler:
        handler: _Handler = _unhandled
        for base in message_type.__mro__:
            name = self._names.get(base)
            if name is not None:
                handler = getattr(self._actor_class, name)
                break
        self[message_type] = handler
        return handler


def _unhandled(actor: Actor, message: object) -> None:
    raise UnhandledMessage(
        f"actor {actor.ref.name!r} ({type(actor).__name__}) has no handler for "
        f"{type(message).__qualname__}"
    )


class Actor:
    """Base class of actors: state owned by one greenlet, fed by a mailbox.

    Subclasses declare handlers with :func:`handles` and are started with
    :meth:`start` (or ``Supervisor.spawn``), which returns an
    :class:`~actors.ActorRef`. Handlers run one at a time in the actor's
    greenlet; nothing else may touch the actor's attributes.

    Every ask is answered or failed:

    - A handler's exception, including a ``gevent.Timeout`` from a timed
      wait inside it, is set on the ask's reply and the actor carries on;
      on a tell the same exception crashes the actor (see ``on_failure``).
    - If the actor is killed while handling an ask (a stop that timed
      out), that reply fails with :class:`ActorStopped`, as do the asks
      still queued.
    - Any other BaseException (``SystemExit``, ``KeyboardInterrupt``...) is
      set on the reply of the ask being handled, then ends the actor
      without ``on_failure`` or restart: queued asks fail with
      :class:`ActorStopped` and the exception propagates out of the
      actor's greenlet.

    Only the reply that ``ask`` created is covered: a message that carries
    its own reply channel (an AsyncResult or Queue inside the message) and
    is told is the application's to settle; if the actor ends before
    handling it, ``on_dropped`` gets it for that.

    Hooks, all run in the actor's greenlet:

    - ``on_start()`` before the first message; if it raises, ``start()``
      raises :class:`ActorStartError` and the actor never runs.
    - ``on_stop()`` after a graceful stop handled the queued messages; an
      exception in it is logged. Not run when a stop timed out and killed
      the actor, nor after a crash.
    - ``on_failure(exc)`` when a told message (or an unhandled message type
      on ``tell``) raised, ``gevent.Timeout`` included; then the supervisor
      restarts a fresh instance, or, unsupervised, the actor stops. An
      exception in it is logged.

    Inline dispatch: an actor class with ``inline = True`` whose mailbox is
    empty and which is not handling a message has a ``tell`` or ``ask`` sent
    to it handled at once on the sender's greenlet, with no greenlet switch
    (the idea of Akka's CallingThreadDispatcher, used only when it cannot be
    told apart from the mailbox path). One handler still runs at a time and
    each sender's order is kept: while a handler runs, inline or not, or
    anything waits in the mailbox, messages go through the mailbox as usual;
    sends from the hub (timer callbacks) always do. Outcomes are the same: an
    ask's reply is already set when ``ask`` returns; a tell that raises
    crashes the actor, whose own greenlet runs ``on_failure`` and the
    restart before any message queued meanwhile. It is for actors whose
    handlers never wait: if one does yield, the actor's greenlet waits for it
    before the next message, but a kill or ``gevent.Timeout`` aimed at the
    sender lands inside that handler, where a Timeout counts as the handler's
    own error (a tell crashes the actor; the sender's ``with Timeout`` does
    not see it).
    """

    #: Run handlers on the sender's greenlet when the actor is idle (see
    #: "Inline dispatch" in the class docstring). Only for actors whose
    #: handlers never wait (no I/O, no sleeps, no blocking asks).
    inline: ClassVar[bool] = False

    _handler_names: ClassVar[dict[type, str]] = {}
    _dispatch: ClassVar[_DispatchTable]
    _ref: ActorRef | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names: dict[type, str] = {}
        for klass in reversed(cls.__mro__):
            own: dict[type, str] = {}
            for attr, value in vars(klass).items():
                for message_type in getattr(value, "_actor_handles", ()):
                    if message_type in own:
                        raise TypeError(
                            f"{klass.__qualname__}: {message_type.__qualname__} is handled by "
                            f"both {own[message_type]}() and {attr}()"
                        )
                    own[message_type] = attr
            names.update(own)
        cls._handler_names = names
        cls._dispatch = _DispatchTable(cls, names)

    @property
    def ref(self) -> ActorRef:
        """This actor's own ref (available from ``on_start`` on)."""
        if self._ref is None:
            raise ActorError(f"{type(self).__name__} has no ref until it is started")
        return self._ref

    def on_start(self) -> None:
        """Called in the actor's greenlet before the first message."""

    def on_stop(self) -> None:
        """Called in the actor's greenlet at the end of a graceful stop."""

    def on_failure(self, exc: BaseException) -> None:
        """Called in the actor's greenlet when a told message raised ``exc``."""

    def on_dropped(self, message: object) -> None:
        """Called for each told message this actor will never handle.

        That is: the told message whose handler crashed the actor (after
        ``on_failure``, in the actor's greenlet), and each told message left
        in the mailbox when the actor ends (it crashed and is not restarted,
        its supervisor gave up, or a stop timed out and killed it), in
        whatever greenlet ended it. Asked messages fail with
        :class:`ActorStopped` instead. An exception in it is logged. Override
        it to settle a reply channel a message carries (the default drops it).
        """

    @classmethod
    def start(
        cls,
        *args: Any,
        name: str | None = None,
        mailbox_size: int | None = None,
        overflow: MailboxOverflow = "block",
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        **kwargs: Any,
    ) -> ActorRef:
        """Build the actor with ``cls(*args, **kwargs)``, run it, return its ref.

        Reserved keywords (not passed to ``__init__``):

        - ``name``: used in logs and errors; default ``ClassName-<n>``.
        - ``mailbox_size``: None (default) for an unbounded mailbox, or a
          positive bound.
        - ``overflow``: what a send to a full bounded mailbox does:
          ``"block"`` (default) waits up to ``send_timeout`` seconds
          (default 1.0) for room, ``"fail"`` raises at once; both raise
          :class:`MailboxFull`.
        - ``start_timeout``: bound on ``on_start`` (default 10 s).

        Waits until ``on_start`` has finished. Raises :class:`ValueError`
        for invalid options and :class:`ActorStartError` if ``__init__`` or
        ``on_start`` raised or timed out.
        """
        return _start(
            cls, args, kwargs, name, mailbox_size, overflow, send_timeout, start_timeout, None
        )


Actor._dispatch = _DispatchTable(Actor, {})


def _start(
    cls: type[Actor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    name: str | None,
    mailbox_size: int | None,
    overflow: MailboxOverflow,
    send_timeout: float,
    start_timeout: float,
    supervisor: _ChildOwner | None,
) -> ActorRef:
    ref = ActorRef(
        cls,
        args,
        kwargs,
        name=f"{cls.__name__}-{next(_names)}" if name is None else name,
        mailbox_size=mailbox_size,
        overflow=overflow,
        send_timeout=send_timeout,
        supervisor=supervisor,
    )
    try:
        _launch(ref, start_timeout)
    except ActorStartError as exc:
        ref._finish(exc, "failed to start")
        raise
    return ref


def _launch(ref: ActorRef, start_timeout: float = DEFAULT_START_TIMEOUT) -> None:
    """Build a fresh instance for ``ref`` and run it on ``ref``'s mailbox.

    Raises ActorStartError (leaving no greenlet behind) if it cannot start.
    """
    ref._state = ActorState.STARTING
    cls = ref._actor_class
    try:
        actor = cls(*ref._args, **ref._kwargs)
    except Exception as exc:
        raise ActorStartError(
            f"actor {ref.name!r}: {cls.__name__}() raised {type(exc).__name__}: {exc}"
        ) from exc
    actor._ref = ref
    ref._instance = actor
    started = AsyncResult()
    greenlet = gevent.spawn(_serve, ref, actor, started)
    greenlet.name = ref.name
    ref._greenlet = greenlet
    try:
        started.get(timeout=start_timeout)
    except gevent.Timeout as exc:
        if started.ready():  # on_start itself raised a Timeout
            raise ActorStartError(
                f"actor {ref.name!r}: on_start raised {type(exc).__name__}: {exc}"
            ) from exc
        greenlet.kill(block=True, timeout=1.0)
        raise ActorStartError(
            f"actor {ref.name!r}: on_start did not finish within {start_timeout} s"
        ) from None
    except Exception as exc:
        raise ActorStartError(
            f"actor {ref.name!r}: on_start raised {type(exc).__name__}: {exc}"
        ) from exc
    ref._log.debug("actor_started", actor_class=cls.__name__)


def _serve(ref: ActorRef, actor: Actor, started: AsyncResult) -> None:
    """The actor's greenlet: on_start, then one message at a time until stopped."""
    try:
        actor.on_start()
    except BaseException as exc:
        started.set_exception(exc)
        return
    if ref._state is ActorState.STARTING:
        ref._state = ActorState.RUNNING
    started.set(None)

    get = ref._mailbox.get
    table = type(actor)._dispatch
    message: object = None
    reply: AsyncResult | None = None
    try:
        if not type(actor).inline:
            # The hot path: no allocation, no lock, no logging, one dict lookup.
            while True:
                message, reply = get()
                if message is _STOP:
                    break
                if reply is None:
                    table[type(message)](actor, message)
                else:
                    try:
                        reply.set(table[type(message)](actor, message))
                    except _HANDLER_ERRORS as exc:
                        reply.set_exception(exc)
        else:
            ref._busy = False
            ref._inline = actor
            while True:
                message, reply = get()
                if ref._busy:
                    ref._await_inline_handler()  # a handler running inline yielded: let it finish
                    crash = ref._take_pending_crash(message, reply)
                    if crash is not None:
                        reply = None
                        error, message = crash
                        raise error  # what a tell handled inline raised
                if message is _STOP:
                    break
                ref._busy = True
                if reply is None:
                    table[type(message)](actor, message)
                else:
                    try:
                        reply.set(table[type(message)](actor, message))
                    except _HANDLER_ERRORS as exc:
                        reply.set_exception(exc)
                ref._busy = False
            ref._busy = True  # on_stop and after: nothing inline
        try:
            actor.on_stop()
        except _HANDLER_ERRORS:
            ref._log.exception("actor_stop_failed")
    except GreenletExit:
        if reply is not None and not reply.ready():
            reply.set_exception(ref._stopped_error("was killed while handling this message"))
        ref._finish(None, "was killed")
        return
    except _HANDLER_ERRORS as exc:
        _crashed(ref, actor, exc, message)
        return
    except BaseException as exc:
        # Not the handler's failure but the end of the actor: still answer
        # the ask in flight (``reply`` is a settled one, or None, otherwise).
        if reply is not None and not reply.ready():
            reply.set_exception(exc)
        ref._finish(exc, "died")
        raise
    ref._finish(None)


def _crashed(ref: ActorRef, actor: Actor, exc: BaseException, message: object) -> None:
    """A told ``message`` raised ``exc``: on_failure, on_dropped for it, restart or stop."""
    ref._inline = None  # until a restarted instance runs
    ref._log.error("actor_crashed", exc_info=exc)
    try:
        actor.on_failure(exc)
    except _HANDLER_ERRORS:
        ref._log.exception("actor_on_failure_failed")
    try:
        actor.on_dropped(message)  # never handled: its handler crashed
    except _HANDLER_ERRORS:
        ref._log.exception("actor_on_dropped_failed")
    if ref._supervisor is None or ref._closed:
        ref._finish(exc, "crashed")
    else:
        ref._state = ActorState.STARTING
        ref._supervisor._child_crashed(ref, exc)
