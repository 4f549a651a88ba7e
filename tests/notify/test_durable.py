"""Durable channels against real servers (issue #13, docs/design/durable.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import gevent
import psycopg2
import pytest
from _waits import wait_for

from gdbpool import (
    ArgumentTypeError,
    ConfigurationError,
    DBInteractionPool,
    EmbeddedPostgres,
    Notification,
    NotificationError,
    NotificationHub,
    NotifySubscriber,
    WireFormatError,
    ZmqNotifyBridge,
)
from gdbpool.notify.durable_subscription import DurableSubscription
from gdbpool.notify.wire import decode, encode_notify

WAIT = 10.0


def connect(dsn: str, autocommit: bool = True) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(dsn)
    conn.autocommit = autocommit
    return conn


def terminate(dsn: str, pid: int) -> None:
    with connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    conn.close()


@pytest.fixture
def ipool(dsn: str) -> Iterator[DBInteractionPool]:
    pool = DBInteractionPool(dsn, pool_size=2)
    pool.install_durable()
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def items_table(dsn: str, ipool: DBInteractionPool) -> str:
    """A table whose row trigger writes each new row's id through gdbpool.notify()."""
    ipool.run(
        """
        CREATE TABLE items (id bigserial PRIMARY KEY, v int);
        CREATE FUNCTION items_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM gdbpool.notify('items', NEW.id::text); RETURN NEW; END $$;
        CREATE TRIGGER items_notify AFTER INSERT ON items
            FOR EACH ROW EXECUTE FUNCTION items_notify();
        """
    ).get(timeout=WAIT)
    return "items"


def notifications(
    sub: DurableSubscription, count: int, timeout: float = WAIT
) -> list[Notification]:
    """The next ``count`` notifications of ``sub`` (gap events skipped), within ``timeout``."""
    out: list[Notification] = []
    with gevent.Timeout(timeout):
        while len(out) < count:
            item = sub.get()
            if isinstance(item, Notification):
                out.append(item)
    return out


def nothing_more(sub: DurableSubscription, wait: float = 0.3) -> bool:
    try:
        item = sub.get(timeout=wait)
    except gevent.Timeout:
        return True
    return not isinstance(item, Notification)


# -- install, notify -----------------------------------------------------------------


def test_install_is_idempotent_and_notify_durable_logs_and_carries_the_id(
    dsn: str, ipool: DBInteractionPool
) -> None:
    ipool.install_durable()  # a second time: nothing changes, nothing fails
    channel = 'odd "name"; DROP TABLE x'
    sub = ipool.subscribe(channel, durable=True)
    assert isinstance(sub, DurableSubscription)
    assert ipool.notify(channel, "hello", durable=True).get(timeout=WAIT) == [(1,)]
    got = notifications(sub, 1)[0]
    assert (got.log_id, got.payload, got.channel, got.replayed) == (1, "hello", channel, False)
    rows = ipool.run(
        "SELECT id, channel, payload, xid::text::bigint > 0, created <= now()"
        " FROM gdbpool.notify_log"
    ).get(timeout=WAIT)
    assert rows == [(1, channel, "hello", True, True)]
    # the hub's own notify writes through the same function
    assert ipool.notification_hub().notify(channel, "two", durable=True) == 2
    assert notifications(sub, 1)[0].log_id == 2


def test_bad_durable_arguments_are_refused_before_any_round_trip(
    ipool: DBInteractionPool,
) -> None:
    with pytest.raises(ArgumentTypeError):
        ipool.notify("c", "x", durable="yes")  # type: ignore[arg-type]
    with pytest.raises(NotificationError):
        ipool.notify("c", "x" * 7990, durable=True)  # no room beside the id
    with pytest.raises(ConfigurationError):
        ipool.subscribe("c", since=3)  # since= without durable=True
    with pytest.raises(ConfigurationError):
        ipool.subscribe("c", durable=True, since=-1)
    with pytest.raises(ArgumentTypeError):
        ipool.subscribe("c", durable=True, since="3")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        ipool.prune_durable(older_than=-1)
    with pytest.raises(ArgumentTypeError):
        ipool.prune_durable(keep=1.5)  # type: ignore[arg-type]


# -- (1) 10,000 rows, 5 terminated LISTEN backends --------------------------------------


def test_ten_thousand_rows_across_five_lost_listen_connections_arrive_once_in_order(
    dsn: str, ipool: DBInteractionPool, items_table: str
) -> None:
    with NotificationHub(dsn, reconnect_initial=0.2, reconnect_max=0.4) as hub:
        sub = hub.subscribe(items_table, maxsize=20_000, durable=True)
        assert isinstance(sub, DurableSubscription)
        writer = connect(dsn)
        got: list[Notification] = []
        reader = gevent.spawn(lambda: got.extend(notifications(sub, 10_000, timeout=30)))
        with writer.cursor() as cur:
            for batch in range(100):
                if batch % 20 == 10:  # 5 times, mid-stream
                    assert hub._state.up.wait(WAIT)
                    pid = hub._state.backend_pid
                    assert pid is not None
                    terminate(dsn, pid)
                    assert hub._state.down.wait(WAIT)
                # (while the LISTEN connection is down, these commits send NOTIFYs to nobody)
                cur.execute("INSERT INTO items (v) SELECT g FROM generate_series(1, 100) AS g")
        writer.close()
        reader.join(timeout=30)
        assert reader.successful(), reader.exception
        ids = [n.log_id for n in got]
        assert ids == list(range(1, 10_001))
        assert [int(n.payload) for n in got] == ids  # the trigger's payload, prefix removed
        assert hub.stats()["reconnects"] == 5
        assert sub.recovered > 0  # some did come back from the table
        assert all(n.replayed for n in got if n.pid == 0)
        assert nothing_more(sub)


