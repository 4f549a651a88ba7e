"""NotificationHub against a real server: subscribe, listen_on, notify, fan-out, close."""

from __future__ import annotations

import gc
import uuid
from collections.abc import Iterator
from typing import Any

import gevent
import greenlet
import psycopg2
import pytest
from _waits import wait_for
from gevent.event import Event
from gevent.queue import Queue
from structlog.testing import capture_logs

from gdbpool import (
    ConfigurationError,
    Notification,
    NotificationError,
    NotificationHub,
    PoolClosed,
    PoolConnectionError,
    Subscription,
)

WAIT = 5.0  # bound on every wait for a notification


@pytest.fixture
def hub(dsn: str) -> Iterator[NotificationHub]:
    h = NotificationHub(dsn, application_name=f"test-{uuid.uuid4().hex[:8]}")
    try:
        yield h
    finally:
        h.close()


def execute(dsn: str, *statements: str, args: Any = None) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement, args)
    finally:
        conn.close()


def listening_on(hub: NotificationHub, channel: str, subscribers: int = 1) -> None:
    """Barrier for a just-spawned listen_on: its LISTEN is confirmed when this returns.

    Waits (bounded) until the LISTEN connection's channel table counts
    ``subscribers`` for ``channel`` (the actor has handled listen_on's
    Subscribe), then asks the server.
    """

    def counted() -> bool:
        route = hub._state.routes.get(channel)
        return route is not None and route.count == subscribers

    assert wait_for(counted, WAIT), f"listen_on({channel!r}) not subscribed within {WAIT} s"
    assert channel in hub.listening_channels()


def live_greenlets() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead)


SEED = """
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL);
CREATE RULE items_inserted AS ON INSERT TO items
    DO ALSO SELECT pg_notify('items', json_build_object('op', 'insert', 'id', NEW.id,
                                                        'name', NEW.name)::text);
CREATE FUNCTION items_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('items', json_build_object('op', 'update', 'id', NEW.id,
                                                 'name', NEW.name)::text);
    RETURN NEW;
END $$;
CREATE TRIGGER items_updated AFTER UPDATE ON items FOR EACH ROW EXECUTE FUNCTION items_updated();
"""

# Explicit ids: a rule is a macro, so NEW.id in it would call nextval() a second time.
CHANGES = (
    "INSERT INTO items (id, name) VALUES (1, 'a')",
    "INSERT INTO items (id, name) VALUES (2, 'b')",
    "UPDATE items SET name = 'a2' WHERE id = 1",
    "INSERT INTO items (id, name) VALUES (3, 'c')",
    "UPDATE items SET name = 'b2' WHERE id = 2",
)
EXPECTED = [
    {"op": "insert", "id": 1, "name": "a"},
    {"op": "insert", "id": 2, "name": "b"},
    {"op": "update", "id": 1, "name": "a2"},
    {"op": "insert", "id": 3, "name": "c"},
    {"op": "update", "id": 2, "name": "b2"},
]


def test_rule_and_trigger_notifications_arrive_via_subscribe_in_order(
    dsn: str, hub: NotificationHub
) -> None:
    execute(dsn, SEED)
    with hub.subscribe("items") as sub:
        execute(dsn, *CHANGES)
        got = [sub.get(timeout=WAIT) for _ in EXPECTED]
    assert [n.json() for n in got] == EXPECTED  # type: ignore[union-attr]
    seqs = [n.seq for n in got]  # type: ignore[union-attr]
    assert seqs == sorted(seqs)
    assert seqs[0] == 1
    assert {n.source for n in got} == {hub.source}  # type: ignore[union-attr]
    assert all(n.channel == "items" and n.pid > 0 for n in got)  # type: ignore[union-attr]


def test_rule_and_trigger_notifications_arrive_via_listen_on_in_order(
    dsn: str, hub: NotificationHub
) -> None:
    execute(dsn, SEED)
    q: Queue = Queue()
    cancel = Event()
    listening = gevent.spawn(hub.listen_on, q, "items", cancel)
    try:
        listening_on(hub, "items")
        execute(dsn, *CHANGES)
        got = [q.get(timeout=WAIT) for _ in EXPECTED]
    finally:
        cancel.set()
        listening.join(timeout=WAIT)
    assert listening.dead and listening.successful()
    assert [n.json() for n in got] == EXPECTED


