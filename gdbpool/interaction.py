"""The Interaction message, and how one runs on a psycopg2 connection.

An :class:`Interaction` is what callers hand to a pool: an SQL string (its
parameters go to the driver, never into the string) or a callable, plus the
options it runs with and the ``reply`` AsyncResult its result is set on.
:func:`run_interaction` is the one place an interaction meets a connection:
it chooses the transaction mode, commits or rolls back, applies the options and
turns failures into :class:`~gdbpool.errors.DBInteractionException`.

Decisions (what a caller may rely on):

* **Round trips.** A plain SQL string (no ``isolation_level``, not
  ``read_only``) runs in autocommit mode: one statement is its own implicit
  transaction on the server (committed on success, rolled back on error --
  several ``;``-separated statements form one implicit transaction), which
  costs one round trip instead of three (BEGIN, statement, COMMIT).
  ``read_only`` and the explicit isolation levels run in a real transaction
  (``BEGIN ISOLATION LEVEL ... READ ONLY``, statement, COMMIT/ROLLBACK).
  Callables always run in a transaction (or autocommit when asked with
  ``isolation_level="autocommit"``): committed when they return, rolled back
  when they raise.
* **Results.** An SQL string returns ``cursor.fetchall()`` when the statement
  returns rows, else ``cursor.rowcount``. Rows are tuples by default (the
  driver's default, the cheapest); ``cursor_factory=RealDictCursor`` gives
  dicts like the 2011 library did. A callable returns whatever it returns.
* **Callables** are called ``work(conn, *args)`` for a tuple or list,
  ``work(conn, **args)`` for a mapping, ``work(conn, args)`` for anything else
  and ``work(conn)`` when ``args`` is None. When the callable's signature has a
  parameter named ``cursor`` it also gets ``cursor=`` (a fresh cursor built with
  ``cursor_factory`` and ``dec2float``, closed afterwards).
* **Errors.** Any exception raised while the interaction is applied (the
  work, a ``dry_run``'s mogrify, setting up or restoring the session) becomes a
  :class:`~gdbpool.errors.DBInteractionException` (``pgcode`` is the SQLSTATE
  when the server raised it, ``original``/``__cause__`` the exception). Only
  ``BaseException`` that is not an ``Exception`` (greenlet kill, ``Timeout``)
  passes through unchanged.
* **Timeout.** ``timeout`` seconds after the work started, the statement is
  cancelled on the server (``pg_cancel_backend`` over a short-lived side
  connection, see ``_Canceller`` in :mod:`gdbpool._interaction_timeout`
  for why not ``conn.cancel()``); it fails
  with ``QueryCanceled``, the transaction is rolled back, the connection
  stays usable and the caller gets
  :class:`~gdbpool.errors.InteractionTimeout`. If the statement has not
  stopped :data:`CANCEL_GRACE` seconds later (server unreachable), the
  connection's socket is shut down: the connection is closed (the pool
  replaces it) and the caller still gets ``InteractionTimeout``. Work that
  completed despite the timer (its result arrived together with the cancel)
  is returned, not reported as a timeout, so a committed write is never
  reported as failed. A ``gevent.Timeout`` around the work would be simpler
  but psycopg2 closes a connection whose wait callback raised, so every
  timeout would cost a reconnect.
* **Joining a transaction.** When ``conn`` is already inside a transaction
  (a caller holding a connection across several interactions), the work runs
  in it: nothing is committed or rolled back and ``isolation_level`` /
  ``read_only`` are ignored; the transaction's owner ends it.
* ``dry_run=True`` returns ``cursor.mogrify(sql, args).decode()`` and executes
  nothing (SQL strings only).
* ``dec2float=True`` returns NUMERIC columns as ``float``: a typecaster is
  registered on the interaction's cursor (or, for a callable that opens its
  own cursors, on the connection for the call's duration and removed after),
  never globally.

``run_interaction`` leaves the connection as it found it (autocommit,
isolation level, read-only, cursor factory), or closed when it broke.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

import psycopg2
from gevent.event import AsyncResult
from psycopg2 import extensions

from gdbpool._interaction_execute import _execute
from gdbpool._interaction_timeout import CANCEL_GRACE, _Canceller, _failure
from gdbpool.errors import ConfigurationError, DBInteractionException

__all__ = [
    "CANCEL_GRACE",
    "ISOLATION_LEVELS",
    "Interaction",
    "run_in_transaction",
    "run_interaction",
]

#: Isolation level names accepted by ``isolation_level`` → psycopg2 constants.
#: ``"autocommit"`` is not an isolation level but a session mode; it is here
#: because the 2011 API listed it among them.
ISOLATION_LEVELS: Final[Mapping[str, int]] = {
    "read committed": extensions.ISOLATION_LEVEL_READ_COMMITTED,
    "repeatable read": extensions.ISOLATION_LEVEL_REPEATABLE_READ,
    "serializable": extensions.ISOLATION_LEVEL_SERIALIZABLE,
    "autocommit": extensions.ISOLATION_LEVEL_AUTOCOMMIT,
}

_STATUS_READY: Final = extensions.STATUS_READY


@dataclass(frozen=True, slots=True, init=False)
class Interaction:
    """One unit of work for a pool, and the ``reply`` its outcome is set on.

    Fields:

    * ``work``: an SQL string, or a callable taking ``conn`` (and ``cursor``
      when its signature names it) plus ``args`` (see the module docstring).
    * ``args``: driver parameters for an SQL string (tuple, list or mapping;
      never formatted into the string), arguments for a callable. Default None.
      Left out of the repr (they may hold passwords or personal data).
    * ``read_only``: run in a read-only transaction. Default False.
    * ``isolation_level``: ``"read committed"``, ``"repeatable read"``,
      ``"serializable"`` or ``"autocommit"``; None (default) keeps the
      connection's default (the server's, normally read committed).
    * ``timeout``: seconds before the statement is cancelled on the server and
      the reply fails with InteractionTimeout. None (default): no limit.
    * ``cursor_factory``: psycopg2 cursor class (e.g. ``RealDictCursor``).
      None (default): tuples.
    * ``dry_run``: return the mogrified SQL, execute nothing. Default False.
    * ``dec2float``: NUMERIC columns come back as float. Default False.
    * ``pool``: name of the pool to run on (used by the router). Default None.
    * ``session``: read-your-writes token (used by the router). Default None.
    * ``reply``: set by the worker that ran the interaction; a fresh
      AsyncResult by default (or when None).

    Raises :class:`~gdbpool.errors.ConfigurationError` when built with work
    that is neither an SQL string nor a callable, an unknown isolation level,
    a timeout that is not > 0, or ``dry_run`` with a callable.

    ``__init__`` is written out rather than generated: a frozen dataclass's
    generated one sets each field through ``object.__setattr__``, and every
    ``run()`` builds one of these (1.45 -> 0.85 us; the slot descriptors are
    called directly, as in :mod:`gdbpool.notify.notification`). The object is the
    same: equal, hashable, immutable, with the dataclass repr.
    """

    work: str | Callable[..., Any]
    args: Any = field(default=None, repr=False)  # parameters may be secrets: kept out of logs
    read_only: bool = False
    isolation_level: str | None = None
    timeout: float | None = None
    cursor_factory: Any = None
    dry_run: bool = False
    dec2float: bool = False
    pool: str | None = None
    session: Any = None
    reply: AsyncResult = field(default_factory=AsyncResult, compare=False, repr=False)

    def __init__(
        self,
        work: str | Callable[..., Any],
        args: Any = None,
        read_only: bool = False,
        isolation_level: str | None = None,
        timeout: float | None = None,
        cursor_factory: Any = None,
        dry_run: bool = False,
        dec2float: bool = False,
        pool: str | None = None,
        session: Any = None,
        reply: AsyncResult | None = None,
    ) -> None:
        if not isinstance(work, str):
            if not callable(work):
                raise ConfigurationError(
                    "interaction work must be an SQL string or a callable taking conn, "
                    f"not {type(work).__name__}"
                )
            if dry_run:
                raise ConfigurationError("dry_run needs an SQL string, not a callable")
        if isolation_level is not None and isolation_level not in ISOLATION_LEVELS:
            raise ConfigurationError(
                f"unknown isolation_level {isolation_level!r}; "
                f"use one of {', '.join(ISOLATION_LEVELS)}"
            )
        if timeout is not None and not timeout > 0:
            raise ConfigurationError(f"interaction timeout must be > 0 seconds, not {timeout!r}")
        _set_work(self, work)
        _set_args(self, args)
        _set_read_only(self, read_only)
        _set_isolation_level(self, isolation_level)
        _set_timeout(self, timeout)
        _set_cursor_factory(self, cursor_factory)
        _set_dry_run(self, dry_run)
        _set_dec2float(self, dec2float)
        _set_pool(self, pool)
        _set_session(self, session)
        _set_reply(self, AsyncResult() if reply is None else reply)


(
    _set_work, _set_args, _set_read_only, _set_isolation_level, _set_timeout,
    _set_cursor_factory, _set_dry_run, _set_dec2float, _set_pool, _set_session, _set_reply,
) = (vars(Interaction)[f.name].__set__ for f in fields(Interaction))  # fmt: skip


def run_interaction(conn: Any, interaction: Interaction) -> Any:
    """Run ``interaction`` on ``conn`` and return its result.

    ``conn`` is an open psycopg2 connection, normally idle (not in a
    transaction); see the module docstring for the transaction modes, the
    result, the timeout and joining a transaction in progress. Raises
    :class:`~gdbpool.errors.DBInteractionException` (or its subclass
    :class:`~gdbpool.errors.InteractionTimeout`) when the work failed; the
    connection is then rolled back and usable, or closed when it broke.
    This function does not set ``interaction.reply``: the caller does.

    An SQL string without ``cursor_factory`` or ``dec2float`` runs on the
    cursor a pool worker keeps with its connection (``conn.gdbpool_cursor``,
    left open) when there is one, instead of a fresh cursor (0.6 us to open
    and close).
    """
    work = interaction.work
    if interaction.dry_run:
        try:
            with conn.cursor() as cur:
                return cur.mogrify(work, interaction.args).decode()
        except Exception as exc:  # e.g. IndexError: fewer args than placeholders
            raise _failure(exc, interaction, None) from exc

    cursor = getattr(conn, "gdbpool_cursor", None)
    canceller = None if interaction.timeout is None else _Canceller(conn, interaction.timeout)
    try:
        if conn.status != _STATUS_READY:
            return _run_joined(conn, interaction, canceller, cursor)
        level = interaction.isolation_level
        if isinstance(work, str) and level is None and not interaction.read_only:
            result = _run_autocommit(conn, interaction, canceller, cursor)
        else:
            result = _run_transaction(conn, interaction, canceller, cursor)
        if interaction.session is not None and not interaction.read_only:
            interaction.session.observe_commit(conn)
        return result
    except DBInteractionException:
        raise
    except Exception as exc:
        # Outside the work itself (restoring the session, reading the commit
        # position): still the interaction's failure, never a bare error.
        raise _failure(exc, interaction, canceller) from exc
    finally:
        if canceller is not None:
            canceller.finish()


def run_in_transaction(conn: Any, interaction: Interaction) -> Any:
    """Run ``interaction`` inside the transaction ``conn`` holds (or is about to begin).

    For a caller that owns the transaction across several interactions: the
    work runs in the connection's current session (a non-autocommit
    connection begins its transaction at the first statement, with the
    session's isolation level and read-only mode); nothing is committed or
    rolled back and ``isolation_level``/``read_only`` are ignored. Errors and
    ``timeout`` behave as in :func:`run_interaction`; after an error the
    transaction is aborted on the server and its owner must roll it back.
    """
    if interaction.dry_run:
        return run_interaction(conn, interaction)
    canceller = None if interaction.timeout is None else _Canceller(conn, interaction.timeout)
    try:
        return _run_joined(conn, interaction, canceller)
    finally:
        if canceller is not None:
            canceller.finish()


# -- the three modes ----------------------------------------------------------------


def _run_autocommit(
    conn: Any, interaction: Interaction, canceller: _Canceller | None, cursor: Any
) -> Any:
    """Hot path: an SQL string as its own implicit transaction (one round trip)."""
    restore = False
    try:
        if not conn.autocommit:
            conn.autocommit = True  # raises on a closed connection: the interaction's failure
            restore = True
        return _execute(conn, interaction, cursor)
    except Exception as exc:
        raise _failure(exc, interaction, canceller) from exc
    finally:
        if restore and not conn.closed:
            conn.autocommit = False


def _run_transaction(
    conn: Any, interaction: Interaction, canceller: _Canceller | None, cursor: Any = None
) -> Any:
    """Isolation level / read-only / callables: BEGIN ... COMMIT, ROLLBACK on error."""
    level = interaction.isolation_level
    autocommit = level == "autocommit"
    saved = (conn.autocommit, conn.isolation_level, conn.readonly)
    try:
        try:
            conn.set_session(
                isolation_level=None if level is None or autocommit else ISOLATION_LEVELS[level],
                readonly=True if interaction.read_only else saved[2],
                autocommit=autocommit,
            )
            result = _execute(conn, interaction, cursor)
            if conn.status != _STATUS_READY:
                conn.commit()
            return result
        except Exception as exc:
            _rollback_quietly(conn)
            raise _failure(exc, interaction, canceller) from exc
        except BaseException:
            _rollback_quietly(conn)
            raise
    finally:
        if not conn.closed:
            # No query is sent for these unless the connection is in autocommit
            # mode with a non-default read-only setting.
            conn.autocommit = saved[0]
            conn.isolation_level = saved[1]
            conn.readonly = saved[2]


def _run_joined(
    conn: Any, interaction: Interaction, canceller: _Canceller | None, cursor: Any = None
) -> Any:
    """Inside the caller's open transaction: no commit, no rollback, no session change."""
    try:
        return _execute(conn, interaction, cursor)
    except Exception as exc:
        raise _failure(exc, interaction, canceller) from exc


# -- rollback -----------------------------------------------------------------------


def _rollback_quietly(conn: Any) -> None:
    if conn.closed:
        return
    try:
        conn.rollback()
    except psycopg2.Error:
        # A connection that cannot roll back is broken; close it so its owner replaces it.
        conn.close()
