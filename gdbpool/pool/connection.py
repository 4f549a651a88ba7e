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
import re
import select
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import gevent
import psycopg2
from gevent.monkey import get_original
from psycopg2 import extensions
from psycopg2 import sql as pgsql

from actors import ActorRef
from gdbpool.errors import PoolConnectionError
from gdbpool.fork import TrackedConnection
from gdbpool.green import keepalive_options, shutdown_socket
from gdbpool.logging import redact

# The OS's poll, even when gevent.monkey has patched ``select``: the liveness
# check polls with a zero timeout, which never blocks, and gevent's cooperative
# poll would switch to the hub and back (two switches and a timer) on every
# checkout for nothing.
_os_poll = get_original("select", "poll")

__all__ = [
    "CLEAN_SESSION_SQL",
    "TRANSACTION_IDLE",
    "PoolSettings",
    "PooledConnection",
    "backoff",
    "changes_session",
    "check_connection",
    "clean_session",
    "open_connection",
    "ping",
    "reset_session_here",
    "resolve_dsn",
    "user_check",
]

#: The server's "idle, not in a transaction" (``conn.info.transaction_status``).
TRANSACTION_IDLE = extensions.TRANSACTION_STATUS_IDLE


#: What a connection that may have been dirtied runs before its next borrower
#: (docs/design/pool.md, "Clean sessions"): one simple query, one round trip, in
#: autocommit. ``DISCARD ALL`` would do most of it but cannot run in the implicit
#: transaction a multi-statement query forms.
CLEAN_SESSION_SQL: Final = (
    "RESET ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); CLOSE ALL; "
    "DISCARD TEMP; DEALLOCATE ALL"
)

# SQL text that may change the session beyond its transaction: a statement
# (first, or after a ';') starting with one of these words, or a call of the
# advisory-lock or set_config functions anywhere. One regex search over the text;
# what it cannot see (a function that runs SET inside) needs a callable or reset=.
_SESSION_CHANGE: Final = re.compile(
    r"(?:^|;)\s*(?:(?:SET|RESET|LISTEN|PREPARE|DECLARE|DO|LOAD)\b"
    r"|CREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?TEMP)|advisory|set_config",
    re.IGNORECASE,
)


def changes_session(work: Any, conn: Any = None) -> bool:
    """May running ``work`` leave session state behind (docs/design/pool.md, "Clean sessions")?

    True for a callable (anything may happen), for SQL text a cheap regex finds a
    session change in, and for a :mod:`psycopg2.sql` object without ``conn`` to
    render it.
    """
    if type(work) is str:
        return _SESSION_CHANGE.search(work) is not None
    if isinstance(work, pgsql.Composable):
        if conn is None:
            return True
        return _SESSION_CHANGE.search(work.as_string(conn)) is not None
    return True


class _SessionCursor(extensions.cursor):  # type: ignore[misc]
    """The default cursor of a lent connection: marks it dirty when its SQL changes the session."""

    def execute(self, query: Any, vars: Any = None) -> Any:
        conn = self.connection
        if not conn.gdbpool_dirty and changes_session(query, conn):
            conn.gdbpool_dirty = True
        return super().execute(query, vars)

    def executemany(self, query: Any, vars_list: Any) -> Any:
        conn = self.connection
        if not conn.gdbpool_dirty and changes_session(query, conn):
            conn.gdbpool_dirty = True
        return super().executemany(query, vars_list)

    def callproc(self, procname: Any, parameters: Any = None) -> Any:
        self.connection.gdbpool_dirty = True  # a function may do anything
        return super().callproc(procname, parameters)


class PooledConnection(TrackedConnection):
    """A psycopg2 connection that knows the pool and worker it belongs to.

    ``put()`` uses these attributes to refuse foreign connections and double
    returns without asking the pool actor. While lent by ``get()``, its cursors
    note SQL that changes the session (``gdbpool_dirty``), so ``put()`` knows
    whether the connection needs a clean-session reset (docs/design/pool.md,
    "Clean sessions"); a cursor with another factory, or a WITH HOLD one,
    marks it dirty at once.
    """

    gdbpool_pool: object = None
    gdbpool_worker: ActorRef | None = None
    gdbpool_lent: bool = False
    gdbpool_poll: Any = None  # select.poll on the socket, made once (check_connection)
    gdbpool_cursor: Any = None  # the worker's cursor for plain SQL strings (run_interaction)
    gdbpool_put_back: Any = None  # the Idle message put() tells the pool actor (handed=False)
    gdbpool_idle_since: float = 0.0  # monotonic time of the last use (deep check after check_after)
    gdbpool_dirty: bool = False  # may hold session state a borrower left (clean at return)
    gdbpool_drain: int = 0  # the pool's drain() generation this connection was opened in

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        if self.gdbpool_lent and not self.gdbpool_dirty:
            if args or kwargs.get("name") or kwargs.get("withhold"):
                self.gdbpool_dirty = True  # a server-side cursor: it may be WITH HOLD
            elif kwargs.get("cursor_factory") is None and self.cursor_factory is None:
                kwargs["cursor_factory"] = _SessionCursor
            else:
                self.gdbpool_dirty = True  # a cursor class we cannot watch
        return super().cursor(*args, **kwargs)


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """What every worker of one pool needs to know (built once by the pool)."""

    name: str
    dsn: str | Callable[[], str] = field(repr=False)  # may hold the password; called per connect
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
    configure: Callable[[Any], object] | None = None  # after connect (DBConnectionPool)
    check: Callable[[Any], object] | None = None  # at checkout
    reset: Callable[[Any], object] | None = None  # at return of a dirtied connection
    reconnect_timeout: float = 300.0  # a worker gives up reconnecting after this long


