"""LISTEN/NOTIFY through DBInteractionPool: the original listen_on, subscribe, notify."""

from __future__ import annotations

from collections.abc import Iterator

import gevent
import gevent.event
import gevent.queue
import pytest

from gdbpool import DBInteractionPool, Notification, NotificationError, PoolClosed


@pytest.fixture
def ipool(dsn: str) -> Iterator[DBInteractionPool]:
    pool = DBInteractionPool(dsn, pool_size=2)
    try:
        yield pool
    finally:
        pool.close()


def test_the_original_listen_on_example_receives_rule_notifications(
    ipool: DBInteractionPool,
) -> None:
    ipool.run("""
        CREATE TABLE test_values (id serial PRIMARY KEY, val1 integer NOT NULL,
                                  val2 integer NOT NULL);
        CREATE RULE notify_value_inserts AS ON INSERT TO test_values
        DO SELECT pg_notify('notify_test_values', 'val1:' || NEW.val1 || '|val2:' || NEW.val2);
    """).get(timeout=10)
    rq: gevent.queue.Queue[Notification] = gevent.queue.Queue(maxsize=None)
    stop_event = gevent.event.Event()
    listener = gevent.spawn(
        ipool.listen_on, result_queue=rq, channel_name="notify_test_values", cancel_event=stop_event
    )
    hub = ipool.notification_hub()
    deadline = gevent.Timeout(10)
    with deadline:  # listen_on returns control once LISTEN is confirmed by the server
        while "notify_test_values" not in hub.listening_channels():
            gevent.sleep(0.01)
    for i in range(5):
        ipool.run("INSERT INTO test_values (val1, val2) VALUES (%s, %s)", (i, i * 10)).get(10)
    payloads = [rq.get(timeout=10).payload for _ in range(5)]
    assert payloads == [f"val1:{i}|val2:{i * 10}" for i in range(5)]
    stop_event.set()
    listener.join(timeout=10)
    assert listener.dead
    assert "notify_test_values" not in hub.listening_channels()


def test_subscribe_and_notify_round_trip_in_order(ipool: DBInteractionPool) -> None:
    with ipool.subscribe("orders; DROP TABLE x", maxsize=100) as sub:
        for i in range(10):
            ipool.notify("orders; DROP TABLE x", f'{{"n": {i}}}').get(timeout=10)
        got = [sub.get(timeout=10) for _ in range(10)]
    assert [n.json()["n"] for n in got] == list(range(10))  # type: ignore[union-attr]
    assert [n.seq for n in got] == sorted(n.seq for n in got)  # type: ignore[union-attr]


def test_notify_refuses_bad_input_before_the_server(ipool: DBInteractionPool) -> None:
    with pytest.raises(NotificationError, match="8000"):
        ipool.notify("c", "x" * 8000)
    with pytest.raises(NotificationError):
        ipool.notify("", "payload")


def test_close_stops_the_listeners_too(dsn: str) -> None:
    ipool = DBInteractionPool(dsn, pool_size=1)
    sub = ipool.subscribe("closing")
    ipool.close()
    assert sub.closed
    with pytest.raises(PoolClosed):
        ipool.subscribe("closing")
