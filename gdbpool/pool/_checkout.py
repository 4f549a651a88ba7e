"""How ``DBConnectionPool.get()`` obtains a connection: the checkout, its checks, the reset on put.

Internal to :mod:`gdbpool.pool.connection_pool` (see "Breaking", "Interrupted
checkouts" and "Returning" in its module docstring): ``_checkout`` asks the
pool actor for a connection and waits for the loan, bounded so that a pool
actor that died cannot hang it; ``_abandon`` withdraws a request (or gives
back its loan) when the wait ends without one; ``_usable`` checks a loan
before ``get()`` returns it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from actors import ActorRef, ActorStopped
from gdbpool.errors import PoolTimeout
from gdbpool.pool.connection import PoolSettings, check_connection, ping
from gdbpool.pool.wait_queue import WaitQueue, _Checkout

if TYPE_CHECKING:
    from gdbpool.pool._pool_messages import _Status
    from gdbpool.pool.connection_pool import DBConnectionPool

__all__: list[str] = []


def _checkout(
    pool: DBConnectionPool,
    ref: ActorRef,
    waiting: WaitQueue,
    status: _Status,
    target: str,
    timeout: float,
    answer_margin: float,
) -> tuple[Any, float | None]:
    """Ask the pool actor ``ref`` for a connection; ``(conn, idle_since)``, marked lent to ``pool``.

    ``idle_since`` is None for a connection handed over from its last use.
    """
    if status.closed:
        raise status.closed_error(pool.name)
    request = _Checkout(timeout)
    waiting.sent()  # until the pool actor has it, submit() does not offer: FIFO
    try:
        handled = ref.tell(request)
    except ActorStopped:
        waiting.received()
        raise status.closed_error(pool.name) from None
    reply = request.reply
    # Handled already (the pool actor was idle and ran it on this greenlet):
    # the request is lent, or waits where the pool's deadline timer, close()
    # or the pool actor's failure answers it. Otherwise it sits in the
    # mailbox: bound the wait, should the pool actor die before reading it.
    bound = None if handled else timeout + answer_margin
    try:
        reply.wait(bound)
    except BaseException:
        _abandon(pool, request)  # killed or timed out from outside: leak nothing
        raise
    if not reply.ready():
        _abandon(pool, request)
        if status.closed or not ref.is_alive:
            raise status.closed_error(pool.name)
        raise PoolTimeout(
            f"pool {pool.name!r} ({target}): the pool did not answer "
            f"within {timeout + answer_margin:.2f} s"
        )
    conn, idle_since = reply.get()
    conn.gdbpool_pool = pool
    conn.gdbpool_lent = True
    return conn, idle_since


def _abandon(pool: DBConnectionPool, request: _Checkout) -> None:
    reply = request.reply
    if not reply.ready():
        # Answered now, so the pool actor skips it: nobody would read a loan.
        reply.set_exception(PoolTimeout(f"pool {pool.name!r}: checkout abandoned"))
    elif reply.successful():
        conn = reply.value[0]
        conn.gdbpool_pool = pool
        conn.gdbpool_lent = True
        pool.put(conn)


def _usable(conn: Any, idle_since: float | None, settings: PoolSettings) -> bool:
    if idle_since is None:  # handed over straight from its last use: never idle
        return not conn.closed
    if not check_connection(conn):
        return False
    if time.monotonic() - idle_since > settings.check_after:
        return ping(conn, settings.connect_timeout)
    return True
