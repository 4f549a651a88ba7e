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
from typing import Any

import gevent
import psycopg2
from gevent.socket import wait_read, wait_write
from psycopg2 import extensions

__all__ = [
    "CANCEL_TIMEOUT",
    "cancel_backend",
    "gevent_wait_callback",
    "is_green",
    "make_psycopg_green",
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


def make_psycopg_green() -> None:
    """Install :func:`gevent_wait_callback` as psycopg2's wait callback (idempotent)."""
    if extensions.get_wait_callback() is not gevent_wait_callback:
        extensions.set_wait_callback(gevent_wait_callback)


def is_green() -> bool:
    """True when psycopg2 waits through gevent in this process."""
    return extensions.get_wait_callback() is gevent_wait_callback