# -- (2) a lower id that commits last --------------------------------------------------


def test_a_lower_id_committing_after_a_higher_one_is_never_skipped(
    dsn: str, ipool: DBInteractionPool
) -> None:
    with NotificationHub(dsn, reconnect_initial=0.2, reconnect_max=0.4) as hub:
        sub = hub.subscribe("jobs", durable=True)
        assert isinstance(sub, DurableSubscription)
        slow, fast = connect(dsn, autocommit=False), connect(dsn, autocommit=False)
        with slow.cursor() as cur:
            cur.execute("SELECT gdbpool.notify('jobs', 'slow')")  # takes id 1, stays open
            assert cur.fetchone() == (1,)
        with fast.cursor() as cur:
            cur.execute("SELECT gdbpool.notify('jobs', 'fast')")
            assert cur.fetchone() == (2,)
        fast.commit()
        assert [n.log_id for n in notifications(sub, 1)] == [2]

        def lose_listen_connection() -> None:
            pid = hub._state.backend_pid
            assert pid is not None
            terminate(dsn, pid)
            assert hub._state.down.wait(WAIT)

        # A catch-up read while id 1 is still in flight: the cursor must stay below it.
        lose_listen_connection()
        assert hub._state.up.wait(WAIT)
        assert nothing_more(sub)  # the catch-up ran (id 2 is not delivered twice)
        assert sub.last_log_id == 2
        # id 1 commits while nobody listens: only the log has it.
        lose_listen_connection()
        slow.commit()
        got = notifications(sub, 1)
        assert [(n.log_id, n.payload, n.replayed) for n in got] == [(1, "slow", True)]
        assert nothing_more(sub)
        slow.close()
        fast.close()


# -- (3) since= after a restart ----------------------------------------------------------


def test_since_resumes_a_restarted_subscriber_where_it_stopped(
    dsn: str, ipool: DBInteractionPool
) -> None:
    with NotificationHub(dsn) as hub:
        sub = hub.subscribe("audit", durable=True)
        assert isinstance(sub, DurableSubscription)
        for i in range(5):
            hub.notify("audit", f"e{i}", durable=True)
        assert [n.log_id for n in notifications(sub, 5)] == [1, 2, 3, 4, 5]
        last = sub.last_log_id
    assert last == 5
    for i in range(5, 10):  # no subscriber at all now
        ipool.notify("audit", f"e{i}", durable=True).get(timeout=WAIT)
    with NotificationHub(dsn) as hub:
        sub = hub.subscribe("audit", durable=True, since=last)
        hub.notify("audit", "e10", durable=True)
        got = notifications(sub, 6)
        assert [(n.log_id, n.payload) for n in got] == [(i + 1, f"e{i}") for i in range(5, 11)]
        assert [n.replayed for n in got] == [True] * 5 + [False]
        assert nothing_more(sub)


# -- (4) prune -------------------------------------------------------------------------------


def test_prune_keeps_what_a_live_subscription_has_not_read(
    dsn: str, ipool: DBInteractionPool
) -> None:
    for i in range(3):  # before anyone subscribed: prunable
        ipool.notify("wake", f"old{i}", durable=True).get(timeout=WAIT)
    sub = ipool.subscribe("wake", maxsize=5, durable=True)
    for i in range(20):
        ipool.notify("wake", f"new{i}", durable=True).get(timeout=WAIT)
    assert wait_for(lambda: sub.dropped == 15, WAIT)  # only the newest 5 are queued
    assert ipool.prune_durable(older_than=0, keep=0) == 3
    count = ipool.run("SELECT count(*) FROM gdbpool.notify_log").get(timeout=WAIT)
    assert count == [(20,)]
    got = notifications(sub, 20)  # the 15 dropped ones come back from the table
    assert [n.payload for n in got] == [f"new{i}" for i in range(20)]
    assert nothing_more(sub)
    sub.close()
    assert ipool.prune_durable(older_than=0, keep=2) == 18  # nobody protects them now
    assert ipool.prune_durable() == 0  # the default (7 days) keeps the young rows


# -- (5) the read-your-writes token over a delayed replica ------------------------------------


