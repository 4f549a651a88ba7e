"""Cooperative psycopg2: make libpq waits yield to the gevent hub.

psycopg2 blocks in C while it waits for the server, which would freeze every
greenlet.  ``psycopg2.extensions.set_wait_callback`` lets a Python function do
the waiting instead; ours waits on the connection's socket with gevent, so other
greenlets run meanwhile (psycogreen does the same; we keep the ten lines here
to own the cancel-on-kill behaviour below).

Importing :mod:`gdbpool` changes nothing in psycopg2.  The callback is
installed by :func:`make_psycopg_green` (explicit; refuses to replace another
callback unless told to) or, implicitly, by the first pool or notification hub
the application creates (:func:`ensure_green`: never replaces another callback,
and does nothing when ``GDBPOOL_NO_GREEN=1``).  It is process-wide and works
for connections opened before or after it.  Under it libpq's ``connect_timeout``
(parameter or ``PGCONNECT_TIMEOUT``) still bounds a connection attempt: the
callback applies it itself, since libpq does not in non-blocking mode.  The one
thing that does not work under a wait callback is ``async=True`` connections,
which nobody mixes with gevent anyway.  Decisions: docs/design/green.md.

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
import time
from typing import Any, Final

import gevent
import psycopg2
from gevent.event import Event
from gevent.socket import wait_read, wait_write
from psycopg2 import extensions

from gdbpool.errors import ConfigurationError

__all__ = [
    "CANCEL_GRACE",
    "CANCEL_TIMEOUT",
    "KEEPALIVES",
    "NO_GREEN_ENV",
    "cancel_backend",
    "ensure_green",
    "gevent_wait_callback",
    "is_green",
    "keepalive_options",
    "make_psycopg_green",
    "shutdown_socket",
]


def gevent_wait_callback(conn: Any, timeout: float | None = None) -> None:
    """Wait for ``conn`` with the gevent hub until libpq says the operation is done.

    While ``conn`` is connecting, its ``connect_timeout`` (or ``PGCONNECT_TIMEOUT``)
    bounds the whole attempt, as libpq does in blocking mode: past it the connect
    fails with :class:`psycopg2.OperationalError` ("timeout expired").
    """
    poll = conn.poll
    fileno = conn.fileno()
    deadline: float | None = None
    try:
        while True:
            state = poll()
            if state == extensions.POLL_OK:
                return
            if deadline is None:  # once per call, and only when it has to wait
                deadline = _connect_deadline(conn)
            wait = timeout
            if deadline != _NO_DEADLINE:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    raise psycopg2.OperationalError("timeout expired")
            try:
                if state == extensions.POLL_READ:
                    wait_read(fileno, timeout=wait)
                elif state == extensions.POLL_WRITE:
                    wait_write(fileno, timeout=wait)
                else:  # pragma: no cover - libpq never returns anything else
                    raise psycopg2.OperationalError(f"bad state from poll: {state}")
            except TimeoutError:
                if deadline == _NO_DEADLINE:
                    raise
                raise psycopg2.OperationalError("timeout expired") from None
    except BaseException:
        # Interrupted (greenlet killed, Timeout): stop the statement server-side.
        target = _cancel_target(conn)
        if target is not None:
            dsn, pid = target
            # A closure, not spawn(f, dsn): gevent prints a failed greenlet's args.
            gevent.spawn(lambda: cancel_backend(dsn, pid))
        raise


_NO_DEADLINE = float("inf")
# psycopg2's connection states while connect() runs: SETUP, then its internal
# CONN_STATUS_CONNECTING (20) and CONN_STATUS_DATESTYLE (21), not exported.
_CONNECTING = frozenset({extensions.STATUS_SETUP, 20, 21})


def _connect_deadline(conn: Any) -> float:
    """When a connection attempt of ``conn`` must give up; infinity when it is not connecting.

    libpq's rules: ``connect_timeout`` from the DSN, else ``PGCONNECT_TIMEOUT``;
    zero, negative or unparsable means no bound; below 2 seconds means 2.
    """
    if conn.status not in _CONNECTING:
        return _NO_DEADLINE
    try:
        value = extensions.parse_dsn(conn.dsn).get("connect_timeout")
    except psycopg2.Error:
        value = None
    if value is None:
        value = os.environ.get("PGCONNECT_TIMEOUT")
    try:
        seconds = int(str(value).strip()) if value is not None else 0
    except ValueError:
        return _NO_DEADLINE
    if seconds <= 0:
        return _NO_DEADLINE
    return time.monotonic() + max(seconds, 2)


#: Seconds :func:`cancel_backend` may take to connect and cancel.
CANCEL_TIMEOUT = 2.0


def _cancel_target(conn: Any) -> tuple[str, int] | None:
    """The DSN (with password) and backend pid needed to cancel ``conn``'s statement."""
    try:
        if conn.closed or conn.status == extensions.STATUS_SETUP:
            return None  # closed, or interrupted while connecting: no statement runs
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
            side = psycopg2.connect(dsn)
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


