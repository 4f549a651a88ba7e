"""Following the primary against real servers (issue #11's eight scenarios).

Each test has its own primary + streaming replica (``make_pair``) and promotes,
stops or demotes them for real.  Probes run every 0.1 s with a 0.5 s timeout
unless a test needs them slow (to prove that a failed write alone triggers one).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import gevent
import psycopg2
import pytest
from _pg_pair import PgPair
from _waits import wait_for

from gdbpool import (
    DBInteractionException,
    DBInteractionPool,
    EmbeddedPostgres,
    NoPrimaryAvailable,
    Notification,
    PrimaryChanged,
    Reconnected,
)

INTERVAL = 0.1
PROBE_TIMEOUT = 0.5
CONNECT = 1.0  # a connection to the new primary, generously

_WRITE = "INSERT INTO acked (id) VALUES (%s) RETURNING inet_server_port()"
_READ = "SELECT inet_server_port()"


def _open(pair: PgPair, **kwargs: Any) -> DBInteractionPool:
    options: dict[str, Any] = {
        "health_interval": INTERVAL,
        "probe_timeout": PROBE_TIMEOUT,
        "failover_timeout": 5.0,
        "timeout": 5.0,
        "connect_timeout": 1.0,
        "reconnect_max": 0.2,
    }
    options.update(kwargs)
    ipool = DBInteractionPool(pair.primary.dsn(), pool_size=4, **options)
    ipool.add_pool("replica", pair.replica.dsn(), 4)
    return ipool


def _query(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


class _Load:
    """``n`` greenlets writing (even) and reading (odd) until stopped; every outcome recorded."""

    def __init__(self, ipool: DBInteractionPool, n: int = 64) -> None:
        self.ipool = ipool
        self.acked: list[tuple[str, int, float]] = []  # (id, server port, monotonic time)
        self.reads: list[tuple[int, float]] = []
        self.failed: list[tuple[BaseException, float]] = []
        self._stop = False
        self._greenlets = [gevent.spawn(self._run, i % 2 == 0) for i in range(n)]

    def _run(self, writer: bool) -> None:
        while not self._stop:
            try:
                if writer:
                    key = uuid.uuid4().hex
                    ((port,),) = self.ipool.run(_WRITE, (key,), timeout=5).get(timeout=10)
                    self.acked.append((key, port, time.monotonic()))
                else:
                    ((port,),) = self.ipool.run(_READ, read_only=True, timeout=5).get(timeout=10)
                    self.reads.append((port, time.monotonic()))
            except Exception as exc:
                self.failed.append((exc, time.monotonic()))
                gevent.sleep(0.01)

    def stop(self) -> None:
        self._stop = True
        gevent.joinall(self._greenlets, timeout=15)
        assert all(g.dead for g in self._greenlets), "a load greenlet hung"


@pytest.fixture
def acked_table() -> Callable[[PgPair], None]:
    def make(pair: PgPair) -> None:
        _query(pair.primary.dsn(), "CREATE TABLE acked (id text PRIMARY KEY)")

    return make


# (1) -----------------------------------------------------------------------------------


def test_crash_and_promotion_writes_resume_on_the_new_primary_only(
    make_pair: Callable[..., PgPair], acked_table: Callable[[PgPair], None]
) -> None:
    pair = make_pair(sync=True)  # every acknowledged commit is on the replica too
    acked_table(pair)
    with _open(pair) as ipool:
        watch = ipool.watch_topology()
        load = _Load(ipool)
        assert wait_for(lambda: len(load.acked) > 50, timeout=10)
        pair.primary.halt(mode="immediate")
        pair.replica.promote()
        promoted = time.monotonic()
        assert wait_for(
            lambda: any(t > promoted and port == pair.replica.port for _, port, t in load.acked),
            timeout=10,
        )
        load.stop()
        first = min(t for _, port, t in load.acked if port == pair.replica.port)
        assert first - promoted < INTERVAL + PROBE_TIMEOUT + CONNECT
        change = next(e for e in _drain(watch) if isinstance(e, PrimaryChanged) and e.new)
        assert (change.old, change.new) == ("default", "replica")
        assert ipool.primary == "replica"
        # Nothing acknowledged by a server other than the new primary after the switch
        # (acks read after the promotion may be commits of the old one before its crash:
        # the promotion blocked every greenlet).
        ports = [port for _, port, _ in load.acked]
        switch = ports.index(pair.replica.port)
        assert set(ports[switch:]) == {pair.replica.port}
        # Every acknowledged write is on the new primary.
        on_new = {row[0] for row in _query(pair.replica.dsn(), "SELECT id FROM acked")}
        assert {key for key, _, _ in load.acked} <= on_new


def _drain(watch: Any) -> list[Any]:
    events = []
    while True:
        try:
            events.append(watch.get(timeout=0.01))
        except gevent.Timeout:
            return events


# (2) -----------------------------------------------------------------------------------


def test_planned_switchover_with_pause_and_resume_fails_nothing(
    make_pair: Callable[..., PgPair], acked_table: Callable[[PgPair], None]
) -> None:
    pair = make_pair(sync=True)
    acked_table(pair)
    with _open(pair) as ipool:
        load = _Load(ipool)
        assert wait_for(lambda: len(load.acked) > 50, timeout=10)
        assert ipool.pause(timeout=5) is True
        pair.primary.halt()  # clean stop
        pair.replica.promote()
        ipool.resume()
        resumed = time.monotonic()
        assert wait_for(lambda: sum(1 for _, _, t in load.acked if t > resumed) > 50, timeout=10)
        load.stop()
        assert load.failed == []
        assert ipool.primary == "replica"
        assert all(port == pair.replica.port for _, port, t in load.acked if t > resumed)


# (3) -----------------------------------------------------------------------------------


def test_demotion_on_live_connections_is_detected_by_the_first_25006(
    make_pair: Callable[..., PgPair], acked_table: Callable[[PgPair], None]
) -> None:
    pair = make_pair()
    acked_table(pair)
    # Probes every 60 s: only the failed write can make the router look now.
    with _open(pair, health_interval=60.0) as ipool:
        assert ipool.run(_WRITE, ("before",)).get(10) == [(pair.primary.port,)]
        pair.replica.promote()
        pair.primary.psql("ALTER SYSTEM SET default_transaction_read_only = on")
        pair.primary.psql("SELECT pg_reload_conf()")
        failed = _first_failure(ipool, 5.0)  # once the reload reaches a pooled session
        assert isinstance(failed, DBInteractionException) and failed.pgcode == "25006"
        detected = time.monotonic()
        assert ipool.run(_WRITE, ("after",)).get(10) == [(pair.replica.port,)]
        assert time.monotonic() - detected < 2.0
        assert ipool.primary == "replica"
        roles = {name: node.role for name, node in ipool.topology().items()}
        assert roles == {"replica": "primary", "default": "unknown"}


def _first_failure(ipool: DBInteractionPool, within: float) -> BaseException | None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        reply = ipool.run(_WRITE, (uuid.uuid4().hex,))
        reply.wait(10)
        if not reply.successful():
            return reply.exception
    return None


# (4) -----------------------------------------------------------------------------------


def test_the_old_primary_back_as_a_standby_serves_reads(make_pair: Callable[..., PgPair]) -> None:
    pair = make_pair()
    with _open(pair) as ipool:
        pair.primary.halt(mode="immediate")
        pair.replica.promote()
        assert wait_for(lambda: ipool.primary == "replica", timeout=5)
        assert ipool.topology()["default"].role == "down"
        pair.primary.make_standby_of(pair.replica)
        ipool.wait_for_replica("default", timeout=10)
        assert ipool.topology()["default"].role == "replica"
        ports = {ipool.run(_READ, read_only=True).get(10)[0][0] for _ in range(10)}
        assert ports == {pair.primary.port}  # the old primary, now a standby
        assert ipool.run(_READ).get(10) == [(pair.replica.port,)]  # writes stay on the new one


# (5) -----------------------------------------------------------------------------------


def test_split_brain_no_write_reaches_the_other_writable_node(
    make_pair: Callable[..., PgPair], acked_table: Callable[[PgPair], None]
) -> None:
    pair = make_pair()
    acked_table(pair)
    with _open(pair) as ipool:
        watch = ipool.watch_topology()
        pair.replica.promote()  # the primary stays up: two writable servers
        assert wait_for(
            lambda: (p := ipool.topology()["replica"].last_probe) is not None and p.writable,
            timeout=5,
        )
        assert ipool.topology()["replica"].role == "unknown"
        ports = {ipool.run(_WRITE, (uuid.uuid4().hex,)).get(10)[0][0] for _ in range(20)}
        assert ports == {pair.primary.port}
        assert _query(pair.replica.dsn(), "SELECT count(*) FROM acked") == [(0,)]
        assert ipool.primary == "default"
        assert not any(isinstance(e, PrimaryChanged) for e in _drain(watch))
        # The current primary gone, one writable node remains: it takes the writes.
        pair.primary.halt(mode="immediate")
        assert wait_for(lambda: ipool.primary == "replica", timeout=5)


# (6) -----------------------------------------------------------------------------------


def test_no_primary_writes_fail_after_failover_timeout_and_reads_go_on(
    make_pair: Callable[..., PgPair], acked_table: Callable[[PgPair], None]
) -> None:
    pair = make_pair()
    acked_table(pair)
    with _open(pair, failover_timeout=1.0) as ipool:
        pair.primary.halt(mode="immediate")
        started = time.monotonic()
        writes = [ipool.run(_WRITE, (uuid.uuid4().hex,)) for _ in range(16)]
        for reply in writes:
            with pytest.raises((NoPrimaryAvailable, DBInteractionException)):
                reply.get(timeout=4)
        elapsed = time.monotonic() - started
        assert elapsed < 1.0 + PROBE_TIMEOUT + INTERVAL + 1.0
        errors = [r.exception for r in writes]
        assert sum(isinstance(e, NoPrimaryAvailable) for e in errors) >= 12  # the rest: in flight
        assert ipool.primary is None
        assert ipool.run(_READ, read_only=True).get(5) == [(pair.replica.port,)]
        held = ipool.run(_WRITE, ("late",))
        with pytest.raises(NoPrimaryAvailable, match="no node is writable"):
            held.get(timeout=3)


# (7) -----------------------------------------------------------------------------------


def test_a_subscription_sees_one_reconnected_then_the_new_primarys_notifications(
    make_pair: Callable[..., PgPair],
) -> None:
    pair = make_pair()
    with _open(pair) as ipool:
        sub = ipool.subscribe("events")
        ipool.notify("events", "before").get(5)
        first = sub.get(timeout=5)
        assert isinstance(first, Notification) and first.payload == "before"
        pair.primary.halt(mode="immediate")
        pair.replica.promote()
        gap = sub.get(timeout=10)
        assert isinstance(gap, Reconnected)
        assert "primary changed" in gap.reason and "replica" in gap.reason
        ipool.notify("events", "after").get(5)
        item = sub.get(timeout=5)
        assert isinstance(item, Notification) and item.payload == "after"
        with pytest.raises(gevent.Timeout):
            sub.get(timeout=0.3)  # one Reconnected, nothing else


# (8) -----------------------------------------------------------------------------------


def test_add_pool_then_an_immediate_read_runs_on_the_replica(
    pg_primary: EmbeddedPostgres, pg_replica: EmbeddedPostgres
) -> None:
    with DBInteractionPool(pg_primary.dsn(), pool_size=2) as ipool:
        ipool.add_pool("replica", pg_replica.dsn(), 2)
        ports = [ipool.run(_READ, read_only=True).get(5)[0][0] for _ in range(8)]
        assert ports == [pg_replica.port] * 8
        assert ipool.topology()["replica"].role == "replica"
        assert ipool.topology()["default"].role == "primary"


def test_the_bridge_publishes_the_primary_change_as_reconnected(
    make_pair: Callable[..., PgPair],
) -> None:
    from gdbpool import NotifySubscriber, ZmqNotifyBridge

    pair = make_pair()
    with _open(pair) as ipool:
        bridge = ZmqNotifyBridge(ipool.notification_hub(), ["events"])
        subscriber = NotifySubscriber(bridge.endpoint, ["events"], green=True)
        try:
            subscriber.wait_connected(timeout=10)
            pair.primary.halt(mode="immediate")
            pair.replica.promote()
            deadline = time.monotonic() + 10
            event: Any = None
            while time.monotonic() < deadline:
                event = subscriber.get(timeout=10)
                if isinstance(event, Reconnected):
                    break
            assert isinstance(event, Reconnected), event
            assert event.reason.startswith("primary changed:")
            ipool.notify("events", "after").get(5)
            item = subscriber.get(timeout=5)
            while not isinstance(item, Notification):
                item = subscriber.get(timeout=5)
            assert item.payload == "after"
        finally:
            subscriber.close()
            bridge.close()