def test_the_notification_token_makes_replica_reads_see_the_notified_row(
    make_pg: object,
) -> None:
    primary: EmbeddedPostgres = make_pg()  # type: ignore[operator]
    replica: EmbeddedPostgres = make_pg(  # type: ignore[operator]
        replica_of=primary, fast=True, settings={"recovery_min_apply_delay": "'200ms'"}
    )
    with DBInteractionPool(primary.dsn(), pool_size=2, health_interval=0.05) as ipool:
        ipool.add_pool("replica", replica.dsn(), pool_size=4)
        ipool.install_durable()
        created = ipool.session()
        ipool.run("CREATE TABLE orders (id int PRIMARY KEY)", session=created).get(timeout=WAIT)
        ipool.wait_for_replica("replica", session=created, timeout=WAIT)
        sub = ipool.subscribe("orders", durable=True)

        def consume(with_token: bool, rounds: int) -> tuple[int, int]:
            misses = served_by_replica = 0
            for i in range(rounds):
                ipool.run(
                    "INSERT INTO orders VALUES (%s); SELECT gdbpool.notify('orders', %s::text)",
                    (i, i),
                ).get(timeout=WAIT)
                event = notifications(sub, 1)[0]
                assert event.lsn is not None
                session = event.session() if with_token else None
                rows = ipool.run(
                    "SELECT count(*), pg_is_in_recovery() FROM orders WHERE id = %s",
                    (int(event.payload),),
                    read_only=True,
                    session=session,
                ).get(timeout=WAIT)
                seen, on_replica = rows[0]
                misses += seen == 0
                served_by_replica += on_replica
                ipool.run("DELETE FROM orders").get(timeout=WAIT)
            return misses, served_by_replica

        misses, served = consume(with_token=False, rounds=10)
        assert misses > 0  # without the token the delayed replica answers "not there"
        assert served == 10
        misses, served = consume(with_token=True, rounds=10)
        assert misses == 0
        # Reads the replica could serve (it had replayed far enough) go to it:
        # once it has replayed past a notification's token, that token's read is its.
        token = notifications_token(ipool, sub)
        ipool.wait_for_replica("replica", session=token, timeout=WAIT)
        rows = ipool.run("SELECT pg_is_in_recovery()", read_only=True, session=token).get(
            timeout=WAIT
        )
        assert rows == [(True,)]


def notifications_token(ipool: DBInteractionPool, sub: DurableSubscription) -> object:
    ipool.notify("orders", "last", durable=True).get(timeout=WAIT)
    return notifications(sub, 1)[0].session()


# -- over the bridge ---------------------------------------------------------------------


def test_the_wire_carries_log_id_and_lsn_as_additive_header_fields() -> None:
    plain = encode_notify("c", "p", source="s", bridge="b", seq=1, pid=2, ts=3.5)
    assert b"log_id" not in plain[1] and b"lsn" not in plain[1]  # unchanged for plain ones
    frames = encode_notify(
        "c", "p", source="s", bridge="b", seq=1, pid=2, ts=3.5, log_id=7, lsn=2**40
    )
    header = json.loads(frames[1])
    assert (header["log_id"], header["lsn"]) == (7, 2**40)
    message = decode(frames)
    assert message is not None
    assert (message.log_id, message.lsn, message.payload) == (7, 2**40, "p")
    assert decode(plain).log_id is None  # type: ignore[union-attr]
    for bad in ({"log_id": "7"}, {"log_id": 0}, {"lsn": -1}, {"lsn": 2**64}, {"log_id": True}):
        header = {**json.loads(plain[1]), **bad}
        with pytest.raises(WireFormatError):
            decode([plain[0], json.dumps(header).encode(), plain[2]])


def test_a_durable_bridge_sends_log_ids_and_tokens_and_position_includes_them(
    dsn: str, ipool: DBInteractionPool
) -> None:
    with (
        NotificationHub(dsn) as hub,
        ZmqNotifyBridge(hub, ["feed"], durable=True, heartbeat_interval=0.05) as bridge,
        NotifySubscriber(bridge.endpoint, ["feed"]) as sub,
    ):
        sub.wait_connected(timeout=WAIT)
        ids = [hub.notify("feed", f"m{i}", durable=True) for i in range(3)]
        got = []
        while len(got) < 3:
            event = sub.get(timeout=WAIT)
            if isinstance(event, Notification):
                got.append(event)
        assert [(n.log_id, n.payload) for n in got] == [(i, f"m{k}") for k, i in enumerate(ids)]
        assert all(n.lsn is not None and n.lsn > 0 for n in got)
        position = sub.position()
        assert position[bridge.source_id]["log_ids"] == {"feed": ids[-1]}
        json.dumps(position)  # still JSON-ready
    with NotifySubscriber(bridge.endpoint, ["feed"], resume=position) as again:
        assert again.position()[bridge.source_id]["log_ids"] == {"feed": ids[-1]}


def test_a_durable_subscription_without_the_schema_says_to_install_it(dsn: str) -> None:
    with NotificationHub(dsn) as hub:
        with pytest.raises(NotificationError, match="install_durable"):
            hub.subscribe("nowhere", durable=True)
        assert hub.channels == ()  # nothing left subscribed
