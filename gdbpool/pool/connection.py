"""The pool's connections: what they are, how they are opened and checked.

:class:`PooledConnection` is the psycopg2 connection class every pool
connection is made with; :class:`PoolSettings` is what opening one needs.
:func:`open_connection`, :func:`check_connection`, :func:`ping` and
:func:`backoff` are used by the connection workers (see "Checks" in the
:mod:`gdbpool.pool.worker` docstring) and by ``get()``.
"""

from __future__ import annotations

import contextlib
import random
import select
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
import psycopg2
from gevent.monkey import get_original
from psycopg2 import extensions

from actors import ActorRef
from gdbpool.errors import PoolConnectionError
from gdbpool.green import keepalive_options, shutdown_socket
from gdbpool.logging import redact

# The OS's poll, even when gevent.monkey has patched ``select``: the liveness
# check polls with a zero timeout, which never blocks, and gevent's cooperative
# poll would switch to the hub and back (two switches and a timer) on every
# checkout for nothing.
_os_poll = get_original("select", "poll")

__all__ = [
    "TRANSACTION_IDLE",
    "PoolSettings",
    "PooledConnection",
    "backoff",
    "check_connection",
    "open_connection",
    "ping",
    "reset_session_here",
]

#: The server's "idle, not in a transaction" (``conn.info.transaction_status``).
TRANSACTION_IDLE = extensions.TRANSACTION_STATUS_IDLE


class PooledConnection(extensions.connection):  # type: ignore[misc]
    """A psycopg2 connection that knows the pool and worker it belongs to.

    ``put()`` uses these attributes to refuse foreign connections and double
    returns without asking the pool actor.
    """

    gdbpool_pool: object = None
    gdbpool_worker: ActorRef | None = None
    gdbpool_lent: bool = False
    gdbpool_poll: Any = None  # select.poll on the socket, made once (check_connection)
    gdbpool_cursor: Any = None  # the worker's cursor for plain SQL strings (run_interaction)
    gdbpool_put_back: Any = None  # the Idle message put() tells the pool actor (handed=False)
    gdbpool_idle_since: float = 0.0  # monotonic time of the last use (deep check after check_after)


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """What every worker of one pool needs to know (built once by the pool)."""

    name: str
    dsn: str = field(repr=False)  # may hold the password
    target: str  # "host:port/dbname", for messages; never the password
    application_name: str
    connect_timeout: float
    max_lifetime: float
    check_after: float
    backoff_initial: float
    backoff_max: float
    log: Any
    #: Told ``"25006 ..."`` or ``"connection lost"`` when an interaction fails
    #: that way (the interaction pool probes the server's role at once). Error
    #: paths only.
    on_failure: Callable[[str], None] | None = None


def open_connection(settings: PoolSettings) -> Any:
    """Open one connection for the pool, bounded by ``connect_timeout``, with TCP keepalives.

    Keepalives (:data:`~gdbpool.green.KEEPALIVES`, unless the DSN sets its own)
    end a call on a connection whose peer vanished, timeout or not.

    Raises :class:`PoolConnectionError` naming host, port and database (never
    the password) when it cannot.
    """
    try:
        with gevent.Timeout(settings.connect_timeout):
            return psycopg2.connect(
                settings.dsn,
                connection_factory=PooledConnection,
                application_name=settings.application_name,
                **keepalive_options(settings.dsn),
            )
    except gevent.Timeout:
        reason = f"no answer within connect_timeout={settings.connect_timeout} s"
        raise PoolConnectionError(_cannot(settings, reason)) from None
    except psycopg2.Error as exc:
        reason = " ".join(redact(str(exc)).split()) or type(exc).__name__
        raise PoolConnectionError(_cannot(settings, reason)) from exc


def _cannot(settings: PoolSettings, reason: str) -> str:
    return f"pool {settings.name!r} cannot connect to {settings.target}: {reason}"


def check_connection(conn: PooledConnection) -> bool:
    """Cheap liveness check of an idle connection: no round trip.

    See "Checks" in the :mod:`gdbpool.pool.worker` docstring.
    """
    if conn.closed:
        return False
    try:
        poller = conn.gdbpool_poll if isinstance(conn, PooledConnection) else None
        if poller is None:
            poller = _os_poll()
            poller.register(conn.fileno(), select.POLLIN)
            if isinstance(conn, PooledConnection):
                conn.gdbpool_poll = poller  # the socket stays the same for the connection's life
        # A terminated backend sends its FATAL message, then EOF: the first
        # poll() consumes the message, the next one meets the EOF and raises.
        for _ in range(4):
            if not poller.poll(0):
                return True
            conn.poll()
    except (psycopg2.Error, OSError, ValueError):
        with contextlib.suppress(psycopg2.Error):
            conn.close()
        return False
    return not conn.closed


def reset_session_here(conn: PooledConnection) -> bool:
    """Put ``conn`` back in the pool's default session if that needs no round trip.

    True when done: the connection is open, not in a transaction, and
    psycopg2 would send nothing to the server (it sends ``SET
    default_transaction_*`` only when resetting isolation, read-only or
    deferrable while in autocommit). False when a rollback or those SETs are
    needed, or psycopg2 refused the reset: the connection's worker does that
    (or replaces the connection), in its own greenlet.
    """
    # get_transaction_status(), not conn.info.transaction_status: the latter builds
    # a ConnectionInfo object on every read (5x the cost, on every put()).
    if conn.closed or conn.get_transaction_status() != TRANSACTION_IDLE:
        return False  # also a BEGIN sent as SQL in autocommit, which conn.status misses
    try:
        custom = (
            conn.isolation_level is not None
            or conn.readonly is not None
            or conn.deferrable is not None
        )
        if conn.autocommit:
            if custom:
                return False
            conn.autocommit = False
        elif custom:
            conn.set_session(isolation_level="DEFAULT", readonly="DEFAULT", deferrable="DEFAULT")
    except psycopg2.Error:
        return False
    conn.cursor_factory = None
    return True


def ping(conn: PooledConnection, timeout: float) -> bool:
    """``SELECT 1`` on an idle connection; False (and the connection closed) if it fails.

    The socket is shut down if the server does not answer within ``timeout``
    seconds, so a half-open connection cannot hang the check.
    """
    timer = gevent.spawn_later(timeout, shutdown_socket, conn)
    try:
        autocommit = conn.autocommit
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.autocommit = autocommit
        return True
    except psycopg2.Error:
        with contextlib.suppress(psycopg2.Error):
            conn.close()
        return False
    finally:
        timer.kill(block=False)


def backoff(failures: int, initial: float, maximum: float) -> float:
    """Delay before reconnect attempt ``failures + 1``: exponential, capped, +-25% jitter."""
    delay = min(maximum, initial * 2 ** min(failures - 1, 30))
    return float(delay * random.uniform(0.75, 1.25))
