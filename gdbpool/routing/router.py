"""The router actor behind DBInteractionPool: the pool table, replica health, routing.

See :mod:`gdbpool.routing.interaction_pool` for the routing rules.  The router never
touches a connection, so it is never blocked by I/O; an interaction it cannot
route fails its own reply instead of crashing the router.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

from gevent.event import AsyncResult

from actors import Actor, handles
from gdbpool.errors import ConfigurationError, NoReplicaAvailable, PoolClosed
from gdbpool.interaction import Interaction
from gdbpool.logging import get_logger
from gdbpool.pool.connection_pool import DBConnectionPool
from gdbpool.routing.read_your_writes import ReadYourWrites
from gdbpool.routing.replicas import ReplicaStatus

__all__ = ["PoolRole"]

PoolRole = Literal["primary", "replica"]


# -- router messages -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _AddPool:
    name: str
    pool: DBConnectionPool
    role: PoolRole


@dataclass(frozen=True, slots=True)
class _ReplicaReport:
    status: ReplicaStatus


@dataclass(frozen=True, slots=True)
class _Route:
    """Ask which pool an interaction with these properties would go to."""

    read_only: bool
    pool: str | None = None
    session: ReadYourWrites | None = None


@dataclass(frozen=True, slots=True)
class _Snapshot:
    pass


@dataclass(frozen=True, slots=True)
class _RouterStats:
    """Ask for the router's counters and replica table (see ``DBInteractionPool.router_stats``)."""


#: Why a read went where it went: ``replica`` (a replica took it), ``lag`` (to the
#: primary: healthy replicas were all past the lag bounds), ``token`` (to the
#: primary: replicas within bounds had not replayed the session's token),
#: ``fallback`` (to the primary: no replica healthy), ``refused``
#: (``replica_fallback="fail"``: NoReplicaAvailable).
DECISIONS = ("replica", "lag", "token", "fallback", "refused")


@dataclass(frozen=True, slots=True)
class _AwaitReplica:
    """Reply once replica ``name`` is reported acceptable (or not, per ``acceptable``)."""

    name: str
    acceptable: bool
    reply: AsyncResult
    min_lsn: int | None = None


@dataclass(slots=True)
class _RouterState:
    pools: dict[str, DBConnectionPool] = field(default_factory=dict)
    roles: dict[str, PoolRole] = field(default_factory=dict)
    replicas: list[str] = field(default_factory=list)
    status: dict[str, ReplicaStatus] = field(default_factory=dict)
    waiters: list[_AwaitReplica] = field(default_factory=list)