def resolve_dsn(dsn: str | Callable[[], str], name: str) -> str:
    """The DSN to connect with: ``dsn`` itself, or what the callable returns now.

    Raises :class:`TypeError` when a callable returns something other than a string.
    """
    if isinstance(dsn, str):
        return dsn
    value = dsn()
    if not isinstance(value, str):
        raise TypeError(f"pool {name!r}: the dsn callable returned {type(value).__name__}, not str")
    return value


def open_connection(settings: PoolSettings) -> Any:
    """Open one connection for the pool, bounded by ``connect_timeout``, with TCP keepalives.

    Keepalives (:data:`~gdbpool.green.KEEPALIVES`, unless the DSN sets its own)
    end a call on a connection whose peer vanished, timeout or not.

    Raises :class:`PoolConnectionError` naming host, port and database (never
    the password) when it cannot.
    """
    dsn = resolve_dsn(settings.dsn, settings.name)
    try:
        with gevent.Timeout(settings.connect_timeout):
            conn = psycopg2.connect(
                dsn,
                connection_factory=PooledConnection,
                application_name=settings.application_name,
                **keepalive_options(dsn),
            )
    except gevent.Timeout:
        reason = f"no answer within connect_timeout={settings.connect_timeout} s"
        raise PoolConnectionError(_cannot(settings, reason)) from None
    except psycopg2.Error as exc:
        reason = " ".join(redact(str(exc)).split()) or type(exc).__name__
        raise PoolConnectionError(_cannot(settings, reason)) from exc
    if settings.configure is not None:
        _configure(conn, settings)
    return conn


def _configure(conn: PooledConnection, settings: PoolSettings) -> None:
    """Run the pool's ``configure(conn)``; PoolConnectionError (connection closed) if it fails.

    It must leave the connection idle (committed): one left in a transaction is
    refused, like psycopg_pool does, rather than lent mid-transaction.
    """
    assert settings.configure is not None
    try:
        settings.configure(conn)
        if conn.closed or conn.get_transaction_status() != TRANSACTION_IDLE:
            raise PoolConnectionError(
                _cannot(settings, "configure() left the connection in a transaction or closed")
            )
    except BaseException as exc:
        with contextlib.suppress(psycopg2.Error):
            conn.close()
        if isinstance(exc, PoolConnectionError) or not isinstance(exc, Exception):
            raise
        reason = f"configure() failed: {type(exc).__name__}: {redact(str(exc))}"
        raise PoolConnectionError(_cannot(settings, reason)) from exc


def clean_session(conn: PooledConnection, settings: PoolSettings) -> None:
    """Undo what a borrower may have left: :data:`CLEAN_SESSION_SQL`, or the pool's ``reset``.

    ``conn`` is idle (not in a transaction) and in the pool's default session.
    One round trip for the built-in reset, bounded by ``connect_timeout`` (the
    socket is shut down on no answer). Raises what the reset raised; the caller
    then closes and replaces the connection.
    """
    conn.gdbpool_dirty = False
    if settings.reset is not None:
        settings.reset(conn)
        if conn.closed or conn.get_transaction_status() != TRANSACTION_IDLE:
            raise psycopg2.InterfaceError("reset() left the connection in a transaction or closed")
        return
    timer = gevent.spawn_later(settings.connect_timeout, shutdown_socket, conn)
    try:
        conn.autocommit = True
        cur = conn.gdbpool_cursor
        if cur is None or cur.closed:
            cur = conn.gdbpool_cursor = extensions.cursor(conn)
        # A transaction a callable opened itself in autocommit (BEGIN as SQL) ends
        # first, in the same round trip.
        idle = conn.get_transaction_status() == TRANSACTION_IDLE
        cur.execute(CLEAN_SESSION_SQL if idle else "ROLLBACK; " + CLEAN_SESSION_SQL)
        conn.autocommit = False
    finally:
        timer.kill(block=False)
    del conn.notifies[:]  # what LISTEN delivered is not the next borrower's


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


def user_check(conn: PooledConnection, settings: PoolSettings) -> bool:
    """The pool's ``check(conn)`` at checkout: False (and the connection closed) if it raises."""
    assert settings.check is not None
    try:
        settings.check(conn)
    except Exception as exc:
        settings.log.info("connection_check_failed", error=f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(psycopg2.Error):
            conn.close()
        return False
    return not conn.closed


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
