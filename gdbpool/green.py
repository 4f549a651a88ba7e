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
``gevent.Timeout`` fires), the callback sends a cancel request for the running
statement to the server before re-raising, so the query does not keep running
server-side.  psycopg2 then treats the connection as unusable; pools discard it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg2
from gevent.socket import wait_read, wait_write
from psycopg2 import extensions

__all__ = ["gevent_wait_callback", "is_green", "make_psycopg_green"]


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
        with contextlib.suppress(Exception):  # the connection is lost anyway
            conn.cancel()
        raise


def make_psycopg_green() -> None:
    """Install :func:`gevent_wait_callback` as psycopg2's wait callback (idempotent)."""
    if extensions.get_wait_callback() is not gevent_wait_callback:
        extensions.set_wait_callback(gevent_wait_callback)


def is_green() -> bool:
    """True when psycopg2 waits through gevent in this process."""
    return extensions.get_wait_callback() is gevent_wait_callback
