"""How an Interaction runs on a psycopg2 connection.

:func:`run_interaction` is the one place an interaction
(:class:`~gdbpool.interaction.Interaction`) meets a connection: it chooses
the transaction mode, commits or rolls back, applies the options and turns
failures into :class:`~gdbpool.errors.DBInteractionException`;
:func:`run_in_transaction` runs one inside a transaction its caller owns.

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
* **Timeout.** ``timeout`` seconds after the interaction was made (``run()``;
  waiting for a connection counts), the statement is
  cancelled on the server (``pg_cancel_backend`` over a short-lived side
  connection, see ``_Canceller`` in :mod:`gdbpool.green`
  for why not ``conn.cancel()``); it fails
  with ``QueryCanceled``, the transaction is rolled back, the connection
  stays usable and the caller gets
  :class:`~gdbpool.errors.InteractionTimeout`. If the statement has not
  stopped :data:`~gdbpool.green.CANCEL_GRACE` seconds later (server unreachable), the
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

import functools
import inspect
import time
from collections.abc import Mapping
from typing import Any, Final

import psycopg2
from psycopg2 import errors as pgerrors
from psycopg2 import extensions

from gdbpool.errors import DBInteractionException, InteractionTimeout
from gdbpool.green import _Canceller
from gdbpool.interaction import ISOLATION_LEVELS, Interaction
from gdbpool.interaction import SQL_TYPES as _SQL_TYPES

__all__ = ["run_in_transaction", "run_interaction"]

_STATUS_READY: Final = extensions.STATUS_READY


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
    canceller = None if interaction.deadline is None else _start_canceller(conn, interaction)
    try:
        if conn.status != _STATUS_READY:
            return _run_joined(conn, interaction, canceller, cursor)
        level = interaction.isolation_level
        if isinstance(work, _SQL_TYPES) and level is None and not interaction.read_only:
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
    canceller = None if interaction.deadline is None else _start_canceller(conn, interaction)
    try:
        return _run_joined(conn, interaction, canceller)
    finally:
        if canceller is not None:
            canceller.finish()


def _start_canceller(conn: Any, interaction: Interaction) -> _Canceller:
    """The canceller for what is left of the interaction's ``timeout`` (counted from run()).

    Raises InteractionTimeout, running nothing, when nothing is left: the
    call spent its whole timeout waiting for a connection.
    """
    left = interaction.deadline - time.monotonic()  # type: ignore[operator]
    if left <= 0:
        raise InteractionTimeout(
            f"interaction ran past its timeout of {interaction.timeout} s before it "
            "could start (waiting for a connection); nothing was run"
        )
    return _Canceller(conn, left)


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


# -- errors -------------------------------------------------------------------------


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


# -- executing the work ---------------------------------------------------------------


def _to_float(value: str | None, cursor: Any) -> float | None:
    return None if value is None else float(value)


_DEC2FLOAT = extensions.new_type(extensions.DECIMAL.values, "GDBPOOL_DEC2FLOAT", _to_float)
_DEC2FLOAT_ARRAY = extensions.new_array_type(
    extensions.DECIMALARRAY.values, "GDBPOOL_DEC2FLOATARRAY", _DEC2FLOAT
)


def _execute(conn: Any, interaction: Interaction, cursor: Any = None) -> Any:
    work = interaction.work
    if isinstance(work, _SQL_TYPES):
        if cursor is not None and interaction.cursor_factory is None and not interaction.dec2float:
            cursor.execute(work, interaction.args)
            return cursor.fetchall() if cursor.description is not None else cursor.rowcount
        cur = _cursor(conn, interaction)
        try:
            cur.execute(work, interaction.args)
            return cur.fetchall() if cur.description is not None else cur.rowcount
        finally:
            cur.close()
    if _wants_cursor(work):
        cur = _cursor(conn, interaction)
        try:
            return _call(work, conn, interaction.args, {"cursor": cur})
        finally:
            cur.close()
    return _call_with_connection_options(conn, interaction)


def _cursor(conn: Any, interaction: Interaction) -> Any:
    factory = interaction.cursor_factory
    cur = conn.cursor() if factory is None else conn.cursor(cursor_factory=factory)
    if interaction.dec2float:
        extensions.register_type(_DEC2FLOAT, cur)
        extensions.register_type(_DEC2FLOAT_ARRAY, cur)
    return cur


def _call_with_connection_options(conn: Any, interaction: Interaction) -> Any:
    """A callable that opens its own cursors: apply the options on the connection, then undo."""
    factory = interaction.cursor_factory
    dec2float = interaction.dec2float
    if factory is None and not dec2float:
        return _call(interaction.work, conn, interaction.args, None)
    saved_factory = conn.cursor_factory
    types: dict[int, Any] = conn.string_types
    oids = (*extensions.DECIMAL.values, *extensions.DECIMALARRAY.values)
    saved_types = {oid: types[oid] for oid in oids if oid in types}
    if factory is not None:
        conn.cursor_factory = factory
    if dec2float:
        extensions.register_type(_DEC2FLOAT, conn)
        extensions.register_type(_DEC2FLOAT_ARRAY, conn)
    try:
        return _call(interaction.work, conn, interaction.args, None)
    finally:
        conn.cursor_factory = saved_factory
        if dec2float:
            for oid in oids:
                types.pop(oid, None)
            types.update(saved_types)


def _call(work: Any, conn: Any, args: Any, extra: dict[str, Any] | None) -> Any:
    kw = extra or {}
    lead: tuple[Any, ...] = (conn,)
    if kw and _cursor_mode(work) == "positional":
        lead = (conn, kw.pop("cursor"))
    if args is None:
        return work(*lead, **kw)
    if isinstance(args, tuple | list):
        return work(*lead, *args, **kw)
    if isinstance(args, Mapping):
        return work(*lead, **args, **kw)
    return work(*lead, args, **kw)


@functools.lru_cache(maxsize=1024)
def _signature_cursor_mode(func: Any) -> str | None:
    """``"positional"`` for ``f(conn, cursor, ...)``, ``"keyword"`` for another ``cursor``."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return None
    for index, param in enumerate(params):
        if param.name == "cursor":
            positional = param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)
            return "positional" if positional and index == 1 else "keyword"
    return None


def _cursor_mode(work: Any) -> str | None:
    # Bound methods are cached by their function so the cache holds no instance.
    func = getattr(work, "__func__", None)
    if func is None:
        return _signature_cursor_mode(work)
    mode = _signature_cursor_mode(func)
    # The bound instance fills the first parameter: f(self, conn, cursor) is positional.
    if mode == "keyword":
        names = list(inspect.signature(func).parameters)
        if names.index("cursor") == 2:
            return "positional"
    return mode


def _wants_cursor(work: Any) -> bool:
    return _cursor_mode(work) is not None