def test_notify_in_a_transaction_arrives_only_after_commit(dsn: str, hub: NotificationHub) -> None:
    sub = hub.subscribe("tx")
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_notify('tx', 'in-transaction')")
            hub.notify("tx", "marker-1")  # committed, so it overtakes the open transaction
            assert sub.get(timeout=WAIT).payload == "marker-1"  # type: ignore[union-attr]
        conn.commit()
        assert sub.get(timeout=WAIT).payload == "in-transaction"  # type: ignore[union-attr]

        with conn.cursor() as cur:
            cur.execute("SELECT pg_notify('tx', 'rolled-back')")
        conn.rollback()
        hub.notify("tx", "marker-2")
        assert sub.get(timeout=WAIT).payload == "marker-2"  # type: ignore[union-attr]
        assert sub.pending == 0
    finally:
        conn.close()


def test_500_channels_share_one_listen_connection(dsn: str) -> None:
    app = f"many-{uuid.uuid4().hex[:8]}"
    with NotificationHub(dsn, application_name=app) as hub:
        subs = [hub.subscribe(f"ch{i}", maxsize=10) for i in range(500)]
        assert len(hub.channels) == 500
        assert len(hub.listening_channels()) == 500
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
                )
                assert cur.fetchone()[0] == 1
                cur.execute("SELECT pg_notify('ch' || g, g::text) FROM generate_series(0, 499) g")
            conn.commit()
        finally:
            conn.close()
        for i, sub in enumerate(subs):
            assert sub.get(timeout=WAIT).payload == str(i)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "channel",
    ["with space", 'dou"ble', "sin'gle", "semi;colon", "x; DROP TABLE t; --", "MiXeD", "ü✓"],
)
def test_channel_names_with_spaces_quotes_and_semicolons_work(
    dsn: str, hub: NotificationHub, channel: str
) -> None:
    execute(dsn, "CREATE TABLE t (id int)")
    with hub.subscribe(channel) as sub:
        hub.notify(channel, "p")
        got = sub.get(timeout=WAIT)
        assert isinstance(got, Notification)
        assert (got.channel, got.payload) == (channel, "p")
        assert hub.listening_channels() == [channel]
    execute(dsn, "SELECT count(*) FROM t")  # still there: nothing was injected
    assert hub.listening_channels() == []


def test_a_subscriber_that_never_reads_does_not_stop_the_others(
    dsn: str, hub: NotificationHub
) -> None:
    reader = hub.subscribe("firehose", maxsize=10_000)
    stuck_newest = hub.subscribe("firehose", maxsize=10, overflow="drop_newest")
    stuck_oldest = hub.subscribe("firehose", maxsize=10, overflow="drop_oldest")
    with capture_logs() as logs:
        execute(dsn, "SELECT pg_notify('firehose', g::text) FROM generate_series(1, 10000) g")
        got = [reader.get(timeout=WAIT).payload for _ in range(10_000)]  # type: ignore[union-attr]
    assert got == [str(i) for i in range(1, 10_001)]
    assert (reader.delivered, reader.dropped) == (10_000, 0)
    assert (stuck_newest.dropped, stuck_newest.pending) == (9_990, 10)
    assert (stuck_oldest.dropped, stuck_oldest.pending) == (9_990, 10)
    assert [stuck_newest.get(timeout=0).payload for _ in range(10)] == [  # type: ignore[union-attr]
        str(i) for i in range(1, 11)
    ]
    assert [stuck_oldest.get(timeout=0).payload for _ in range(10)] == [  # type: ignore[union-attr]
        str(i) for i in range(9_991, 10_001)
    ]
    overflows = [e for e in logs if e["event"] == "subscription_overflow"]
    assert len(overflows) == 2  # once per stuck subscriber, not once per message


def test_cancel_event_ends_listen_on_and_unlistens(dsn: str, hub: NotificationHub) -> None:
    q: Queue = Queue()
    cancel = Event()
    listening = gevent.spawn(hub.listen_on, q, "cancelled", cancel)
    listening_on(hub, "cancelled")
    marker = hub.subscribe("marker")
    hub.notify("cancelled", "before")
    assert q.get(timeout=WAIT).payload == "before"
    cancel.set()
    listening.join(timeout=WAIT)
    assert listening.successful()
    assert hub.channels == ("marker",)
    assert hub.listening_channels() == ["marker"]
    hub.notify("cancelled", "after")
    hub.notify("marker", "m")  # same connection, in order: had "after" been routed, it came first
    assert marker.get(timeout=WAIT).payload == "m"  # type: ignore[union-attr]
    assert q.empty()


