"""Transaction: one connection held for several interactions (the original ``partial_txn``).

``with ipool.transaction() as tx:`` checks a connection out of the routed pool
with the requested isolation level / read-only mode; each ``tx.run(...)`` runs
in the same server transaction and returns its result directly (there is
nothing to wait for in parallel: the statements of one transaction are
sequential).  A clean exit commits, an exception in the block rolls back, and
the connection goes back to its pool either way (broken ones are replaced by
the pool).  Use it for ``SELECT ... FOR UPDATE`` followed by the update.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import psycopg2
from psycopg2 import sql

from gdbpool.errors import ConfigurationError, DBInteractionException
from gdbpool.execute import run_in_transaction
from gdbpool.interaction import ISOLATION_LEVELS, Interaction, isolation_level_name
from gdbpool.pool.connection import changes_session
from gdbpool.routing.read_your_writes import ReadYourWrites

if TYPE_CHECKING:
    from gdbpool.pool.connection_pool import DBConnectionPool

__all__ = ["Transaction"]


class Transaction:
    """A server transaction on one pooled connection (guide: docs/guide/routing.md)."""

    def __init__(
        self,
        pool: DBConnectionPool | None,
        *,
        read_only: bool = False,
        isolation_level: str | int | None = None,
        timeout: float | None = None,
        session: ReadYourWrites | None = None,
    ) -> None:
        level: str | None = None
        if isolation_level is not None:
            try:
                level = isolation_level_name(isolation_level)  # or psycopg2's constant for one
            except ConfigurationError:
                levels = ", ".join(name for name in ISOLATION_LEVELS if name != "autocommit")
                raise ConfigurationError(
                    f"unknown isolation_level {isolation_level!r}; use one of {levels}"
                ) from None
        if level == "autocommit":
            raise ConfigurationError("a transaction cannot run in autocommit mode")
        #: The pool the connection comes from (set by the router when None here).
        self.pool = pool
        self._read_only = read_only
        self._isolation_level = level
        self._timeout = timeout
        self._session = session
        self._conn: Any = None

    def __enter__(self) -> Transaction:
        if self.pool is None:
            raise ConfigurationError("Transaction has no pool to take a connection from")
        conn = self.pool.get(timeout=self._timeout)
        try:
            level = self._isolation_level
            conn.set_session(
                isolation_level=None if level is None else ISOLATION_LEVELS[level],
                readonly=self._read_only,
                autocommit=False,
            )
        except BaseException:
            self.pool.put(conn)
            raise
        self._conn = conn
        return self

    def run(
        self,
        interaction: str | sql.Composable | Callable[..., Any],
        args: Any = None,
        *,
        timeout: float | None = None,
        cursor_factory: Any = None,
        dec2float: bool = False,
    ) -> Any:
        """Run one interaction inside the transaction and return its result.

        Raises :class:`~gdbpool.DBInteractionException` on failure; the
        transaction is then aborted on the server, and leaving the block rolls
        it back.
        """
        if self._conn is None:
            raise ConfigurationError("Transaction.run() outside its with-block")
        msg = Interaction(
            interaction, args, timeout=timeout, cursor_factory=cursor_factory, dec2float=dec2float
        )
        conn = self._conn
        if not conn.gdbpool_dirty and changes_session(interaction, conn):
            conn.gdbpool_dirty = True  # put() has it reset to a clean session
        return run_in_transaction(conn, msg)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        pool = self.pool
        assert pool is not None
        try:
            if exc_type is None:
                try:
                    conn.commit()
                except psycopg2.Error as err:
                    raise DBInteractionException(
                        f"commit failed: {err}".strip(), pgcode=err.pgcode, original=err
                    ) from err
                if self._session is not None and not self._read_only:
                    self._session.observe_commit(conn)
            elif not conn.closed:
                with contextlib.suppress(psycopg2.Error):  # put() discards a broken one
                    conn.rollback()
        finally:
            pool.put(conn)
