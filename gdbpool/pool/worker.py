"""ConnectionWorker: the actor that owns one pooled PostgreSQL connection.

A worker opens its connection (retrying with backoff while the server is
unreachable), runs the interactions its pool hands it, takes its connection
back from ``put()`` and resets it, and replaces it when it breaks, grows too
old (``max_lifetime``) or is found dead by a check. It tells its pool actor
about every change (opened, idle, lost, failed to connect); it never touches
the pool's state. The messages of that conversation live here too.

Checks (why a connection handed out is alive):

* Cheap, at every checkout of an idle connection: ``conn.closed``, then a
  zero-timeout ``poll()`` of the socket; an idle connection has nothing to
  read, so a readable socket means the server sent something (an error before
  ``pg_terminate_backend`` closed it, EOF) and ``conn.poll()`` tells which.
  One syscall, no round trip. An interaction a worker takes from the wait
  queue straight after finishing the previous one skips it: the connection was
  never idle (no hub iteration between reading the last result and sending
  the next statement, a few microseconds), the result just read proved it
  alive, and a termination landing in that gap is the same race every check
  has with a termination landing just after it. ``conn.closed`` is still
  checked after every interaction. For the same reason a connection a worker
  hands from its last use (an interaction, a reset) straight to a waiting
  ``get()`` skips it too (``get()`` checks ``conn.closed`` only); one that a
  ``put()`` gives back does not: its borrower may have held it unused.
* Deep, when the connection sat idle longer than ``check_after`` seconds
  (default 30): ``SELECT 1``, bounded by ``connect_timeout`` (the socket is shut
  down if the server does not answer), for half-open connections after a
  network cut where no FIN ever arrived.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent
import psycopg2
from gevent import GreenletExit

from actors import Actor, ActorRef, ActorStopped, handles
from gdbpool.errors import DBInteractionException, PoolClosed, PoolConnectionError
from gdbpool.execute import run_interaction
from gdbpool.interaction import Interaction
from gdbpool.pool.connection import (
    TRANSACTION_IDLE,
    PooledConnection,
    PoolSettings,
    backoff,
    check_connection,
    open_connection,
    ping,
)

if TYPE_CHECKING:
    from gdbpool.pool.wait_queue import WaitQueue

__all__ = ["ConnectionWorker"]

#: A worker's cursor that fetched more rows than this is replaced after the
#: interaction, so a large result is not kept in memory by an idle connection.
_CURSOR_KEEP_ROWS = 1000


# -- what workers are told -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    """Open (or reopen) the connection."""


@dataclass(frozen=True, slots=True)
class Return:
    """``put()`` gave the lent connection back: reset it (or replace it)."""

    conn: PooledConnection


@dataclass(frozen=True, slots=True)
class Recycle:
    """Close the connection (too old, or the pool is closing) and, unless ``stop``, reopen."""

    stop: bool = False


# -- what workers tell their pool ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opened:
    """The worker's connection is open and idle."""

    worker: ActorRef
    conn: PooledConnection
    connect_ms: int
    expires_at: float  # monotonic time past which the connection is replaced (max_lifetime)


@dataclass(frozen=True, slots=True)
class Idle:
    """The worker finished its interaction (or its loan came back) and is idle.

    ``handed``: the connection was just used (an interaction or a reset ran
    on it), so the pool may hand it to a waiting ``get()`` without the socket
    check. ``put()`` tells ``handed=False``: the borrower may have held the
    connection unused for any time.
    """

    worker: ActorRef
    handed: bool = True


@dataclass(frozen=True, slots=True)
class Lost:
    """The worker's connection broke or was retired; ``retry`` did not run and goes back."""

    worker: ActorRef
    retry: Interaction | None = None
    broken: bool = True


@dataclass(frozen=True, slots=True)
class Gone:
    """The worker was killed (not a crash), or put() found it stopped: replace it."""

    worker: ActorRef


@dataclass(frozen=True, slots=True)
class ConnectFailed:
    """An attempt to open a connection failed (``error`` is redacted); retrying later."""

    worker: ActorRef
    error: str