class _Router(Actor):
    """Owns the pool table and replica health; routes every interaction.

    ``inline`` (see :class:`~actors.Actor`): routing never waits (a pool's
    ``submit()`` never blocks), so an idle router routes on the caller's
    greenlet.
    """

    inline = True

    def __init__(
        self,
        primary: str,
        replica_fallback: Literal["primary", "fail"],
        max_lag_seconds: float | None,
        max_lag_bytes: int | None,
    ) -> None:
        super().__init__()
        self._primary = primary
        self._fallback = replica_fallback
        self._max_lag_seconds = max_lag_seconds
        self._max_lag_bytes = max_lag_bytes
        self._state = _RouterState()
        self._turn = itertools.count()
        self._decisions = dict.fromkeys(DECISIONS, 0)
        self._probe_errors: dict[str, int] = {}

    def on_dropped(self, message: object) -> None:
        # Unread when the router ended (a stop that timed out): answer it.
        if isinstance(message, Interaction) and not message.reply.ready():
            message.reply.set_exception(PoolClosed("the interaction pool is closed"))

    @handles(Interaction)
    def route_interaction(self, interaction: Interaction) -> None:
        try:
            if interaction.read_only or interaction.pool is not None:
                pool = self._choose(interaction.read_only, interaction.pool, interaction.session)
            else:
                pool = self._state.pools[self._primary]  # a write: no choice to make
            pool.submit(interaction)
        except BaseException as exc:  # the reply carries it; the router must live on
            if not interaction.reply.ready():
                interaction.reply.set_exception(exc)

    @handles(_Route)
    def route(self, msg: _Route) -> DBConnectionPool:
        return self._choose(msg.read_only, msg.pool, msg.session)

    @handles(_AddPool)
    def add_pool(self, msg: _AddPool) -> None:
        state = self._state
        if msg.name in state.pools:
            raise ConfigurationError(f"a pool named {msg.name!r} already exists")
        state.pools[msg.name] = msg.pool
        state.roles[msg.name] = msg.role
        if msg.role == "replica":
            state.replicas.append(msg.name)

    @handles(_ReplicaReport)
    def replica_report(self, msg: _ReplicaReport) -> None:
        previous = self._state.status.get(msg.status.pool)
        self._state.status[msg.status.pool] = msg.status
        if msg.status.error is not None:
            errors = self._probe_errors
            errors[msg.status.pool] = errors.get(msg.status.pool, 0) + 1
        if previous is None or previous.healthy != msg.status.healthy:
            get_logger("gdbpool.router", pool=msg.status.pool).info(
                "replica_healthy" if msg.status.healthy else "replica_unhealthy",
                error=msg.status.error,
            )
        if self._state.waiters:  # a waiter that gave up has its reply set already
            self._state.waiters = [
                w for w in self._state.waiters if not w.reply.ready() and not self._answer(w)
            ]

    @handles(_AwaitReplica)
    def await_replica(self, msg: _AwaitReplica) -> None:
        if msg.name not in self._state.replicas:
            msg.reply.set_exception(ConfigurationError(f"no replica pool named {msg.name!r}"))
        elif not self._answer(msg):
            self._state.waiters.append(msg)

    def _answer(self, waiter: _AwaitReplica) -> bool:
        status = self._state.status.get(waiter.name)
        if status is None:
            return False
        ok = status.acceptable(self._max_lag_seconds, self._max_lag_bytes)
        if ok and waiter.min_lsn is not None:
            ok = status.replay_lsn is not None and status.replay_lsn >= waiter.min_lsn
        if ok != waiter.acceptable:
            return False
        waiter.reply.set(status)
        return True

    @handles(_Snapshot)
    def snapshot(self, _msg: _Snapshot) -> dict[str, Any]:
        state = self._state
        return {
            "primary": self._primary,
            "pools": dict(state.roles),
            "replicas": {name: state.status.get(name) for name in state.replicas},
        }

    @handles(_RouterStats)
    def router_stats(self, _msg: _RouterStats) -> dict[str, Any]:
        state = self._state
        replicas = {}
        for name in state.replicas:
            status = state.status.get(name)
            replicas[name] = {
                "healthy": status is not None and status.healthy,
                "acceptable": status is not None
                and status.acceptable(self._max_lag_seconds, self._max_lag_bytes),
                "lag_seconds": None if status is None else status.lag_seconds,
                "lag_bytes": None if status is None else status.lag_bytes,
                "probe_errors": self._probe_errors.get(name, 0),
            }
        return {
            "primary": self._primary,
            "roles": dict(state.roles),
            "replicas": replicas,
            "decisions": dict(self._decisions),
            "mailbox_depth": self.ref.mailbox_depth,
        }

    def _choose(
        self, read_only: bool, name: str | None, session: ReadYourWrites | None
    ) -> DBConnectionPool:
        pools = self._state.pools
        if name is not None:
            try:
                return pools[name]
            except KeyError:
                raise ConfigurationError(
                    f"unknown pool {name!r}; known pools: {', '.join(sorted(pools))}"
                ) from None
        if not read_only or not self._state.replicas:
            return pools[self._primary]
        candidates = self._acceptable_replicas(session)
        if candidates:
            self._decisions["replica"] += 1
            return pools[candidates[next(self._turn) % len(candidates)]]
        if self._fallback == "fail" and not (session is not None and session.lsn is not None):
            self._decisions["refused"] += 1
            raise NoReplicaAvailable(
                "no replica is healthy and within the lag bound; "
                "reads fall back to the primary only with replica_fallback='primary'"
            )
        self._decisions[self._why_primary(session)] += 1
        return pools[self._primary]

    def _why_primary(self, session: ReadYourWrites | None) -> str:
        """The reason a read found no replica (off the replica path: counted for metrics)."""
        bounds = (self._max_lag_seconds, self._max_lag_bytes)
        healthy = [
            status
            for name in self._state.replicas
            if (status := self._state.status.get(name)) is not None
            and status.healthy
            and self._state.pools[name].healthy
        ]
        if not healthy:
            return "fallback"
        if (
            session is not None
            and session.lsn is not None
            and any(s.acceptable(*bounds) for s in healthy)
        ):
            return "token"
        return "lag"

    def _acceptable_replicas(self, session: ReadYourWrites | None) -> list[str]:
        token = session.lsn if session is not None else None
        out = []
        for name in self._state.replicas:
            status = self._state.status.get(name)
            if status is None or not status.acceptable(self._max_lag_seconds, self._max_lag_bytes):
                continue
            if not self._state.pools[name].healthy:
                continue
            if token is not None and (status.replay_lsn is None or status.replay_lsn < token):
                continue
            out.append(name)
        return out
