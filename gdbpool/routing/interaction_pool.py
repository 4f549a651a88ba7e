"""DBInteractionPool: the router actor in front of a primary pool and its replicas.

``run()`` builds an :class:`~gdbpool.interaction.Interaction` carrying a reply
``AsyncResult`` and tells the router actor; the router picks a pool and submits
the interaction to it; a connection worker of that pool runs it and sets the
reply.  The router never touches a connection, so it is never blocked by I/O.

Routing, in order:

1. ``pool=NAME``: that pool (an unknown name fails the reply with
   :class:`ConfigurationError`).
2. A write (the default): the primary.
3. ``read_only=True``: a replica whose last probe (see
   :mod:`gdbpool.routing.replicas`) found it healthy, within ``max_replica_lag``
   seconds and ``max_replica_lag_bytes`` bytes and, when the interaction
   carries a :class:`~gdbpool.routing.read_your_writes.ReadYourWrites` token, replayed
   past it.  Replicas take turns (round robin over those acceptable now):
   cheap, fair, and with equal pools "least busy" gives the same spread.
4. No acceptable replica: the primary, unless ``replica_fallback="fail"``
   (then :class:`NoReplicaAvailable`).  A read whose token no replica has
   reached always goes to the primary: that is correctness, not fallback.

"The primary" is whichever node takes writes now: every node is probed for
its role (:mod:`gdbpool.routing.node_probe`) and the router follows a change
of primary, holding writes while there is none, and during :meth:`pause`
(docs/design/router.md, "Following the primary").

Cost of one ``run()``, in greenlet switches measured with ``greenlet.settrace``:
on an idle pool 6 from ``run()`` to the caller holding the result: the router
and the pool actor are ``inline`` actors (see :class:`~actors.Actor`), so an
idle router routes and an idle pool actor hands the interaction to a worker on
the caller's greenlet; then caller → hub → worker (2), the worker's wait for
the server (2, which any cooperative query has), worker → hub → caller with
the reply (2).  Under load (16 connections, 64 callers) 4.0 per interaction:
``submit()`` appends to the pool's wait queue while requests wait, and a worker
takes the next waiting interaction without a hop (see
:class:`~gdbpool.pool.worker.ConnectionWorker`), so what is left is the
caller's 2 and the worker's 2 around the server's answer.  A write goes to the
primary without calling the routing function.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import gevent
from gevent.event import AsyncResult, Event
from gevent.lock import Semaphore
from psycopg2 import sql

from actors import ActorRef
from gdbpool.errors import ConfigurationError, PoolClosed
from gdbpool.interaction import Interaction
from gdbpool.logging import configure_logging, get_logger, redact
from gdbpool.notify.hub import NotificationHub
from gdbpool.notify.notification import check_channel, check_payload
from gdbpool.notify.subscription import DEFAULT_MAXSIZE, DEFAULT_OVERFLOW, Overflow, Subscription
from gdbpool.pool.connection_pool import DBConnectionPool
from gdbpool.routing.node_probe import NodeProbe, NodeStatus
from gdbpool.routing.read_your_writes import ReadYourWrites
from gdbpool.routing.replicas import ReplicaStatus
from gdbpool.routing.router import (
    PoolRole,
    _AddPool,
    _AwaitReplica,
    _NodeReport,
    _Pause,
    _Route,
    _Router,
    _RouterStats,
    _Snapshot,
    _Suspect,
    _ToPrimary,
    _Watch,
)
from gdbpool.routing.topology import NodeState, PrimaryChanged, TopologyWatch
from gdbpool.routing.transaction import Transaction

__all__ = ["DBInteractionPool", "PoolRole"]

#: Seconds between two probes of a replica.
DEFAULT_HEALTH_INTERVAL = 1.0
#: Seconds a probe may take before the replica counts as unhealthy.
DEFAULT_PROBE_TIMEOUT = 2.0
#: Seconds writes wait for a primary (docs/design/router.md).
DEFAULT_FAILOVER_TIMEOUT = 30.0


# -- the public facade ---------------------------------------------------------------


class DBInteractionPool:
    """Runs interactions (SQL strings or callables) on a primary and its read replicas.

    ``DBInteractionPool(dsn, pool_size=10, pool_name="default", do_log=False)``
    opens and supervises the primary pool named ``pool_name``; more pools come
    from :meth:`add_pool`.  Every keyword in ``pool_options`` goes to each
    :class:`~gdbpool.DBConnectionPool` it creates (``timeout``, ``max_waiting``,
    ``min_size``...).

    Replica routing knobs: ``max_replica_lag`` (seconds, default None: no
    bound), ``max_replica_lag_bytes`` (default None), ``replica_fallback``
    (``"primary"``, the default, or ``"fail"``), ``health_interval`` (seconds
    between probes of each node, default 1.0) and ``probe_timeout`` (default
    2.0).  ``failover_timeout`` (default 30 s): how long writes wait for a
    primary before :class:`~gdbpool.NoPrimaryAvailable` (see
    docs/design/router.md, "Following the primary").

    ``ipool(...)`` is ``ipool.run(...)``.  :meth:`close` stops every pool, probe
    and listener; it is also the context-manager exit.
    """

    def __init__(
        self,
        dsn: str,
        pool_size: int = 10,
        pool_name: str = "default",
        do_log: bool = False,
        *,
        max_replica_lag: float | None = None,
        max_replica_lag_bytes: int | None = None,
        replica_fallback: Literal["primary", "fail"] = "primary",
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
        failover_timeout: float = DEFAULT_FAILOVER_TIMEOUT,
        **pool_options: Any,
    ) -> None:
        for label, value in (
            ("health_interval", health_interval),
            ("probe_timeout", probe_timeout),
            ("failover_timeout", failover_timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{label} must be a number of seconds, not {value!r}")
            if not value > 0:
                raise ConfigurationError(f"{label} must be > 0 seconds, not {value}")
        if replica_fallback not in ("primary", "fail"):
            raise ConfigurationError(
                f"replica_fallback must be 'primary' or 'fail', not {replica_fallback!r}"
            )
        if do_log:
            configure_logging()
        self._log = get_logger("gdbpool.interaction_pool", pool=pool_name)
        self._dsn = dsn
        self._pool_options = pool_options
        self._primary_name = pool_name
        self._health_interval = health_interval
        self._probe_timeout = probe_timeout
        self._pools: dict[str, DBConnectionPool] = {}
        self._dsns: dict[str, str] = {}
        self._probes: list[NodeProbe] = []
        self._hub: NotificationHub | None = None
        self._hub_lock = Semaphore()
        self._closed = False
        self._router: ActorRef = _Router.start(
            pool_name,
            replica_fallback,
            max_replica_lag,
            max_replica_lag_bytes,
            failover_timeout,
            self._probe_all_now,
            self._follow_primary,
            name=f"router:{pool_name}",
        )
        try:
            self.add_pool(pool_name, dsn, pool_size, role="primary")
        except BaseException:
            self._router.stop()
            raise

    # -- pools ------------------------------------------------------------------------

    def add_pool(
        self,
        name: str,
        dsn: str,
        pool_size: int = 10,
        role: PoolRole = "replica",
        **pool_options: Any,
    ) -> DBConnectionPool:
        """Open a named pool and route to it; ``role`` is ``"replica"`` or ``"primary"``.

        Only one primary exists (the one created with the interaction pool); a
        pool added with ``role="primary"`` later is reachable with ``pool=name``
        only.  A duplicate name raises :class:`ConfigurationError`.
        """
        self._check_open()
        if role not in ("primary", "replica"):
            raise ConfigurationError(f"role must be 'primary' or 'replica', not {role!r}")
        if name in self._pools:
            raise ConfigurationError(f"a pool named {name!r} already exists")
        options = {**self._pool_options, **pool_options}
        pool = DBConnectionPool(
            dsn,
            pool_size,
            name=name,
            _on_failure=lambda reason: self._suspect(name, reason),
            **options,
        )
        try:
            self._router.ask(_AddPool(name, pool, role)).get()
        except BaseException:
            pool.close()
            raise
        self._pools[name] = pool
        self._dsns[name] = dsn
        probe = NodeProbe(
            name,
            dsn,
            self._submit_to_primary,
            self._report_node,
            self._health_interval,
            self._probe_timeout,
        )
        self._probes.append(probe)
        # The first probe answers before add_pool() returns (bounded by
        # probe_timeout), so the next read already knows this node.
        first = probe.probe_once()
        self._router.ask(_NodeReport(first)).get(timeout=10)
        probe.start()
        self._log.info("pool_added", name=name, role=role, dsn=redact(dsn))
        return pool

    def _report_node(self, status: NodeStatus) -> None:
        self._router.tell(_NodeReport(status))

    def _submit_to_primary(self, interaction: Interaction) -> None:
        self._router.tell(_ToPrimary(interaction))

    def _suspect(self, name: str, reason: str) -> None:
        """A pool's worker saw 25006 or a lost connection (a worker's greenlet: never blocks)."""
        if not self._closed:
            self._router.tell(_Suspect(name, reason))

    def _probe_all_now(self) -> None:
        for probe in self._probes:
            probe.probe_now()

    def _follow_primary(self, event: PrimaryChanged) -> None:
        """The router moved writes to ``event.new``: the hub follows (never blocks)."""
        hub = self._hub
        if hub is not None and event.new is not None:
            hub._follow(self._dsns[event.new], event.reason)

    # -- the topology -----------------------------------------------------------------

    @property
    def primary(self) -> str | None:
        """The name of the pool that takes writes now (None while there is none)."""
        snapshot: dict[str, Any] = self._router.ask(_Snapshot()).get(timeout=5)
        primary: str | None = snapshot["primary"]
        return primary

    def topology(self) -> dict[str, NodeState]:
        """Each pool's role and last probe (roles: :data:`~gdbpool.NodeRole`)."""
        snapshot: dict[str, Any] = self._router.ask(_Snapshot()).get(timeout=5)
        return dict(snapshot["topology"])

    def watch_topology(self) -> TopologyWatch:
        """Events from now on: :class:`PrimaryChanged`, :class:`NodeUp`, :class:`NodeDown`.

        Iterate the returned watch (it ends when closed, or with the
        interaction pool) or call its ``get(timeout)``; ``close()`` it when done.
        """
        self._check_open()
        watch = TopologyWatch()
        self._router.ask(_Watch(watch)).get(timeout=5)
        return watch

    def pause(self, timeout: float = 30.0) -> bool:
        """Hold new interactions; return once those in flight have finished.

        For a planned switchover (docs/design/router.md): held interactions
        keep their deadlines (``failover_timeout``, or their own ``timeout``
        when shorter).  Returns False when some were still running (or
        connections still lent) after ``timeout`` seconds; routing stays paused
        either way until :meth:`resume`.
        """
        self._check_open()
        self._router.ask(_Pause(True)).get(timeout=5)
        deadline = time.monotonic() + timeout
        while True:
            if all(pool._busy() == (0, 0) for pool in self._pools.values()):
                return True
            if time.monotonic() >= deadline:
                return False
            gevent.sleep(0.005)

    def resume(self) -> None:
        """Probe every node now, then release the held interactions to the current primary."""
        self._check_open()
        jobs = [gevent.spawn(probe.probe_and_report) for probe in self._probes]
        gevent.joinall(jobs, timeout=self._probe_timeout + 1)
        for job in jobs:
            job.kill(block=False)
        self._router.ask(_Pause(False)).get(timeout=5)

    def pool(self, name: str | None = None) -> DBConnectionPool:
        """The named pool (default: the current primary's), e.g. for ``get()``/``put()``."""
        name = (self.primary or self._primary_name) if name is None else name
        try:
            return self._pools[name]
        except KeyError:
            raise ConfigurationError(f"unknown pool {name!r}") from None

    def replica_status(self) -> dict[str, ReplicaStatus | None]:
        """The last probe result of every replica (None before the first probe).

        After a change of primary the old primary is listed too (it serves
        reads once it is back as a standby).
        """
        snapshot: dict[str, Any] = self._router.ask(_Snapshot()).get(timeout=5)
        return dict(snapshot["replicas"])

    def wait_for_replica(
        self,
        name: str,
        *,
        acceptable: bool = True,
        session: ReadYourWrites | None = None,
        timeout: float = 10.0,
    ) -> ReplicaStatus:
        """Block until a probe reports replica ``name`` acceptable (or not acceptable).

        "Acceptable" is what routing uses: healthy and within the lag bounds,
        and, with ``session``, replayed past that token (so the session's
        reads can go to it).  Raises ``gevent.Timeout`` after ``timeout``
        seconds.
        """
        reply: AsyncResult = AsyncResult()
        min_lsn = session.lsn if session is not None else None
        self._router.tell(_AwaitReplica(name, acceptable, reply, min_lsn))
        try:
            status: ReplicaStatus = reply.get(timeout=timeout)
        except gevent.Timeout as exc:
            reply.set_exception(exc)  # the router forgets this waiter at its next report
            raise
        return status

    # -- interactions -------------------------------------------------------------------

    def run(
        self,
        interaction: str | sql.Composable | Callable[..., Any],
        args: Any = None,
        *,
        read_only: bool | None = None,
        pool: str | None = None,
        timeout: float | None = None,
        isolation_level: str | None = None,
        cursor_factory: Any = None,
        dry_run: bool = False,
        dec2float: bool = False,
        session: ReadYourWrites | None = None,
        interaction_args: Any = None,
        is_write: bool | None = None,
        get_result: bool = True,
    ) -> AsyncResult:
        """Run ``interaction`` and return an ``AsyncResult`` for its result.

        ``interaction`` is an SQL string (``args`` go to the driver, never into
        the string) or a callable ``f(conn, *args)`` / ``f(conn, cursor, *args)``.
        The result of a string is its rows, or its row count when it returns
        none; a callable's is its return value.  A write commits on success and
        rolls back on error; ``read_only=True`` runs in a read-only transaction,
        on a replica when one is acceptable.  Errors arrive on the result as
        :class:`~gdbpool.DBInteractionException` (``timeout`` expiry as
        :class:`~gdbpool.InteractionTimeout`, after the statement was cancelled
        on the server).

        Original keywords: ``interaction_args`` is ``args``, ``is_write=False``
        is ``read_only=True``; ``get_result`` is accepted and ignored (the
        result is always available on the returned ``AsyncResult``).
        """
        if interaction_args is not None:
            if args is not None:
                raise ConfigurationError("give args or interaction_args, not both")
            args = interaction_args
        if read_only is None:
            read_only = is_write is False
        elif is_write is not None and is_write == read_only:
            raise ConfigurationError("read_only and is_write contradict each other")
        # Interaction() validates the rest (work, isolation_level, timeout, dry_run).
        msg = Interaction(
            interaction, args, read_only, isolation_level, timeout, cursor_factory, dry_run,
            dec2float, pool, session,
        )  # fmt: skip
        if self._closed:
            raise PoolClosed("the interaction pool is closed")
        self._router.tell(msg)
        return msg.reply

    __call__ = run

    def run_many(
        self,
        interactions: Iterable[str | sql.Composable | Callable[..., Any] | tuple[Any, ...]],
        *,
        timeout: float | None = None,
        return_exceptions: bool = False,
        **options: Any,
    ) -> list[Any]:
        """Run several interactions in parallel; return their results in order.

        Each item is an SQL string or callable, or a tuple ``(interaction, args)``.
        ``options`` apply to every item (``read_only=``, ``pool=``...).  The
        first failure is raised after all have finished, unless
        ``return_exceptions=True`` puts exceptions in the list instead.
        ``timeout`` bounds the whole wait (``TimeoutError`` when it runs out;
        each interaction also gets it as its own ``timeout``).
        """
        results = []
        for item in interactions:
            if isinstance(item, tuple):
                work, args = item
                results.append(self.run(work, args, timeout=timeout, **options))
            else:
                results.append(self.run(item, timeout=timeout, **options))
        out: list[Any] = []
        first_error: BaseException | None = None
        deadline = None if timeout is None else time.monotonic() + timeout
        for reply in results:
            reply.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if not reply.ready():
                raise TimeoutError(f"run_many: not all interactions finished in {timeout}s")
            if reply.successful():
                out.append(reply.value)
            else:
                out.append(reply.exception)
                first_error = first_error or reply.exception
        if first_error is not None and not return_exceptions:
            raise first_error
        return out

    @contextlib.contextmanager
    def transaction(
        self,
        read_only: bool = False,
        isolation_level: str | None = None,
        *,
        pool: str | None = None,
        timeout: float | None = None,
        session: ReadYourWrites | None = None,
    ) -> Iterator[Transaction]:
        """Hold one connection for several ``tx.run(...)`` calls (the original ``partial_txn``).

        Commits on a clean exit, rolls back when the block raises; the
        connection goes back to its pool either way.  A read-only transaction
        is routed like a read-only interaction (``session`` included); a
        write transaction given a ``session`` advances it after its commit.
        ``timeout`` bounds the wait for a connection.
        """
        self._check_open()
        tx = Transaction(
            None,
            read_only=read_only,
            isolation_level=isolation_level,
            timeout=timeout,
            session=session,
        )  # validates before checkout
        tx.pool = self._router.ask(_Route(read_only=read_only, pool=pool, session=session)).get(
            timeout=10
        )
        with tx:
            yield tx

    # -- LISTEN / NOTIFY -------------------------------------------------------------

    def subscribe(
        self, channel: str, maxsize: int = DEFAULT_MAXSIZE, overflow: Overflow = DEFAULT_OVERFLOW
    ) -> Subscription:
        """Subscribe to ``channel`` on the primary; see :meth:`NotificationHub.subscribe`.

        The first call opens the interaction pool's :class:`NotificationHub`
        (one LISTEN connection to the primary, shared by every channel).
        """
        return self.notification_hub().subscribe(channel, maxsize, overflow)

    def listen_on(self, result_queue: Any, channel_name: str, cancel_event: Event) -> None:
        """The original API: deliver ``channel_name`` into ``result_queue`` until ``cancel_event``.

        Blocks the calling greenlet (run it with ``gevent.spawn``); see
        :meth:`NotificationHub.listen_on`.
        """
        self.notification_hub().listen_on(result_queue, channel_name, cancel_event)

    def notify(self, channel: str, payload: str = "") -> AsyncResult:
        """``NOTIFY channel, payload`` on the primary, as ``SELECT pg_notify(%s, %s)``.

        A bad channel name or a payload over 7999 UTF-8 bytes raises
        :class:`~gdbpool.NotificationError` here, before any round trip.  The
        notification is an interaction like any other: the returned
        ``AsyncResult`` is set once it has been committed.
        """
        args = (check_channel(channel), check_payload(payload))
        return self.run("SELECT pg_notify(%s, %s)", args)

    def notification_hub(self) -> NotificationHub:
        """The interaction pool's :class:`NotificationHub`, opened on first use."""
        self._check_open()
        with self._hub_lock:
            if self._hub is None:
                dsn = self._dsns.get(self.primary or self._primary_name, self._dsn)
                self._hub = NotificationHub(
                    dsn, application_name=f"gdbpool-listener:{self._primary_name}"
                )
        return self._hub

    @property
    def hub(self) -> NotificationHub | None:
        """The hub once :meth:`notification_hub` opened it, else None (never opens one)."""
        return self._hub

    def session(self) -> ReadYourWrites:
        """A fresh read-your-writes token to pass as ``session=``."""
        return ReadYourWrites()

    # -- lifecycle ----------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, int]]:
        """``stats()`` of every pool, by name."""
        return {name: pool.stats() for name, pool in self._pools.items()}

    def router_stats(self) -> dict[str, Any]:
        """The router's view, for :mod:`gdbpool.metrics`.

        ``primary`` (its pool's name), ``roles`` (pool name -> ``"primary"`` /
        ``"replica"``), ``replicas`` (name -> ``healthy``, ``acceptable``,
        ``lag_seconds``, ``lag_bytes`` (None until probed), ``probe_errors``),
        ``decisions`` (reads routed, by reason: see
        :data:`gdbpool.routing.router.DECISIONS`) and the router's ``mailbox_depth``.
        """
        self._check_open()
        result: dict[str, Any] = self._router.ask(_RouterStats(), timeout=5.0).get()
        return result

    def close(self, timeout: float = 5.0) -> None:
        """Stop every probe, listener and pool, then the router. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for probe in self._probes:
            probe.stop()
        if self._hub is not None:
            self._hub.close()
        self._router.stop(timeout)
        for pool in self._pools.values():
            pool.close()
        self._log.info("interaction_pool_closed")

    def __enter__(self) -> DBInteractionPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<DBInteractionPool {self._primary_name!r} {state} pools={sorted(self._pools)}>"

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosed("the interaction pool is closed")
