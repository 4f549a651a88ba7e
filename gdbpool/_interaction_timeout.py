"""An interaction's timeout: the server-side cancel, and the error a failure becomes.

Internal to :mod:`gdbpool.interaction` (see "Timeout" and "Errors" in its
module docstring): :class:`_Canceller` cancels a statement past its timeout
and severs the connection when the cancel gets no answer; ``_failure`` turns
an exception into :class:`~gdbpool.errors.DBInteractionException`, or
:class:`~gdbpool.errors.InteractionTimeout` when the canceller caused it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import gevent
import psycopg2
from gevent.event import Event
from psycopg2 import errors as pgerrors

from gdbpool._sockets import shutdown_socket
from gdbpool.errors import DBInteractionException, InteractionTimeout
from gdbpool.green import _cancel_target, cancel_backend

if TYPE_CHECKING:
    from gdbpool.interaction import Interaction

__all__ = ["CANCEL_GRACE"]

#: Seconds a timed-out statement gets to stop after the cancel request before
#: the connection's socket is shut down (an unreachable server never answers
#: the cancel).
CANCEL_GRACE: Final = 2.0


def _failure(
    exc: Exception, interaction: Interaction, canceller: _Canceller | None
) -> DBInteractionException:
    pgcode = getattr(exc, "pgcode", None)
    if canceller is not None and canceller.fired and isinstance(exc, _CANCELLED):
        what = (
            "the server did not answer the cancel; the connection was closed"
            if canceller.severed
            else "the statement was cancelled on the server"
        )
        return InteractionTimeout(
            f"interaction ran past its timeout of {interaction.timeout} s: {what}",
            pgcode=pgcode,
            original=exc,
        )
    text = str(exc).strip() or type(exc).__name__
    return DBInteractionException(
        f"interaction failed: {type(exc).__name__}: {text}", pgcode=pgcode, original=exc
    )


_CANCELLED = (pgerrors.QueryCanceled, psycopg2.OperationalError, psycopg2.InterfaceError)


class _Canceller:
    """Cancels the connection's running statement ``timeout`` seconds from now.

    The cancel is ``SELECT pg_cancel_backend(pid)`` on a short-lived side
    connection opened cooperatively with the same parameters, not
    ``conn.cancel()``: libpq's PQcancel blocks holding the GIL until the
    server answers, which freezes the whole process when the server is
    unreachable. If the work is still running :data:`CANCEL_GRACE` seconds
    after the timer fired, the connection's socket is shut down, so the work
    ends with OperationalError and psycopg2 closes the connection.
    """

    __slots__ = ("_conn", "_done", "_greenlet", "_pending", "_side", "fired", "severed")

    def __init__(self, conn: Any, timeout: float) -> None:
        self._conn = conn
        self.fired = False
        self.severed = False
        self._done = Event()
        self._pending: gevent.Greenlet | None = None
        self._side: Any = None
        self._greenlet = gevent.spawn_later(timeout, self._fire)

    def _fire(self) -> None:
        self.fired = True
        self._pending = gevent.spawn(self._cancel)
        if not self._done.wait(CANCEL_GRACE):
            self.severed = True
            shutdown_socket(self._conn)

    def _cancel(self) -> None:
        target = _cancel_target(self._conn)
        if target is not None:  # None: closed meanwhile, nothing runs on the server
            cancel_backend(*target, timeout=CANCEL_GRACE, on_connect=self._keep_side)

    def _keep_side(self, side: Any) -> None:
        self._side = side

    def finish(self) -> None:
        """Stop the timer; if it fired, wait (bounded) until its cancel was delivered."""
        self._done.set()
        if not self.fired:
            self._greenlet.kill(block=False)
            return
        pending = self._pending
        # The cancel must not land on the connection's next statement.
        if pending is not None and not pending.join(CANCEL_GRACE):
            if self._side is not None:
                shutdown_socket(self._side)
            pending.join(CANCEL_GRACE)
