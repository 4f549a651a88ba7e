"""DBConnectionPool: a pool of PostgreSQL connections run by actors.

The :class:`DBConnectionPool` object is a facade. The pool's state lives in a
pool actor (:mod:`gdbpool.pool.pool_actor`), which never does I/O: it matches
requests (interactions from :meth:`~DBConnectionPool.submit`, checkouts from
:meth:`~DBConnectionPool.get`) with idle
:class:`~gdbpool.pool.worker.ConnectionWorker` actors, each of which owns
one connection and does all the I/O on it (open, check, run, reset, close).
Workers are supervised: one that crashes is restarted and reconnects.

The decisions (sizing, waiting, returning, an unreachable server, closing,
breaking, interrupted checkouts) are written once, in ``docs/design/pool.md``;
the tunables and their defaults on :class:`DBConnectionPool`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import gevent
from gevent.event import Event
from psycopg2 import extensions

from actors import ActorState, ActorStopped, Supervisor, SupervisorGaveUp
from gdbpool.errors import (
    ConfigurationError,
    PoolClosed,
    PoolConnectionError,
    PoolTimeout,
    check_type,
)
from gdbpool.green import ensure_green
from gdbpool.interaction import ISOLATION_LEVELS, Interaction
from gdbpool.logging import describe_dsn, get_logger
from gdbpool.pool.connection import (
    PooledConnection,
    PoolSettings,
    check_connection,
    open_connection,
    ping,
    reset_session_here,
)
from gdbpool.pool.pool_actor import _Busy, _Close, _PoolActor, _PoolStats, _Ready, _Status
from gdbpool.pool.wait_queue import WaitQueue, _Checkout
from gdbpool.pool.worker import Gone, Return

__all__ = ["ANSWER_MARGIN", "DBConnectionPool"]

#: Seconds ``get()`` waits for the pool actor beyond its own timeout before it
#: gives up on an answer (the pool actor answers by the deadline unless it died).
ANSWER_MARGIN: Final = 1.0

# A worker in these states will not take a connection back: put() closes it.
_ENDING = (ActorState.STOPPING, ActorState.STOPPED)


class DBConnectionPool:
    """A pool of connections to one PostgreSQL server (decisions: docs/design/pool.md).

    Tunables (all keyword arguments after ``pool_size``):

    * ``pool_size``: most connections open at once (``max_size``). Default 10.
    * ``name``: used in logs, actor names and ``application_name``. Default
      ``"default"``.
    * ``min_size``: connections opened at start and kept open. Default
      ``pool_size`` (eager); 0 opens nothing until the first request.
    * ``application_name``: set on every connection, so the pool shows in
      ``pg_stat_activity``. Default the DSN's, else ``"gdbpool:<name>"``.
    * ``timeout``: seconds a request may wait for a connection. Default 30.
    * ``max_waiting``: requests allowed to wait at once; 0 = unbounded
      (default).
    * ``max_lifetime``: seconds before a connection is replaced. Default 3600
      (each connection gets 95-100% of it, so they do not expire together).
    * ``max_idle``: seconds an idle connection above ``min_size`` is kept.
      Default 600.
    * ``connect_timeout``: seconds one connection attempt may take. Default 10.
    * ``check_after``: idle seconds after which a checkout runs ``SELECT 1``
      first (every checkout does a cheap socket check). Default 30.
    * ``reconnect_initial`` / ``reconnect_max``: backoff between failed
      connection attempts, doubling from the first to the second. Defaults
      0.1 and 10 seconds, +-25% jitter.

    If ``min_size > 0`` the constructor opens the first connection itself and
    raises :class:`~gdbpool.errors.PoolConnectionError` (naming host, port and
    database, never the password) if it cannot; the others open in the
    background. An unparsable DSN raises PoolConnectionError too; a bad
    tunable raises :class:`~gdbpool.errors.ConfigurationError`, one of the
    wrong type :class:`~gdbpool.errors.ArgumentTypeError`, both before
    anything connects.
    """

    def __init__(
        self,
        dsn: str,
        pool_size: int = 10,
        *,
        name: str = "default",
        min_size: int | None = None,
        application_name: str | None = None,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 3600.0,
        max_idle: float = 600.0,
        connect_timeout: float = 10.0,
        check_after: float = 30.0,
        reconnect_initial: float = 0.1,
        reconnect_max: float = 10.0,
        _on_failure: Callable[[str], None] | None = None,
    ) -> None:
        check_type("dsn", dsn, str, "a libpq connection string or postgresql:// URI")
        check_type("name", name, str, "a str")
        if application_name is not None:
            check_type("application_name", application_name, str, "a str or None")
        min_size = pool_size if min_size is None else min_size
        _check_tunables(
            pool_size, min_size, timeout, max_waiting, max_lifetime, max_idle,
            connect_timeout, check_after, reconnect_initial, reconnect_max,
        )  # fmt: skip
        params = _parse_dsn(dsn, name)
        ensure_green()  # the first pool makes psycopg2 cooperative (docs/design/green.md)
        self.name = name
        self.timeout = timeout
        self._log = get_logger("gdbpool.pool", pool=name)
        self._settings = PoolSettings(
            name=name,
            dsn=dsn,
            target=describe_dsn(params),
            application_name=(
                application_name or params.get("application_name") or f"gdbpool:{name}"
            ),
            connect_timeout=connect_timeout,
            max_lifetime=max_lifetime,
            check_after=check_after,
            backoff_initial=reconnect_initial,
            backoff_max=reconnect_max,
            log=self._log,
            on_failure=_on_failure,
        )
        first = open_connection(self._settings) if min_size > 0 else None
        self._status = _Status()
        self._waiting = WaitQueue(max_waiting)
        self._shut = False  # close() has stopped the workers and the pool actor
        self._supervisor = Supervisor(
            f"{name}.workers", max_restarts=10, within=1.0, on_give_up=self._gave_up
        )
        self._ref = _PoolActor.start(
            self._settings,
            self._status,
            min_size,
            pool_size,
            timeout,
            max_waiting,
            max_idle,
            self._supervisor,
            first,
            self._waiting,
            name=f"{name}.pool",
        )
        self._log.info("pool_opened", target=self._settings.target, min_size=min_size,
                       max_size=pool_size)  # fmt: skip

    # -- the 2011 API ------------------------------------------------------------

    def get(
        self,
        timeout: float | None = None,
        auto_commit: bool = False,
        *,
        isolation_level: str | None = None,
        read_only: bool = False,
    ) -> Any:
        """Check out a connection; give it back with :meth:`put`.

        ``timeout`` bounds the wait (default: the pool's ``timeout``; then
        :class:`~gdbpool.errors.PoolTimeout`). The connection comes in the
        session asked for: ``auto_commit=True`` (or
        ``isolation_level="autocommit"``), one of the isolation levels, and/or
        ``read_only=True``; otherwise the pool default (transactions at the
        server's default isolation, read-write). Raises PoolClosed after
        :meth:`close`, TooManyRequests past ``max_waiting``.
        """
        if isolation_level is not None and (
            type(isolation_level) is not str or isolation_level not in ISOLATION_LEVELS
        ):
            check_type("isolation_level", isolation_level, str, "a str or None")
            raise ConfigurationError(
                f"unknown isolation_level {isolation_level!r}; use one of "
                f"{', '.join(ISOLATION_LEVELS)}"
            )
        wait = self.timeout if timeout is None else timeout
        try:
            deadline = time.monotonic() + wait
        except TypeError:  # the check costs nothing on the way that works
            check_type("timeout", timeout, (int, float), "a number of seconds or None")
            raise
        left = wait
        while True:
            conn, idle_since = self._checkout(left)
            try:
                usable = _usable(conn, idle_since, self._settings)
            except BaseException:
                self.put(conn)  # interrupted mid-check: the worker resets or replaces it
                raise
            if usable:
                break
            self.put(conn)  # the worker sees it closed and replaces it
            left = max(0.0, deadline - time.monotonic())
        autocommit = auto_commit or isolation_level == "autocommit"
        if autocommit and not read_only and isolation_level in (None, "autocommit"):
            # The pool default plus autocommit: psycopg2 sends nothing for it, and
            # the attribute costs a fifth of set_session().
            try:
                conn.autocommit = True
            except BaseException:
                self.put(conn)
                raise
        elif autocommit or read_only or isolation_level is not None:
            try:
                conn.set_session(
                    isolation_level=None
                    if isolation_level in (None, "autocommit")
                    else ISOLATION_LEVELS[isolation_level],
                    readonly=True if read_only else None,
                    autocommit=autocommit,
                )
            except BaseException:
                self.put(conn)
                raise
        return conn

    def put(self, conn: Any, timeout: float = 1) -> None:
        """Give back a connection from :meth:`get`; never blocks.

        The connection is rolled back if left in a transaction and reset to the
        pool default; discarded and replaced if broken. ``timeout`` is accepted
        for compatibility with the 2011 API and unused. Raises
        :class:`~gdbpool.errors.ConfigurationError` for a connection this pool
        did not lend, or one already given back.
        """
        if getattr(conn, "gdbpool_pool", None) is not self:
            raise ConfigurationError(
                f"put() got a connection that pool {self.name!r} did not lend: "
                "give it back to the pool it came from"
            )
        if not conn.gdbpool_lent:
            raise ConfigurationError(
                f"put() got a connection already given back to pool {self.name!r}"
            )
        conn.gdbpool_lent = False
        worker = conn.gdbpool_worker
        try:
            if (
                worker.state is ActorState.RUNNING
                and not self._status.closed
                and reset_session_here(conn)
            ):
                conn.gdbpool_idle_since = time.monotonic()
                self._ref.tell(conn.gdbpool_put_back)  # idle again: no worker wake-up
            elif worker.state in _ENDING:
                # Stopped while the connection was out (its supervisor gave up on
                # it): close the connection and have the pool replace the worker.
                conn.close()
                self._ref.tell(Gone(worker))
            else:
                worker.tell(Return(conn))  # its worker rolls back / resets
        except ActorStopped:
            conn.close()  # the pool was closed while it was out

    @contextlib.contextmanager
    def connection(
        self,
        timeout: float | None = None,
        auto_commit: bool = False,
        *,
        isolation_level: str | None = None,
        read_only: bool = False,
    ) -> Iterator[Any]:
        """``with pool.connection() as conn:`` — :meth:`get`, then :meth:`put`.

        The block's transaction is committed when it exits normally and rolled
        back when it raises (like psycopg's connection context).
        """
        conn = self.get(timeout, auto_commit, isolation_level=isolation_level, read_only=read_only)
        try:
            yield conn
            if not conn.closed and conn.status != extensions.STATUS_READY:
                conn.commit()
        finally:
            self.put(conn)

    # -- interactions ------------------------------------------------------------

    def submit(self, interaction: Interaction) -> None:
        """Run ``interaction`` on a pooled connection; its ``reply`` gets the outcome.

        Never raises for a bad interaction: SQL errors, timeouts, PoolTimeout,
        TooManyRequests and PoolClosed are set on ``interaction.reply``.
        Under load it joins the wait queue without the pool actor hop
        (:meth:`WaitQueue.offer <gdbpool.pool.wait_queue.WaitQueue.offer>`).
        """
        if self._waiting.offer(interaction, self.timeout):
            return
        try:
            self._ref.tell(interaction)
        except ActorStopped:
            interaction.reply.set_exception(self._status.closed_error(self.name))

    def wait(self, timeout: float = 30.0) -> None:
        """Block until ``min_size`` connections are open (like psycopg_pool's ``wait()``).

        Raises :class:`~gdbpool.errors.PoolTimeout` after ``timeout`` seconds,
        with the last connection error when the server is unreachable.
        """
        try:
            ready: Event = self._ref.ask(_Ready(), timeout=timeout).get()
        except ActorStopped:
            raise PoolClosed(f"pool {self.name!r} is closed") from None
        if not ready.wait(timeout):
            error = self._status.last_error
            raise PoolTimeout(
                f"pool {self.name!r} ({self._settings.target}): connections not open within "
                f"{timeout} s" + (f"; last error: {error}" if error else "")
            )

    # -- state --------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """False while the server is unreachable (no connection open, last attempt failed)."""
        return self._status.healthy and not self._status.closed

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._status.closed

    def stats(self) -> dict[str, int]:
        """Counters, named like psycopg_pool's.

        ``pool_min``, ``pool_max``, ``pool_size`` (connections open or being
        opened), ``pool_available`` (idle), ``requests_waiting`` (now; not a
        withdrawn ``get()``), ``requests_num`` (total), ``requests_queued`` (had
        to wait), ``requests_wait_ms`` (total waiting time), ``requests_errors``
        (timeouts, too many requests), ``connections_num`` (attempts),
        ``connections_ms`` (time spent connecting), ``connections_errors``
        (failed attempts), ``connections_lost`` (found broken), ``usage_ms``
        (total time connections were busy or lent).

        Beyond psycopg_pool's (read by :mod:`gdbpool.metrics`): ``connections_idle``,
        ``connections_busy`` (running an interaction), ``connections_lent`` (out
        through ``get()``), ``connections_connecting`` (now),
        ``connections_replaced`` (past ``max_lifetime``), ``pool_mailbox_depth``
        (the pool actor's), ``worker_restarts`` (by the workers' supervisor), and
        ``requests_wait_bucket_<le>`` / ``requests_wait_bucket_inf``: requests
        that waited, by wait time in seconds (bounds:
        :data:`gdbpool.pool.wait_queue.WAIT_BUCKETS`; not cumulative).
        """
        try:
            result: dict[str, int] = self._ref.ask(_PoolStats(), timeout=5.0).get()
        except ActorStopped:
            raise PoolClosed(f"pool {self.name!r} is closed") from None
        return result

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool (waiting and running work: docs/design/pool.md). Idempotent.

        Waits up to ``timeout`` seconds for running interactions, then stops the
        workers (closing their connections) and the pool actor.
        """
        self._close(timeout, "")

    def _close(self, timeout: float, reason: str) -> None:
        if self._shut:
            return
        deadline = time.monotonic() + timeout
        try:
            drained: Event = self._ref.ask(_Close(reason), timeout=timeout).get()
            drained.wait(max(0.0, deadline - time.monotonic()))
        except (ActorStopped, gevent.Timeout):
            pass  # the pool actor is gone (it broke): still stop the workers
        if self._shut:
            return  # another close() finished meanwhile
        self._shut = True
        self._supervisor.stop(max(0.1, deadline - time.monotonic()))
        self._ref.stop(max(0.1, deadline - time.monotonic()))
        why = reason or self._status.reason
        self._log.info("pool_closed", **({"reason": why} if why else {}))

    def __enter__(self) -> DBConnectionPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._status.closed else "open"
        return f"<DBConnectionPool {self.name!r} {self._settings.target} {state}>"

    # -- internals -------------------------------------------------------------------

    def _withdraw_waiting(self) -> list[Interaction]:
        """Take back the interactions still waiting here that were routed, not aimed (pool=None).

        None of them has started; the interaction pool re-routes them after a
        change of primary (docs/design/router.md).
        """
        return self._waiting.withdraw_interactions()

    def _busy(self) -> tuple[int, int]:
        """``(connections running an interaction or lent, requests waiting)``, for pause()."""
        try:
            result: tuple[int, int] = self._ref.ask(_Busy(), timeout=5.0).get()
        except ActorStopped:
            return (0, 0)
        return result

    def _checkout(self, timeout: float) -> tuple[PooledConnection, float | None]:
        """Ask the pool actor for a connection; ``(conn, idle_since)``, marked lent to this pool.

        ``idle_since`` is None for a connection handed over from its last use.
        Bounded: a pool actor that died cannot hang it (see "Breaking").
        """
        status = self._status
        if status.closed:
            raise status.closed_error(self.name)
        request = _Checkout(timeout)
        self._waiting.sent()  # until the pool actor has it, submit() does not offer: FIFO
        try:
            handled = self._ref.tell(request)
        except ActorStopped:
            self._waiting.received()
            raise status.closed_error(self.name) from None
        reply = request.reply
        # Handled already (the pool actor was idle and ran it on this greenlet):
        # the request is lent, or waits where the pool's deadline timer, close()
        # or the pool actor's failure answers it. Otherwise it sits in the
        # mailbox: bound the wait, should the pool actor die before reading it.
        bound = None if handled else timeout + ANSWER_MARGIN
        try:
            reply.wait(bound)
        except BaseException:
            self._abandon(request)  # killed or timed out from outside: leak nothing
            raise
        if not reply.ready():
            self._abandon(request)
            if status.closed or not self._ref.is_alive:
                raise status.closed_error(self.name)
            raise PoolTimeout(
                f"pool {self.name!r} ({self._settings.target}): the pool did not answer "
                f"within {timeout + ANSWER_MARGIN:.2f} s"
            )
        conn, idle_since = reply.get()
        conn.gdbpool_pool = self
        conn.gdbpool_lent = True
        return conn, idle_since

    def _abandon(self, request: _Checkout) -> None:
        """Withdraw ``request`` (or give back its loan): the wait ended without one."""
        reply = request.reply
        if not reply.ready():
            # Answered now, so the pool actor skips it: nobody would read a loan.
            reply.set_exception(PoolTimeout(f"pool {self.name!r}: checkout abandoned"))
        elif reply.successful():
            conn = reply.value[0]
            conn.gdbpool_pool = self
            conn.gdbpool_lent = True
            self.put(conn)

    def _gave_up(self, error: SupervisorGaveUp) -> None:
        self._log.error("pool_workers_gave_up", error=str(error))
        gevent.spawn(self._close, 5.0, f"the pool broke: {error}")


# -- checks ---------------------------------------------------------------------------


def _usable(conn: PooledConnection, idle_since: float | None, settings: PoolSettings) -> bool:
    """May ``get()`` hand out this loan? A socket check, and ``SELECT 1`` past ``check_after``."""
    if idle_since is None:  # handed over straight from its last use: never idle
        return not conn.closed
    if not check_connection(conn):
        return False
    if time.monotonic() - idle_since > settings.check_after:
        return ping(conn, settings.connect_timeout)
    return True


def _parse_dsn(dsn: str, name: str) -> dict[str, str]:
    """The DSN's parameters; PoolConnectionError, never quoting the password, if unparsable."""
    try:
        return dict(extensions.parse_dsn(dsn))
    except Exception:
        # The parser's message may quote a fragment of the password: do not chain it.
        raise PoolConnectionError(
            f"pool {name!r}: invalid DSN ({describe_dsn(dsn)}); expected "
            "'key=value ...' pairs or a postgresql:// URI"
        ) from None


def _check_tunables(
    pool_size: int,
    min_size: int,
    timeout: float,
    max_waiting: int,
    max_lifetime: float,
    max_idle: float,
    connect_timeout: float,
    check_after: float,
    reconnect_initial: float,
    reconnect_max: float,
) -> None:
    """ArgumentTypeError for a tunable of the wrong type, ConfigurationError out of range.

    Defaults: :class:`DBConnectionPool`.  Runs before anything connects.
    """
    for label, count in (("pool_size", pool_size), ("min_size", min_size),
                         ("max_waiting", max_waiting)):  # fmt: skip
        check_type(label, count, int, "an int")
    for label, seconds in (
        ("timeout", timeout),
        ("max_lifetime", max_lifetime),
        ("max_idle", max_idle),
        ("connect_timeout", connect_timeout),
        ("check_after", check_after),
        ("reconnect_initial", reconnect_initial),
        ("reconnect_max", reconnect_max),
    ):
        check_type(label, seconds, (int, float), "a number of seconds")
    if pool_size < 1:
        raise ConfigurationError(f"pool_size must be >= 1, not {pool_size}")
    if not 0 <= min_size <= pool_size:
        raise ConfigurationError(f"min_size must be between 0 and pool_size, not {min_size}")
    if max_waiting < 0:
        raise ConfigurationError(f"max_waiting must be >= 0 (0 = unbounded), not {max_waiting}")
    for label, value in (
        ("timeout", timeout),
        ("max_lifetime", max_lifetime),
        ("max_idle", max_idle),
        ("connect_timeout", connect_timeout),
        ("reconnect_initial", reconnect_initial),
    ):
        if not value > 0:
            raise ConfigurationError(f"{label} must be > 0 seconds, not {value}")
    if not check_after >= 0:  # NaN too
        raise ConfigurationError(f"check_after must be >= 0 seconds, not {check_after}")
    if not reconnect_max >= reconnect_initial:
        raise ConfigurationError("reconnect_max must be >= reconnect_initial")