#: Set to ``1`` (or ``true``/``yes``), and gdbpool leaves psycopg2's wait callback alone:
#: pools and hubs do not install :func:`gevent_wait_callback` (an explicit
#: :func:`make_psycopg_green` still does).
NO_GREEN_ENV: Final = "GDBPOOL_NO_GREEN"


def make_psycopg_green(*, replace: bool = False) -> None:
    """Install :func:`gevent_wait_callback` as psycopg2's wait callback, process-wide.

    Idempotent.  When another wait callback is installed (psycogreen's, the
    application's own), it raises :class:`~gdbpool.ConfigurationError` naming
    it, unless ``replace=True``.  Pools install it themselves
    (:func:`ensure_green`); call this to make raw ``psycopg2.connect``
    connections cooperative before any pool exists.
    """
    current = extensions.get_wait_callback()
    if current is gevent_wait_callback:
        return
    if current is not None and not replace:
        raise ConfigurationError(
            f"psycopg2 already has a wait callback ({_describe(current)}); gdbpool will not"
            " replace it: keep it (gdbpool works with any cooperative one) or call"
            " make_psycopg_green(replace=True)"
        )
    extensions.set_wait_callback(gevent_wait_callback)


def ensure_green() -> bool:
    """What pools and hubs call when they are created: install the callback if nobody did.

    Leaves psycopg2 alone when ``GDBPOOL_NO_GREEN`` is set, or when another wait
    callback is installed (never replaced).  Returns whether psycopg2 now waits
    through some callback (ours or another).
    """
    current = extensions.get_wait_callback()
    if current is not None:
        return True
    if os.environ.get(NO_GREEN_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    extensions.set_wait_callback(gevent_wait_callback)
    return True


def _describe(callback: Any) -> str:
    module = getattr(callback, "__module__", None) or "?"
    return f"{module}.{getattr(callback, '__qualname__', repr(callback))}"


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


#: libpq TCP keepalives on every connection gdbpool opens (pool and LISTEN
#: connections; a DSN's own values win). The kernel gives up on a peer that
#: stopped acknowledging after about idle + interval * count = 60 seconds, and
#: the connection's pending call fails: this is what bounds a call that has no
#: ``timeout`` when the network is cut (docs/design/pool.md, "Bounds").
KEEPALIVES: Final = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}


def keepalive_options(dsn: str) -> dict[str, str]:
    """The :data:`KEEPALIVES` parameters that ``dsn`` does not set itself."""
    try:
        given = extensions.parse_dsn(dsn)
    except psycopg2.Error:
        given = {}  # psycopg2.connect reports the bad DSN
    return {key: value for key, value in KEEPALIVES.items() if key not in given}


#: Seconds a timed-out (or abandoned) statement gets to stop after the cancel
#: request before the connection's socket is shut down (an unreachable server
#: never answers the cancel). Short, because it counts against the caller's
#: bound: a call with ``timeout=T`` is answered within about T + CANCEL_GRACE
#: (docs/design/pool.md, "Bounds").
CANCEL_GRACE: Final = 0.5


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