def test_closing_the_last_subscription_unlistens_and_stops_its_listener(
    hub: NotificationHub,
) -> None:
    a = hub.subscribe("shared")
    b = hub.subscribe("shared")
    a.close()
    assert hub.listening_channels() == ["shared"]
    hub.notify("shared", "still")
    assert b.get(timeout=WAIT).payload == "still"  # type: ignore[union-attr]
    listeners = len(hub._supervisor.children)
    b.close()
    assert hub.channels == ()
    assert hub.listening_channels() == []
    assert len(hub._supervisor.children) == listeners - 1


def test_closing_the_hub_stops_every_listener_and_leaves_no_greenlet(dsn: str) -> None:
    before = live_greenlets()
    hub = NotificationHub(dsn)
    subs = [hub.subscribe(f"c{i}") for i in range(5)]
    q: Queue = Queue()
    listening = gevent.spawn(hub.listen_on, q, "c0", Event())
    listening_on(hub, "c0", subscribers=2)  # subs[0] and listen_on
    iterating = gevent.spawn(list, subs[1])
    hub.notify("c0", "x")
    assert subs[0].get(timeout=WAIT).payload == "x"  # type: ignore[union-attr]
    assert q.get(timeout=WAIT).payload == "x"
    hub.close()
    gevent.joinall([listening, iterating], timeout=WAIT)
    assert listening.successful()
    assert iterating.successful()
    assert all(s.closed for s in subs)
    assert hub._supervisor.children == []
    with pytest.raises(PoolClosed):
        hub.subscribe("c0")
    with pytest.raises(PoolClosed):
        hub.notify("c0", "x")
    del listening, iterating
    assert live_greenlets() == before
    hub.close()  # idempotent


def test_payload_too_long_fails_before_any_round_trip(hub: NotificationHub) -> None:
    with pytest.raises(NotificationError, match="at most 7999"):
        hub.notify("c", "x" * 8000)
    assert hub._notify_conn is None  # the notify connection was never even opened
    hub.notify("c", "x" * 7999)  # the limit itself is fine, end to end
    assert hub._notify_conn is not None


def test_a_7999_byte_payload_is_delivered_intact(hub: NotificationHub) -> None:
    payload = "é" * 3999 + "x"  # 7999 bytes of UTF-8
    with hub.subscribe("big") as sub:
        hub.notify("big", payload)
        assert sub.get(timeout=WAIT).payload == payload  # type: ignore[union-attr]


@pytest.mark.parametrize("channel", ["", "x" * 64])
def test_bad_channel_names_are_rejected_with_a_clear_error(
    hub: NotificationHub, channel: str
) -> None:
    with pytest.raises(NotificationError, match="channel name"):
        hub.subscribe(channel)
    with pytest.raises(NotificationError, match="channel name"):
        hub.notify(channel, "x")
    assert hub.channels == ()


def test_sequence_numbers_count_everything_the_hub_received(hub: NotificationHub) -> None:
    a = hub.subscribe("a")
    b = hub.subscribe("b")
    for channel in "abab":
        hub.notify(channel, channel)
    got_a = [a.get(timeout=WAIT) for _ in range(2)]
    got_b = [b.get(timeout=WAIT) for _ in range(2)]
    assert [n.seq for n in got_a] == [1, 3]  # type: ignore[union-attr]
    assert [n.seq for n in got_b] == [2, 4]  # type: ignore[union-attr]
    assert hub.stats()["received"] == 4


def test_unreachable_server_fails_fast_without_the_password(pg_primary: Any) -> None:
    bad = pg_primary.dsn(password="wrong-secret")
    with pytest.raises(PoolConnectionError) as info:
        NotificationHub(bad, connect_timeout=5)
    assert "wrong-secret" not in str(info.value)
    assert f":{pg_primary.port}/postgres" in str(info.value)


def test_a_standby_is_refused_with_a_clear_error(replica_dsn: str) -> None:
    with pytest.raises(ConfigurationError, match="standby; LISTEN needs the primary"):
        NotificationHub(replica_dsn)


def test_iterating_a_subscription(hub: NotificationHub) -> None:
    sub: Subscription = hub.subscribe("iter")
    for i in range(3):
        hub.notify("iter", str(i))
    seen = []
    for item in sub:
        seen.append(item.payload)  # type: ignore[union-attr]
        if len(seen) == 3:
            sub.close()
    assert seen == ["0", "1", "2"]
