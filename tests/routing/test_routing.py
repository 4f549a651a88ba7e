"""Routing between a real primary and real streaming replicas: health, fallback, lag, RYW."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import gevent
import gevent.event
import psycopg2
import pytest

from gdbpool import DBInteractionPool, EmbeddedPostgres, NoReplicaAvailable

IN_RECOVERY = "SELECT pg_is_in_recovery()"


@pytest.fixture
def routed(dsn: str, replica_dsn: str) -> Iterator[DBInteractionPool]:
    ipool = DBInteractionPool(dsn, pool_size=3, health_interval=0.2)
    ipool.add_pool("replica", replica_dsn, 3)
    ipool.wait_for_replica("replica", timeout=10)
    try:
        yield ipool
    finally:
        ipool.close()


def test_reads_land_on_the_replica_and_writes_on_the_primary(routed: DBInteractionPool) -> None:
    assert routed.run(IN_RECOVERY, read_only=True).get(10) == [(True,)]
    assert routed.run(IN_RECOVERY).get(10) == [(False,)]
    assert routed.run("CREATE TABLE w (v int)").get(10) == -1
    assert routed.run(IN_RECOVERY, is_write=False).get(10) == [(True,)]


def test_a_read_only_transaction_is_routed_to_the_replica(routed: DBInteractionPool) -> None:
    with routed.transaction(read_only=True) as tx:
        assert tx.run(IN_RECOVERY) == [(True,)]
    with routed.transaction() as tx:
        assert tx.run(IN_RECOVERY) == [(False,)]


def test_an_explicit_pool_wins_over_routing(routed: DBInteractionPool) -> None:
    assert routed.run(IN_RECOVERY, pool="replica").get(10) == [(True,)]
    assert routed.run(IN_RECOVERY, read_only=True, pool="default").get(10) == [(False,)]


@pytest.fixture
def private_pair(
    make_pg: Callable[..., EmbeddedPostgres],
) -> tuple[EmbeddedPostgres, EmbeddedPostgres]:
    primary = make_pg()
    replica = make_pg(replica_of=primary)
    return primary, replica


@pytest.mark.timeout(60)
def test_reads_fall_back_to_the_primary_while_the_replica_is_down_and_return_after(
    private_pair: tuple[EmbeddedPostgres, EmbeddedPostgres],
) -> None:
    primary, replica = private_pair
    with DBInteractionPool(
        primary.dsn(), pool_size=2, health_interval=0.2, probe_timeout=1.0, timeout=2.0
    ) as ipool:
        ipool.add_pool("replica", replica.dsn(), 2)
        ipool.wait_for_replica("replica", timeout=10)
        assert ipool.run(IN_RECOVERY, read_only=True).get(10) == [(True,)]
        replica.halt()
        ipool.wait_for_replica("replica", acceptable=False, timeout=15)
        for _ in range(5):
            assert ipool.run(IN_RECOVERY, read_only=True).get(10) == [(False,)]
        replica.start()
        ipool.wait_for_replica("replica", timeout=30)
        assert ipool.run(IN_RECOVERY, read_only=True).get(10) == [(True,)]


@pytest.mark.timeout(60)
def test_with_fallback_fail_a_read_without_replica_is_an_error(
    private_pair: tuple[EmbeddedPostgres, EmbeddedPostgres],
) -> None:
    primary, replica = private_pair
    with DBInteractionPool(
        primary.dsn(),
        pool_size=2,
        health_interval=0.2,
        probe_timeout=1.0,
        replica_fallback="fail",
        timeout=2.0,
    ) as ipool:
        ipool.add_pool("replica", replica.dsn(), 2)
        ipool.wait_for_replica("replica", timeout=10)
        replica.halt()
        ipool.wait_for_replica("replica", acceptable=False, timeout=15)
        with pytest.raises(NoReplicaAvailable, match="no replica is healthy"):
            ipool.run(IN_RECOVERY, read_only=True).get(10)
        assert ipool.run(IN_RECOVERY).get(10) == [(False,)]


def _replica_sql(replica_dsn: str, sql: str) -> None:
    conn = psycopg2.connect(replica_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


@contextlib.contextmanager
def paused_replay(replica: EmbeddedPostgres) -> Iterator[None]:
    """Pause WAL replay on ``replica`` for the block (the replica lags); resume after."""
    _replica_sql(replica.dsn(), "SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        _replica_sql(replica.dsn(), "SELECT pg_wal_replay_resume()")


@pytest.mark.timeout(60)
def test_a_lagging_replica_is_skipped_and_used_again_when_it_catches_up(
    private_pair: tuple[EmbeddedPostgres, EmbeddedPostgres],
) -> None:
    primary, replica = private_pair
    with DBInteractionPool(
        primary.dsn(), pool_size=2, health_interval=0.1, max_replica_lag_bytes=1024
    ) as ipool:
        ipool.add_pool("replica", replica.dsn(), 2)
        ipool.wait_for_replica("replica", timeout=10)
        with paused_replay(replica):
            session = ipool.session()
            ipool.run(
                "CREATE TABLE lag AS SELECT generate_series(1, 10000) AS v", session=session
            ).get(10)
            status = ipool.wait_for_replica("replica", acceptable=False, timeout=10)
            assert status.healthy and (status.lag_bytes or 0) > 1024
            assert ipool.run(IN_RECOVERY, read_only=True).get(10) == [(False,)]
        status = ipool.wait_for_replica("replica", timeout=10)
        assert (status.lag_bytes or 0) <= 1024
        # Within the bound is not "caught up": the session token guarantees the row.
        assert ipool.run("SELECT count(*) FROM lag", read_only=True, session=session).get(10) == [
            (10000,)
        ]


@pytest.mark.timeout(60)
def test_a_lag_bound_in_seconds_skips_a_paused_replica(
    private_pair: tuple[EmbeddedPostgres, EmbeddedPostgres],
) -> None:
    primary, replica = private_pair
    with DBInteractionPool(
        primary.dsn(), pool_size=2, health_interval=0.1, max_replica_lag=0.5
    ) as ipool:
        ipool.add_pool("replica", replica.dsn(), 2)
        session = ipool.session()  # one replayed transaction: the lag clock has a start
        ipool.run("CREATE TABLE t0 (v int)", session=session).get(10)
        ipool.wait_for_replica("replica", session=session, timeout=10)
        with paused_replay(replica):
            ipool.run("CREATE TABLE t1 (v int)").get(10)
            status = ipool.wait_for_replica("replica", acceptable=False, timeout=10)
            assert status.lag_seconds is not None
            assert status.lag_seconds > 0.5


@pytest.mark.timeout(60)
def test_read_your_writes_reads_see_the_write_every_time(
    private_pair: tuple[EmbeddedPostgres, EmbeddedPostgres],
) -> None:
    primary, replica = private_pair
    with DBInteractionPool(primary.dsn(), pool_size=4, health_interval=0.05) as ipool:
        ipool.add_pool("replica", replica.dsn(), 4)
        ipool.wait_for_replica("replica", timeout=10)
        ipool.run("CREATE TABLE ryw (v int)").get(10)
        for i in range(100):
            session = ipool.session()
            ipool.run("INSERT INTO ryw VALUES (%s)", (i,), session=session).get(10)
            assert session.lsn is not None
            rows = ipool.run(
                "SELECT count(*), pg_is_in_recovery() FROM ryw WHERE v = %s",
                (i,),
                read_only=True,
                session=session,
            ).get(10)
            assert rows[0][0] == 1, f"read {i} did not see its write"
        # The token is not a way to avoid the replica: once it caught up, reads go there.
        session = ipool.session()
        ipool.run("INSERT INTO ryw VALUES (-1)", session=session).get(10)
        ipool.wait_for_replica("replica", session=session, timeout=10)
        assert ipool.run(IN_RECOVERY, read_only=True, session=session).get(10) == [(True,)]


@pytest.mark.timeout(60)
def test_an_unknown_lag_counts_as_too_far_behind_for_a_seconds_bound(
    private_pair: tuple[EmbeddedPostgres, EmbeddedPostgres],
) -> None:
    # A fresh replica has replayed no transaction yet: with WAL waiting, its lag is unknown.
    primary, replica = private_pair
    with (
        paused_replay(replica),
        DBInteractionPool(
            primary.dsn(), pool_size=2, health_interval=0.1, max_replica_lag=60
        ) as ipool,
    ):
        ipool.run("CREATE TABLE t1 (v int)").get(10)
        ipool.add_pool("replica", replica.dsn(), 2)
        status = ipool.wait_for_replica("replica", acceptable=False, timeout=10)
        assert status.healthy
        assert status.lag_seconds is None
        assert ipool.run(IN_RECOVERY, read_only=True).get(10) == [(False,)]


@pytest.mark.timeout(60)
def test_a_promoted_replica_is_no_longer_used_for_reads(
    private_pair: tuple[EmbeddedPostgres, EmbeddedPostgres],
) -> None:
    primary, replica = private_pair
    with DBInteractionPool(primary.dsn(), pool_size=2, health_interval=0.1) as ipool:
        ipool.add_pool("replica", replica.dsn(), 2)
        ipool.wait_for_replica("replica", timeout=10)
        ipool.run("SELECT pg_promote()", pool="replica").get(10)
        status = ipool.wait_for_replica("replica", acceptable=False, timeout=10)
        assert status.error is not None and "not in recovery" in status.error
        assert ipool.run("SELECT inet_server_port()", read_only=True).get(10) == [(primary.port,)]


def test_a_probe_survives_a_primary_that_does_not_answer(pg_replica: EmbeddedPostgres) -> None:
    from gdbpool import Interaction, NodeStatus
    from gdbpool.routing.node_probe import NodeProbe

    def primary_never_answers(interaction: Interaction) -> None:
        pass

    reports: list[NodeStatus] = []
    enough = gevent.event.Event()

    def report(status: NodeStatus) -> None:
        reports.append(status)
        if len(reports) == 3:
            enough.set()

    probe = NodeProbe(
        "r", pg_replica.dsn(), primary_never_answers, report, interval=0.01, timeout=0.2
    )
    probe.start()
    try:
        assert enough.wait(timeout=10), "the probe stopped reporting"
    finally:
        probe.stop()
    assert all(s.reachable and s.in_recovery and s.lag_bytes is None for s in reports)
    assert not any(s.writable for s in reports)


def test_a_read_only_transaction_with_a_session_sees_the_sessions_writes(
    routed: DBInteractionPool,
) -> None:
    routed.run("CREATE TABLE txs (v int)").get(10)
    for i in range(20):
        session = routed.session()
        with routed.transaction(session=session) as tx:
            tx.run("INSERT INTO txs VALUES (%s)", (i,))
        assert session.lsn is not None
        with routed.transaction(read_only=True, session=session) as tx:
            assert tx.run("SELECT count(*) FROM txs WHERE v = %s", (i,)) == [(1,)]
