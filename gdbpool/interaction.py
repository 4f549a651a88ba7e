"""The Interaction message: one unit of work for a pool, and the reply it is answered on.

An :class:`Interaction` is what callers hand to a pool: an SQL string (its
parameters go to the driver, never into the string) or a callable, plus the
options it runs with and the ``reply`` AsyncResult its result is set on.
How one runs on a connection (transaction modes, results, errors, timeout)
is :mod:`gdbpool.execute`. This module is a leaf: it imports no executor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

from gevent.event import AsyncResult
from psycopg2 import extensions
from psycopg2 import sql as pgsql

from gdbpool.errors import ConfigurationError, DBInteractionException

__all__ = ["ISOLATION_LEVELS", "SQL_TYPES", "Interaction", "Reply", "check_sql_text"]

#: What counts as SQL text for ``work``: a string or a :mod:`psycopg2.sql` object.
SQL_TYPES: Final = (str, pgsql.Composable)

#: Isolation level names accepted by ``isolation_level`` → psycopg2 constants.
#: ``"autocommit"`` is not an isolation level but a session mode; it is here
#: because the 2011 API listed it among them.
ISOLATION_LEVELS: Final[Mapping[str, int]] = {
    "read committed": extensions.ISOLATION_LEVEL_READ_COMMITTED,
    "repeatable read": extensions.ISOLATION_LEVEL_REPEATABLE_READ,
    "serializable": extensions.ISOLATION_LEVEL_SERIALIZABLE,
    "autocommit": extensions.ISOLATION_LEVEL_AUTOCOMMIT,
}


_get = AsyncResult.get
_wait = AsyncResult.wait


class Reply(AsyncResult):  # type: ignore[misc]
    """The AsyncResult an interaction is answered on; its waiter may abandon it.

    A greenlet waiting in :meth:`get` or :meth:`wait` that is interrupted
    there (killed, or an exception thrown into it, such as an enclosing
    ``gevent.Timeout``) while nobody else waits and no answer has come
    abandons the interaction: the reply fails at once, so a pool that has not
    started it skips it, and one running it cancels its statement on the
    server (and severs the connection if the cancel gets no answer within
    :data:`~gdbpool.green.CANCEL_GRACE`). ``get(timeout=...)`` running out on
    its own does not abandon: the caller may wait again. See "Killed callers"
    in docs/design/pool.md.

    ``running`` is written by the connection worker only: the connection
    the interaction runs on, replaced by the canceller once abandoned.
    """

    __slots__ = ("running",)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if timeout is None or not block:
            try:
                return _get(self, block, timeout)
            except BaseException:
                if block:
                    self._interrupted()
                raise
        try:
            _wait(self, timeout)
        except BaseException:
            self._interrupted()
            raise
        return _get(self, False)

    def wait(self, timeout: float | None = None) -> Any:
        try:
            return _wait(self, timeout)
        except BaseException:
            self._interrupted()
            raise

    def _interrupted(self) -> None:
        if self.ready() or self.linkcount():
            return  # answered (get() raised its error), or someone else still waits
        running = getattr(self, "running", None)
        self.set_exception(
            DBInteractionException(
                "interaction abandoned: its caller was interrupted while waiting for it"
            )
        )
        if running is not None:
            from gdbpool.green import _Canceller  # the cancel machinery; only on this path

            self.running = _Canceller(running, 0.0)


@dataclass(frozen=True, slots=True, init=False)
class Interaction:
    """One unit of work for a pool, and the ``reply`` its outcome is set on.

    Fields:

    * ``work``: an SQL string or :mod:`psycopg2.sql` object (``Composed``,
      ``SQL``...), or a callable taking ``conn`` (and ``cursor`` when its
      signature names it) plus ``args`` (see :mod:`gdbpool.execute`). SQL
      text containing a NUL character is refused (:func:`check_sql_text`).
    * ``args``: driver parameters for an SQL string (tuple, list or mapping;
      never formatted into the string), arguments for a callable. Default None.
      Left out of the repr (they may hold passwords or personal data).
    * ``read_only``: run in a read-only transaction. Default False.
    * ``isolation_level``: ``"read committed"``, ``"repeatable read"``,
      ``"serializable"`` or ``"autocommit"``; None (default) keeps the
      connection's default (the server's, normally read committed).
    * ``timeout``: seconds the whole call may take, from this object's
      creation (``run()``): waiting for a connection, its check, running; then
      the statement is cancelled on the server and the reply fails with
      InteractionTimeout (docs/design/pool.md, "Bounds"). None (default): no
      limit.
    * ``cursor_factory``: psycopg2 cursor class (e.g. ``RealDictCursor``).
      None (default): tuples.
    * ``dry_run``: return the mogrified SQL, execute nothing. Default False.
    * ``dec2float``: NUMERIC columns come back as float. Default False.
    * ``pool``: name of the pool to run on (used by the router). Default None.
    * ``session``: read-your-writes token (used by the router). Default None.
    * ``reply``: set by the worker that ran the interaction; a fresh
      :class:`Reply` by default (or when None).
    * ``deadline``: ``time.monotonic()`` when ``timeout`` runs out (None
      without a timeout); computed, not passed.

    Raises :class:`~gdbpool.errors.ConfigurationError` when built with work
    that is neither SQL text nor a callable, SQL text containing NUL, an
    unknown isolation level,
    a timeout that is not > 0, or ``dry_run`` with a callable.

    ``__init__`` is written out rather than generated: a frozen dataclass's
    generated one sets each field through ``object.__setattr__``, and every
    ``run()`` builds one of these (1.45 -> 0.85 us; the slot descriptors are
    called directly, as in :mod:`gdbpool.notify.notification`). The object is the
    same: equal, hashable, immutable, with the dataclass repr.
    """

    work: str | pgsql.Composable | Callable[..., Any]
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
    deadline: float | None = field(default=None, compare=False, repr=False)

    def __init__(
        self,
        work: str | pgsql.Composable | Callable[..., Any],
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
        if isinstance(work, str):
            if "\x00" in work:  # one memchr: the only per-call cost of the check
                check_sql_text(work)
        elif isinstance(work, pgsql.Composable):
            check_sql_text(work)
        else:
            if not callable(work):
                raise ConfigurationError(
                    "interaction work must be an SQL string or a callable taking conn "
                    f"(or a psycopg2.sql object), not {type(work).__name__}"
                )
            if dry_run:
                raise ConfigurationError("dry_run needs an SQL string, not a callable")
        if isolation_level is not None and isolation_level not in ISOLATION_LEVELS:
            raise ConfigurationError(
                f"unknown isolation_level {isolation_level!r}; "
                f"use one of {', '.join(ISOLATION_LEVELS)}"
            )
        if timeout is not None:
            if not timeout > 0:
                raise ConfigurationError(
                    f"interaction timeout must be > 0 seconds, not {timeout!r}"
                )
            _set_deadline(self, time.monotonic() + timeout)
        else:
            _set_deadline(self, None)
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
        _set_reply(self, Reply() if reply is None else reply)


def check_sql_text(work: str | pgsql.Composable) -> None:
    """Refuse SQL text holding a NUL character, with :class:`~gdbpool.errors.ConfigurationError`.

    libpq takes the statement as a C string, so the server would get the text
    cut at the first NUL: ``UPDATE t SET v = 1\\x00 WHERE id = 1`` would run as
    ``UPDATE t SET v = 1`` and change every row. A :mod:`psycopg2.sql` object
    is walked: its ``SQL`` pieces, identifiers, placeholder names and string
    literals. Values belong in ``args``, where the driver refuses a NUL itself.
    """
    where = _nul_in(work)
    if where is not None:
        raise ConfigurationError(
            f"SQL text contains a NUL character (\\x00) {where}: PostgreSQL would cut the "
            "statement there and run the rest of it; remove it (values go in args)"
        )


def _nul_in(part: object) -> str | None:
    """Where ``part`` (SQL text or a piece of a psycopg2.sql object) holds a NUL, or None."""
    if isinstance(part, str):
        index = part.find("\x00")
        return None if index < 0 else f"at offset {index} of {part[:index][-40:]!r}"
    if isinstance(part, bytes):
        return None if b"\x00" not in part else "in a bytes literal"
    if isinstance(part, pgsql.Composed):
        pieces: tuple[object, ...] = tuple(part.seq)
    elif isinstance(part, pgsql.SQL):
        pieces = (part.string,)
    elif isinstance(part, pgsql.Identifier):
        pieces = tuple(part.strings)
    elif isinstance(part, pgsql.Placeholder):
        pieces = (part.name or "",)
    elif isinstance(part, pgsql.Literal):
        pieces = (part.wrapped,) if isinstance(part.wrapped, str | bytes) else ()
    else:
        return None
    for piece in pieces:
        where = _nul_in(piece)
        if where is not None:
            return where
    return None


(
    _set_work, _set_args, _set_read_only, _set_isolation_level, _set_timeout,
    _set_cursor_factory, _set_dry_run, _set_dec2float, _set_pool, _set_session, _set_reply,
    _set_deadline,
) = (vars(Interaction)[f.name].__set__ for f in fields(Interaction))  # fmt: skip
