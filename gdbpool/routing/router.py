"""The router actor behind DBInteractionPool: the pool table, the topology, routing.

See :mod:`gdbpool.routing.interaction_pool` for the routing rules and
docs/design/router.md ("Following the primary") for how the primary is
followed.  The router never touches a connection, so it is never blocked by
I/O; an interaction it cannot route fails its own reply instead of crashing
the router.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import gevent
from gevent.event import AsyncResult

from actors import Actor, handles
from gdbpool.errors import (
    ConfigurationError,
    NoPrimaryAvailable,
    NoReplicaAvailable,
    PoolClosed,
    PoolTimeout,
)
from gdbpool.interaction import Interaction
from gdbpool.logging import get_logger
from gdbpool.pool.connection_pool import DBConnectionPool
from gdbpool.routing.node_probe import NodeStatus
from gdbpool.routing.read_your_writes import ReadYourWrites
from gdbpool.routing.replicas import ReplicaStatus
from gdbpool.routing.topology import (
    NodeDown,
    NodeRole,
    NodeState,
    NodeUp,
    PrimaryChanged,
    TopologyWatch,
)

__all__ = ["PoolRole"]

PoolRole = Literal["primary", "replica"]


# -- router messages -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _AddPool:
    name: str
    pool: DBConnectionPool
    role: PoolRole


@dataclass(frozen=True, slots=True)
class _NodeReport:
    status: NodeStatus


@dataclass(frozen=True, slots=True)
class _Route:
    """Ask which pool an interaction with these properties would go to."""

    read_only: bool
    pool: str | None = None
    session: ReadYourWrites | None = None


@dataclass(frozen=True, slots=True)
class _ToPrimary:
    """Submit ``interaction`` to the current primary's pool (a probe's LSN query)."""

    interaction: Interaction


@dataclass(frozen=True, slots=True)
class _Suspect:
    """An interaction on pool ``pool`` failed with 25006 or a lost connection."""

    pool: str
    reason: str


@dataclass(frozen=True, slots=True)
class _Pause:
    paused: bool


@dataclass(frozen=True, slots=True)
class _ExpireHeld:
    pass


@dataclass(frozen=True, slots=True)
class _Watch:
    watch: TopologyWatch


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
    #: The replication group: the first pool and every role="replica" one, in order.
    group: list[str] = field(default_factory=list)
    #: Members of the group that are not the primary (read candidates).
    replicas: list[str] = field(default_factory=list)
    status: dict[str, ReplicaStatus] = field(default_factory=dict)
    nodes: dict[str, NodeStatus] = field(default_factory=dict)
    waiters: list[_AwaitReplica] = field(default_factory=list)
    #: Interactions held while paused or without a primary: (interaction, deadline).
    held: list[tuple[Interaction, float]] = field(default_factory=list)
    watches: list[TopologyWatch] = field(default_factory=list)


class _Router(Actor):
    """Owns the pool table, the topology and replica health; routes every interaction.

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
        failover_timeout: float = 30.0,
        probe_all: Callable[[], None] | None = None,
        on_primary_changed: Callable[[PrimaryChanged], None] | None = None,
    ) -> None:
        super().__init__()
        self._primary = primary
        self._fallback = replica_fallback
        self._max_lag_seconds = max_lag_seconds
        self._max_lag_bytes = max_lag_bytes
        self._failover_timeout = failover_timeout
        self._probe_all = probe_all
        self._on_primary_changed = on_primary_changed
        self._state = _RouterState()
        self._turn = itertools.count()
        self._log = get_logger("gdbpool.router", pool=primary)
        #: A primary takes writes now (False: none, or more than one candidate).
        self._has_primary = True
        #: time.time() of a write failure on the primary not yet cleared by a later probe.
        self._suspect_since: float | None = None
        self._paused = False
        #: Any reason to hold interactions (checked once per interaction: cheap).
        self._hold = False
        self._why_none = ""
        self._split: frozenset[str] = frozenset()
        self._timer: gevent.Greenlet[Any, Any] | None = None
        self._decisions = dict.fromkeys(DECISIONS, 0)
        self._probe_errors: dict[str, int] = {}

    def on_dropped(self, message: object) -> None:
        # Unread when the router ended (a stop that timed out): answer it.
        if isinstance(message, Interaction) and not message.reply.ready():
            message.reply.set_exception(PoolClosed("the interaction pool is closed"))

    def on_stop(self) -> None:
        if self._timer is not None:
            self._timer.kill(block=False)
        for interaction, _deadline in self._state.held:
            if not interaction.reply.ready():
                interaction.reply.set_exception(PoolClosed("the interaction pool is closed"))
        self._state.held.clear()
        for watch in self._state.watches:
            watch.close()

    # -- routing ------------------------------------------------------------------

    @handles(Interaction)
    def route_interaction(self, interaction: Interaction) -> None:
        try:
            if self._hold and self._should_hold(interaction):
                self._hold_back(interaction)
            elif interaction.read_only or interaction.pool is not None:
                self._choose(interaction.read_only, interaction.pool, interaction.session).submit(
                    interaction
                )
            else:
                self._state.pools[self._primary].submit(interaction)  # a write: no choice
        except BaseException as exc:  # the reply carries it; the router must live on
            if not interaction.reply.ready():
                interaction.reply.set_exception(exc)

    @handles(_Route)
    def route(self, msg: _Route) -> DBConnectionPool:
        if self._hold and msg.pool is None and (self._paused or not self._readable(msg)):
            raise NoPrimaryAvailable(self._no_primary_reason())
        return self._choose(msg.read_only, msg.pool, msg.session)

    @handles(_ToPrimary)
    def to_primary(self, msg: _ToPrimary) -> None:
        if not self._has_primary:
            msg.interaction.reply.set_exception(NoPrimaryAvailable(self._no_primary_reason()))
            return
        self._state.pools[self._primary].submit(msg.interaction)

    def _should_hold(self, interaction: Interaction) -> bool:
        if interaction.pool is not None:
            return False  # aimed at a pool by name: the caller chose
        if self._paused:
            return True
        if not interaction.read_only:
            return True
        return not self._readable(_Route(True, None, interaction.session))

    def _readable(self, msg: _Route) -> bool:
        """Could this read go to a replica now (or fail at once with NoReplicaAvailable)?"""
        if not msg.read_only:
            return False
        if self._acceptable_replicas(msg.session):
            return True
        return self._fallback == "fail" and not (msg.session is not None and msg.session.lsn)

    def _hold_back(self, interaction: Interaction) -> None:
        # Held at most failover_timeout, and never past the interaction's own
        # deadline (set when run() made it: a retried interaction has used some).
        deadline = time.monotonic() + self._failover_timeout
        if interaction.deadline is not None:
            deadline = min(deadline, interaction.deadline)
        self._state.held.append((interaction, deadline))
        self._arm()

    def _arm(self) -> None:
        held = self._state.held
        if not held or (self._timer is not None and not self._timer.dead):
            return
        delay = max(0.0, min(d for _, d in held) - time.monotonic())
        self._timer = gevent.spawn_later(delay, self._tell_expire)

    def _tell_expire(self) -> None:
        self._timer = None
        with contextlib.suppress(Exception):  # the router stopped: on_stop answered them
            self.ref.tell(_ExpireHeld())

    @handles(_ExpireHeld)
    def expire_held(self, _msg: _ExpireHeld) -> None:
        now = time.monotonic()
        keep = []
        for interaction, deadline in self._state.held:
            if interaction.reply.ready():
                continue
            if deadline <= now:
                if self._has_primary and self._suspect_since is None:
                    error: Exception = PoolTimeout(
                        f"held by pause() longer than its wait of {self._wait_of(interaction)} s"
                    )
                else:
                    error = NoPrimaryAvailable(
                        f"{self._no_primary_reason()}; waited {self._wait_of(interaction)} s"
                    )
                interaction.reply.set_exception(error)
            else:
                keep.append((interaction, deadline))
        self._state.held = keep
        self._arm()

    def _wait_of(self, interaction: Interaction) -> float:
        wait = self._failover_timeout
        return wait if interaction.timeout is None else min(wait, interaction.timeout)

    def _release(self) -> None:
        held, self._state.held = self._state.held, []
        for interaction, _deadline in held:
            if not interaction.reply.ready():
                self.route_interaction(interaction)

    def _update_hold(self) -> None:
        self._hold = self._paused or not self._has_primary or self._suspect_since is not None
        if not self._hold and self._state.held:
            self._release()

    # -- pause / resume -----------------------------------------------------------------

    @handles(_Pause)
    def pause(self, msg: _Pause) -> None:
        self._paused = msg.paused
        self._log.info("routing_paused" if msg.paused else "routing_resumed")
        self._update_hold()

    # -- the pool table and the topology ---------------------------------------------

    @handles(_AddPool)
    def add_pool(self, msg: _AddPool) -> None:
        state = self._state
        if msg.name in state.pools:
            raise ConfigurationError(f"a pool named {msg.name!r} already exists")
        state.pools[msg.name] = msg.pool
        state.roles[msg.name] = msg.role
        if msg.name == self._primary or msg.role == "replica":
            state.group.append(msg.name)
        if msg.role == "replica" and msg.name != self._primary:
            state.replicas.append(msg.name)

    @handles(_Watch)
    def watch(self, msg: _Watch) -> None:
        self._state.watches = [w for w in self._state.watches if not w.closed]
        self._state.watches.append(msg.watch)

    def _publish(self, event: PrimaryChanged | NodeUp | NodeDown) -> None:
        for watch in self._state.watches:
            watch.put(event)

    @handles(_Suspect)
    def suspect(self, msg: _Suspect) -> None:
        if msg.pool != self._primary or not self._has_primary:
            return
        if self._suspect_since is None:
            self._suspect_since = time.time()
            self._log.warning("primary_suspect", reason=msg.reason)
            self._update_hold()  # hold writes until a probe has answered
        if self._probe_all is not None:
            self._probe_all()

    @handles(_NodeReport)
    def node_report(self, msg: _NodeReport) -> None:
        status = msg.status
        state = self._state
        name = status.pool
        previous = state.nodes.get(name)
        state.nodes[name] = status
        if status.error is not None:
            self._probe_errors[name] = self._probe_errors.get(name, 0) + 1
        if name in state.group:
            self._replica_status(status)
        if previous is None or previous.reachable != status.reachable:
            if status.reachable:
                self._publish(NodeUp(name, self._role(name), time.time()))
            elif previous is not None:
                self._log.warning("node_down", node=name, error=status.error)
                self._publish(NodeDown(name, time.time(), status.error or "unreachable"))
        self._evaluate(status)
        if state.waiters:  # a waiter that gave up has its reply set already
            state.waiters = [
                w for w in state.waiters if not w.reply.ready() and not self._answer(w)
            ]

    def _replica_status(self, node: NodeStatus) -> None:
        if node.reachable and node.in_recovery:
            status = ReplicaStatus(
                node.pool,
                True,
                replay_lsn=node.replay_lsn,
                lag_seconds=node.lag_seconds,
                lag_bytes=node.lag_bytes,
                checked_at=node.checked_at,
            )
        elif node.reachable:
            status = ReplicaStatus(
                node.pool,
                False,
                checked_at=node.checked_at,
                error="not in recovery: this server is not a replica",
            )
        else:
            status = ReplicaStatus(node.pool, False, checked_at=node.checked_at, error=node.error)
        previous = self._state.status.get(node.pool)
        self._state.status[node.pool] = status
        if node.pool != self._primary and (previous is None or previous.healthy != status.healthy):
            self._log.info(
                "replica_healthy" if status.healthy else "replica_unhealthy",
                node=node.pool,
                error=status.error,
            )

    def _evaluate(self, report: NodeStatus) -> None:
        """Decide who takes writes after ``report`` (docs/design/router.md)."""
        state = self._state
        current = state.nodes.get(self._primary)
        current_ok = current is None or current.writable
        if (
            self._suspect_since is not None
            and report.pool == self._primary
            and report.checked_at >= self._suspect_since
        ):
            self._suspect_since = None  # a probe begun after the failure answered
            if current_ok:
                self._log.info("primary_confirmed", node=self._primary)
        others = [
            n
            for n in state.group
            if n != self._primary and (s := state.nodes.get(n)) is not None and s.writable
        ]
        split = frozenset(others)
        if current_ok and self._suspect_since is None:
            if split and split != self._split:
                self._log.error(
                    "split_brain",
                    primary=self._primary,
                    refused=sorted(split),
                    detail="writes stay on the current primary; the others get none",
                )
            self._split = split
            if not self._has_primary:
                self._has_primary = True
                self._primary_changed(None, self._primary, "the primary is writable again")
            self._update_hold()
            return
        if current_ok:
            return  # suspect: wait for the probe begun after the failure
        # The current primary is down or read-only.
        what = "down" if current is not None and not current.reachable else "read-only"
        if len(others) == 1:
            old, new = self._primary, others[0]
            self._switch(old, new, f"primary changed: {old} is {what}, {new} is writable")
            return
        if self._has_primary:
            self._has_primary = False
            if others:
                self._why_none = (
                    f"the primary {self._primary} is {what} and {len(others)} nodes are writable "
                    f"({', '.join(others)}): split brain, writing to none"
                )
                self._log.error("split_brain", refused=others, detail=self._why_none)
            else:
                self._why_none = f"the primary {self._primary} is {what} and no node is writable"
            self._primary_changed(self._primary, None, self._why_none)
        self._suspect_since = None
        self._update_hold()
        # What waits in the lost primary's queue waits here instead (bounded by
        # failover_timeout, then NoPrimaryAvailable); reads may go to replicas.
        for interaction in self._state.pools[self._primary]._withdraw_waiting():
            self.route_interaction(interaction)

    def _switch(self, old: str, new: str, reason: str) -> None:
        state = self._state
        self._primary = new
        self._has_primary = True
        self._suspect_since = None
        self._split = frozenset()
        if new in state.replicas:
            state.replicas.remove(new)
        if old in state.group and old not in state.replicas:
            state.replicas.append(old)  # reads once it is back as a standby
        state.status.pop(new, None)
        old_node = state.nodes.get(old)
        if old_node is not None:
            self._replica_status(old_node)
        self._primary_changed(old, new, reason)
        # Writes that waited in the old primary's queue never started: re-route them.
        moved = state.pools[old]._withdraw_waiting()
        self._update_hold()
        for interaction in moved:
            self.route_interaction(interaction)

    def _primary_changed(self, old: str | None, new: str | None, reason: str) -> None:
        event = PrimaryChanged(old, new, time.time(), reason)
        self._log.warning("primary_changed", old=old, new=new, reason=reason)
        self._publish(event)
        if new is not None and old is not None and self._on_primary_changed is not None:
            try:
                self._on_primary_changed(event)
            except Exception as exc:
                self._log.error("primary_change_hook_failed", error=str(exc))

    def _no_primary_reason(self) -> str:
        if self._paused:
            return "the interaction pool is paused"
        if not self._has_primary:
            return f"no primary: {self._why_none}"
        return f"the primary {self._primary} is being probed after a failed write"

    def _role(self, name: str) -> NodeRole:
        node = self._state.nodes.get(name)
        if name == self._primary and self._has_primary and (node is None or node.writable):
            return "primary"
        if node is None:
            return "unknown"
        if not node.reachable:
            return "down"
        if node.in_recovery:
            return "replica"
        return "unknown"  # writable or read-only, but not the primary

    # -- replica waits and snapshots ---------------------------------------------------

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
            "primary": self._primary if self._has_primary else None,
            "pools": dict(state.roles),
            "replicas": {name: state.status.get(name) for name in state.replicas},
            "topology": {
                name: NodeState(name, self._role(name), state.nodes.get(name))
                for name in state.pools
            },
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
