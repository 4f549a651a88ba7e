"""What the pool actor is told, besides the worker messages and Interaction, and its status.

The pool actor (:class:`~gdbpool.pool.pool_actor._PoolActor`) tells itself
``_Expire`` (from its deadline timer), ``_Tick`` (housekeeping) and ``_Spawn``
(start a worker from its own greenlet); the facade
(:class:`~gdbpool.pool.connection_pool.DBConnectionPool`) asks it ``_Ready``,
``_Stats`` and ``_Close``. :class:`_Status` is the one piece of pool actor
state the facade reads: written by the pool actor only.
"""

from __future__ import annotations

from dataclasses import dataclass

from gdbpool.errors import PoolClosed

__all__: list[str] = []


@dataclass(frozen=True, slots=True)
class _Expire:
    """The earliest deadline of the waiting requests passed."""


@dataclass(frozen=True, slots=True)
class _Tick:
    """Periodic housekeeping: max_idle, max_lifetime of idle connections."""


@dataclass(frozen=True, slots=True)
class _Spawn:
    """Start one more connection worker (see :mod:`gdbpool.pool._pool_workers`)."""


@dataclass(frozen=True, slots=True)
class _Ready:
    """Ask: an Event set once ``min_size`` connections are open."""


@dataclass(frozen=True, slots=True)
class _Stats:
    """Ask: the counters."""


@dataclass(frozen=True, slots=True)
class _Close:
    """Ask: stop serving; the reply is an Event set once no worker is busy."""

    reason: str = ""  # why, when not the user's close() (e.g. the workers' supervisor gave up)


@dataclass(slots=True)
class _Status:
    """Written by the pool actor only; read by the facade."""

    healthy: bool = True
    closed: bool = False
    last_error: str = ""
    reason: str = ""  # why the pool closed, when it was not close(): for PoolClosed messages

    def closed_error(self, name: str) -> PoolClosed:
        """The PoolClosed to raise or set, saying why when it was not ``close()``."""
        why = f": {self.reason}" if self.reason else ""
        return PoolClosed(f"pool {name!r} is closed{why}")