class ConnectionWorker(Actor):
    """Owns one connection; see the module docstring.

    After an interaction, a worker takes the next waiting interaction from
    the head of its pool's :class:`~gdbpool.pool.wait_queue.WaitQueue` itself and
    runs it at once; it reports :class:`Idle` only when none waits.

    Greenlet switches, measured with ``greenlet.settrace``:

    * One submitted interaction on an idle pool, from ``submit()`` to the
      caller holding the result: 6 — the pool actor is ``inline``, so it hands
      the interaction over on the caller's greenlet; caller → hub → worker
      (2), worker ⇄ hub while the server answers (2), worker → hub → caller
      with the reply (2); the worker's :class:`Idle` is handled inline on the
      worker's greenlet. A caller that owns its connection needs 2, and so
      does ``get()`` + a query + ``put()`` on an idle pool (``get()`` and a
      clean ``put()`` are handled inline).
    * Under load (16 connections, 64 greenlets submitting ``SELECT 1``):
      4.0 per interaction (6.3 before workers took from the wait queue): the
      caller's 2 and the worker's 2 around the server's answer. A
      ``get()``/query/``put()`` caller under the same load also needs 4: its
      own 2 around the server's answer, and 2 when it waits for a connection.
    """

    def __init__(
        self, settings: PoolSettings, pool: ActorRef, waiting: WaitQueue, conn: Any = None
    ) -> None:
        super().__init__()
        self.settings = settings
        self.pool = pool
        self.waiting = waiting
        self.conn: Any = None
        self.expires_at = 0.0
        self.failures = 0
        self._initial = conn
        self._idle_msg: Idle | None = None

    def on_start(self) -> None:
        self._idle_msg = Idle(self.ref)
        initial, self._initial = self._initial, None
        if initial is not None and not initial.closed:
            self._adopt(initial, 0)
        else:
            self.ref.tell(Connect())

    def on_stop(self) -> None:
        conn = self.conn
        # A lent connection is closed by put() once the pool is closed.
        if conn is not None and not conn.gdbpool_lent:
            conn.close()

    def on_failure(self, exc: BaseException) -> None:
        # A bug in a handler: drop the connection, the restarted instance reconnects.
        self._discard()
        with contextlib.suppress(ActorStopped):  # the pool is gone: nobody to tell
            self.pool.tell(Lost(self.ref))

    def on_dropped(self, message: object) -> None:
        # Never handled (killed by a stop that timed out, or given up on): the
        # caller of an interaction is answered, a returned connection closed.
        if isinstance(message, Interaction) and not message.reply.ready():
            message.reply.set_exception(
                PoolClosed(f"pool {self.settings.name!r}: its connection worker stopped first")
            )
        elif isinstance(message, Return) and not message.conn.closed:
            with contextlib.suppress(psycopg2.Error):
                message.conn.close()

    # -- handlers -----------------------------------------------------------------

    @handles(Connect)
    def connect(self, msg: Connect) -> None:
        if self.conn is not None or self.waiting.closed:
            return  # connected already, or the pool is closing: never reconnect then
        started = time.monotonic()
        try:
            conn = open_connection(self.settings)
        except GreenletExit:
            self._killed()
            raise
        except PoolConnectionError as exc:
            self.failures += 1
            delay = backoff(self.failures, self.settings.backoff_initial, self.settings.backoff_max)
            self.settings.log.warning(
                "reconnect_failed", attempt=self.failures, retry_in=round(delay, 3), error=str(exc)
            )
            self.pool.tell(ConnectFailed(self.ref, str(exc)))
            gevent.spawn_later(delay, self._retry)
            return
        self._adopt(conn, int((time.monotonic() - started) * 1000))

    @handles(Interaction)
    def run(self, interaction: Interaction) -> None:
        conn = self.conn
        if interaction.reply.ready():
            # Abandoned by its caller (see Reply) on its way here: never run it.
            next_interaction = self.waiting.take_interaction(time.monotonic())
            if next_interaction is None:
                self.pool.tell(self._idle_msg)
                return
            interaction = next_interaction
        if conn is None or not self.alive(conn, interaction.deadline):
            self._lose(retry=interaction)
            return
        take = self.waiting.take_interaction
        while True:
            reply = interaction.reply
            try:  # noqa: SIM105 - per interaction: suppress() costs a context manager
                reply.running = conn  # so a caller that abandons it can cancel it (Reply)
            except AttributeError:
                pass  # a plain AsyncResult given by the caller: not abandonable
            try:
                reply.set(run_interaction(conn, interaction))
            except DBInteractionException as exc:
                reply.set_exception(exc)
                hook = self.settings.on_failure
                if hook is not None:
                    if exc.pgcode == "25006":
                        hook("25006: read-only transaction")
                    elif conn.closed:
                        hook("connection lost")
            except Exception as exc:
                # run_interaction converts what it knows; anything else is a
                # bug somewhere below it: answer the caller, then trust
                # nothing about the connection.
                self.settings.log.error("interaction_crashed", worker=self.ref.name, exc_info=exc)
                reply.set_exception(
                    DBInteractionException(
                        f"interaction failed unexpectedly: {type(exc).__name__}: {exc}",
                        original=exc,
                    )
                )
                self._lose()
                return
            except GreenletExit:
                # Killed mid-query: the wait callback cancelled the statement and
                # psycopg2 closed the connection; nobody else will answer the caller.
                reply.set_exception(
                    DBInteractionException("the connection worker was killed while running this")
                )
                self._killed()
                raise
            try:
                running = reply.running
            except AttributeError:
                running = conn
            else:
                reply.running = None
            if running is not conn:
                running.finish()  # abandoned while running: its cancel lands before the next use
            now = time.monotonic()
            if not self._still_usable(conn, now):
                return
            if conn.gdbpool_cursor.rowcount > _CURSOR_KEEP_ROWS:
                self._fresh_cursor(conn)  # do not keep a large result with an idle connection
            conn.gdbpool_idle_since = now
            # Then the interactions that queued meanwhile, taken from the pool's
            # wait queue, until none waits: only then report Idle. A chained
            # interaction skips alive(): see "Checks" in the module docstring.
            next_interaction = take(now)
            if next_interaction is None:
                break
            interaction = next_interaction
        self.pool.tell(self._idle_msg)

    @handles(Return)
    def give_back(self, msg: Return) -> None:
        conn = msg.conn
        if conn is not self.conn:
            return
        if not conn.closed:
            try:
                if conn.get_transaction_status() != TRANSACTION_IDLE:
                    _roll_back(conn)
                conn.cursor_factory = None
                conn.set_session(
                    isolation_level="DEFAULT",
                    readonly="DEFAULT",
                    deferrable="DEFAULT",
                    autocommit=False,
                )
            except psycopg2.Error:
                conn.close()  # its state cannot be verified: replace it
            except GreenletExit:
                self._killed()
                raise
        self._after_use(conn)

    @handles(Recycle)
    def recycle(self, msg: Recycle) -> None:
        if msg.stop:
            self.ref.stop()  # on_stop closes the connection unless it is lent
            return
        self._discard()
        self.pool.tell(Lost(self.ref, broken=False))
        if not self.waiting.closed:
            self.ref.tell(Connect())

    # -- internals ------------------------------------------------------------------

    def alive(self, conn: PooledConnection, deadline: float | None = None) -> bool:
        """Cheap check, plus ``SELECT 1`` after ``check_after`` idle seconds (module docstring).

        The ``SELECT 1`` is bounded by ``connect_timeout`` and by the
        interaction's ``deadline``: it counts against the caller's timeout.
        Past the deadline it is skipped (the interaction fails with
        InteractionTimeout without running, the connection is checked next time).
        """
        if not check_connection(conn):
            return False
        now = time.monotonic()
        if now - conn.gdbpool_idle_since > self.settings.check_after:
            limit = self.settings.connect_timeout
            if deadline is not None:
                if deadline <= now:
                    return True
                limit = min(limit, deadline - now)
            return ping(conn, limit)
        return True

    def _after_use(self, conn: PooledConnection) -> None:
        now = time.monotonic()
        if self._still_usable(conn, now):
            conn.gdbpool_idle_since = now
            self.pool.tell(self._idle_msg)

    def _still_usable(self, conn: PooledConnection, now: float) -> bool:
        """After a use: False (and the connection replaced) if broken or past max_lifetime."""
        if conn.closed:
            self._lose()
            return False
        if now > self.expires_at:
            self.recycle(Recycle())
            return False
        return True

    def _fresh_cursor(self, conn: PooledConnection) -> None:
        old, conn.gdbpool_cursor = conn.gdbpool_cursor, conn.cursor()
        if old is not None:
            old.close()

    def _adopt(self, conn: PooledConnection, connect_ms: int) -> None:
        self.conn = conn
        self._fresh_cursor(conn)
        self.failures = 0
        conn.gdbpool_worker = self.ref
        conn.gdbpool_put_back = Idle(self.ref, handed=False)
        # +-5% so connections opened together are not all recycled together.
        self.expires_at = time.monotonic() + self.settings.max_lifetime * random.uniform(0.95, 1.0)
        conn.gdbpool_idle_since = time.monotonic()
        self.settings.log.debug("connection_opened", worker=self.ref.name, connect_ms=connect_ms)
        self.pool.tell(Opened(self.ref, conn, connect_ms, self.expires_at))

    def _lose(self, retry: Interaction | None = None) -> None:
        self.settings.log.info("connection_lost", worker=self.ref.name)
        self._discard()
        self.pool.tell(Lost(self.ref, retry))
        if not self.waiting.closed:
            self.ref.tell(Connect())

    def _killed(self) -> None:
        self._discard()
        with contextlib.suppress(Exception):
            self.pool.tell(Gone(self.ref))

    def _discard(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg2.Error):
                conn.close()

    def _retry(self) -> None:
        with contextlib.suppress(Exception):  # stopped meanwhile: nothing to retry
            self.ref.tell(Connect())


def _roll_back(conn: PooledConnection) -> None:
    """End the transaction ``conn`` is in, also one a ``BEGIN`` sent as SQL opened in autocommit.

    psycopg2's ``rollback()`` sends nothing in autocommit mode.
    """
    if conn.autocommit:
        with conn.cursor() as cur:
            cur.execute("ROLLBACK")
    else:
        conn.rollback()
