"""Cooperative psycopg2: make libpq waits yield to the gevent hub.

psycopg2 blocks in C while it waits for the server, which would freeze every
greenlet.  ``psycopg2.extensions.set_wait_callback`` lets a Python function do
the waiting instead; ours waits on the connection's socket with gevent, so other
greenlets run meanwhile (psycogreen does the same; we keep the ten lines here
to own the cancel-on-kill behaviour below).

Importing :mod:`gdbpool` calls :func:`make_psycopg_green` once.  It is
process-wide and works for connections opened before or after it, so an
application that imported psycopg2 first loses nothing.  The one thing that does
not work under a wait callback is ``async=True`` connections, which nobody mixes
with gevent anyway.

The same pieces serve an interaction's ``timeout``: :class:`_Canceller` cancels
a statement past its deadline with :func:`cancel_backend`, and severs the
connection with :func:`shutdown_socket` when the cancel gets no answer.

If the waiting greenlet is interrupted (killed with ``greenlet.kill``, or a
``gevent.Timeout`` fires), the callback starts :func:`cancel_backend` in a new
greenlet and re-raises at once, so the query does not keep running server-side.
psycopg2 then closes the connection; pools replace it.  The cancel goes over a
short-lived side connection (``SELECT pg_cancel_backend(pid)``), not through
``conn.cancel()``: libpq's PQcancel blocks while holding the GIL until the server
answers, which would freeze the whole process when the server is unreachable.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any, Final

import gevent
import psycopg2
from gevent.event import Event
from gevent.socket import wait_read, wait_write
from psycopg2 import extensions

from gdbpool.fork import TrackedConnection

__all__ = [
    "CANCEL_GRACE",
    "CANCEL_TIMEOUT",
    "cancel_backend",
    "gevent_wait_callback",
    "is_green",
    "make_psycopg_green",
    "shutdown_socket",
]


def gevent_wait_callback(conn: Any, timeout: float | None = None) -> None:
    """Wait for ``conn`` with the gevent hub until libpq says the operation is done."""
    poll = conn.poll
    fileno = conn.fileno()
    try:
        while True:
            state = poll()
            if state == extensions.POLL_OK:
                return
            if state == extensions.POLL_READ:
                wait_read(fileno, timeout=timeout)
            elif state == extensions.POLL_WRITE:
                wait_write(fileno, timeout=timeout)
            else:  # pragma: no cover - libpq never returns anything else
                raise psycopg2.OperationalError(f"bad state from poll: {state}")
    except BaseException:
        # Interrupted (greenlet killed, Timeout): stop the statement server-side.
        target = _cancel_target(conn)
        if target is not None:
            dsn, pid = target
            # A closure, not spawn(f, dsn): gevent prints a failed greenlet's args.
            gevent.spawn(lambda: cancel_backend(dsn, pid))
        raise


#: Seconds :func:`cancel_backend` may take to connect and cancel.
CANCEL_TIMEOUT = 2.0


def _cancel_target(conn: Any) -> tuple[str, int] | None:
    """The DSN (with password) and backend pid needed to cancel ``conn``'s statement."""
    try:
        if conn.closed or conn.status == extensions.STATUS_SETUP:
            return None  # closed, or interrupted while connecting: no statement runs
        if getattr(conn, "gdbpool_inherited", False):
            return None  # a fork() child's copy: the statement is the parent's (gdbpool.fork)
        pid = conn.info.backend_pid
        params = conn.get_dsn_parameters()
        password = conn.info.password
    except psycopg2.Error:
        return None  # closed: nothing runs on the server any more
    if not pid:
        return None
    if password:
        params["password"] = password
    params["application_name"] = "gdbpool:cancel"
    return extensions.make_dsn(**params), pid


def cancel_backend(
    dsn: str, pid: int, timeout: float = CANCEL_TIMEOUT, on_connect: Any = None
) -> bool:
    """Cancel backend ``pid``'s statement over a new connection to ``dsn``; True if sent.

    Cooperative and bounded, connect and statement together, by ``timeout``;
    never raises (an unreachable server means there is nothing more to do).
    ``on_connect(side_conn)`` lets a caller keep hold of the side connection to
    sever it.
    """
    side = None
    try:
        with gevent.Timeout(timeout):
            side = psycopg2.connect(dsn, connection_factory=TrackedConnection)
            if on_connect is not None:
                on_connect(side)
            side.autocommit = True
            with side.cursor() as cur:
                cur.execute("SELECT pg_cancel_backend(%s)", (pid,))
                return bool(cur.fetchone()[0])
    except (psycopg2.Error, gevent.Timeout):
        return False
    finally:
        if side is not None:
            with contextlib.suppress(psycopg2.Error):
                side.close()


def make_psycopg_green() -> None:
    """Install :func:`gevent_wait_callback` as psycopg2's wait callback (idempotent)."""
    if extensions.get_wait_callback() is not gevent_wait_callback:
        extensions.set_wait_callback(gevent_wait_callback)


def is_green() -> bool:
    """True when psycopg2 waits through gevent in this process."""
    return extensions.get_wait_callback() is gevent_wait_callback


# -- aborting I/O ----------------------------------------------------------------------


def shutdown_socket(conn: Any) -> None:
    """Shut the connection's socket down: its pending I/O fails at once, no cancel sent.

    Works on a duplicate of the descriptor, so the connection still owns (and
    later closes) its own; a connection already closed is left alone.
    """
    try:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
    except (OSError, psycopg2.Error):
        return
    try:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()


#: Seconds a timed-out statement gets to stop after the cancel request before
#: the connection's socket is shut down (an unreachable server never answers
#: the cancel).
CANCEL_GRACE: Final = 2.0


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
