"""Notification, Reconnected, the NOTIFY limits, and Subscription's bounded queue (no server)."""

from __future__ import annotations

import gevent
import pytest
from gevent.queue import Queue
from structlog.testing import capture_logs

from gdbpool import (
    ConfigurationError,
    Notification,
    NotificationError,
    Reconnected,
    Subscription,
    SubscriptionClosed,
    check_channel,
    check_payload,
)
from gdbpool.notify.notification import MAX_CHANNEL_BYTES, MAX_PAYLOAD_BYTES
from gdbpool.notify.subscription import QueueSubscription


def note(seq: int, payload: str = "", channel: str = "c") -> Notification:
    return Notification(channel, payload, 42, 1.0, seq, "src")


def notes(first: int, last: int) -> tuple[Notification, ...]:
    return tuple(note(i, str(i)) for i in range(first, last + 1))


# -- Notification -------------------------------------------------------------


def test_json_decodes_the_payload() -> None:
    assert note(1, '{"id": 3, "tags": ["a"]}').json() == {"id": 3, "tags": ["a"]}


def test_json_of_a_bad_payload_raises_notification_error_naming_channel_and_seq() -> None:
    with pytest.raises(NotificationError, match=r"notification 7 on channel 'c'") as info:
        note(7, "{not json").json()
    assert isinstance(info.value.__cause__, ValueError)


def test_json_of_an_empty_payload_is_an_error() -> None:
    with pytest.raises(NotificationError):
        note(1, "").json()


def test_notification_and_reconnected_are_frozen() -> None:
    n = note(1)
    with pytest.raises(AttributeError):
        n.payload = "x"  # type: ignore[misc]
    gap = Reconnected(("a",), 1.0, "lost")
    with pytest.raises(AttributeError):
        gap.reason = "x"  # type: ignore[misc]


# -- limits ---------------------------------------------------------------------


def test_payload_of_7999_bytes_is_accepted() -> None:
    payload = "x" * MAX_PAYLOAD_BYTES
    assert check_payload(payload) is payload


def test_payload_over_7999_bytes_is_rejected() -> None:
    with pytest.raises(NotificationError, match="8000 bytes"):
        check_payload("x" * 8000)


def test_payload_limit_counts_utf8_bytes_not_characters() -> None:
    check_payload("é" * 3999)  # 7998 bytes
    with pytest.raises(NotificationError, match="8000 bytes"):
        check_payload("é" * 4000)


@pytest.mark.parametrize("bad", [b"bytes", None, "nul\x00inside"])
def test_payload_must_be_text_without_nul(bad: object) -> None:
    with pytest.raises(NotificationError):
        check_payload(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["a", "with space", 'q"uote', "semi;colon", "Ünïcode", "x" * 63])
def test_channel_names_postgres_accepts_are_accepted(name: str) -> None:
    assert check_channel(name) == name


@pytest.mark.parametrize("bad", ["", "x" * 64, "é" * 32, "nul\x00", None])
def test_empty_nul_or_too_long_channel_names_are_rejected(bad: object) -> None:
    with pytest.raises(NotificationError):
        check_channel(bad)  # type: ignore[arg-type]
    assert MAX_CHANNEL_BYTES == 63


# -- Subscription -----------------------------------------------------------------


def test_get_returns_items_in_order_and_counts_delivered() -> None:
    sub = Subscription("c")
    sub._offer(notes(1, 3))
    assert [sub.get().seq for _ in range(3)] == [1, 2, 3]  # type: ignore[union-attr]
    assert (sub.delivered, sub.dropped, sub.pending) == (3, 0, 0)


def test_get_times_out_with_gevent_timeout() -> None:
    sub = Subscription("c")
    with pytest.raises(gevent.Timeout):
        sub.get(timeout=0.01)


def test_get_wakes_when_an_item_arrives() -> None:
    sub = Subscription("c")
    gevent.spawn(sub._offer, notes(1, 1))
    assert sub.get(timeout=5) == note(1, "1")


def test_drop_newest_keeps_the_oldest_and_counts_the_rest() -> None:
    sub = Subscription("c", maxsize=10, overflow="drop_newest")
    sub._offer(notes(1, 7))
    sub._offer(notes(8, 25))
    assert (sub.pending, sub.dropped) == (10, 15)
    assert [sub.get().seq for _ in range(10)] == list(range(1, 11))  # type: ignore[union-attr]


def test_drop_oldest_keeps_the_newest_and_counts_the_rest() -> None:
    sub = Subscription("c", maxsize=10, overflow="drop_oldest")
    sub._offer(notes(1, 7))
    sub._offer(notes(8, 25))
    assert (sub.pending, sub.dropped) == (10, 15)
    assert [sub.get().seq for _ in range(10)] == list(range(16, 26))  # type: ignore[union-attr]


def test_overflow_is_logged_once_per_burst_not_per_message() -> None:
    sub = Subscription("c", maxsize=2, overflow="drop_newest")
    with capture_logs() as logs:
        for i in range(100):
            sub._offer((note(i),))
        sub.get()
        sub._offer((note(101),))  # room again: the burst is over
        for i in range(5):
            sub._offer((note(200 + i),))  # a second burst
    events = [entry["event"] for entry in logs]
    assert events == [
        "subscription_overflow",
        "subscription_caught_up",
        "subscription_overflow",
    ]
    assert logs[1]["dropped_in_burst"] == 98
    assert sub.dropped == 103


def test_gap_events_are_never_dropped_and_consecutive_ones_fold() -> None:
    sub = Subscription("c", maxsize=2, overflow="drop_oldest")
    sub._offer(notes(1, 2))
    first = Reconnected(("c",), 1.0, "first")
    latest = Reconnected(("c",), 2.0, "latest")
    sub._offer_gap(first)
    sub._offer_gap(latest)
    sub._offer(notes(3, 4))  # evicts 1 and 2, not the gap event
    assert [sub.get() for _ in range(3)] == [latest, note(3, "3"), note(4, "4")]
    assert (sub.delivered, sub.dropped) == (2, 2)


def test_iteration_ends_when_the_subscription_is_closed() -> None:
    sub = Subscription("c")
    sub._offer(notes(1, 2))
    seen = []
    for item in sub:
        seen.append(item)
        if len(seen) == 2:
            gevent.spawn(sub.close)
    assert len(seen) == 2


def test_close_wakes_a_waiting_reader_and_calls_unsubscribe_once() -> None:
    calls: list[Subscription] = []
    sub = Subscription("c", on_close=calls.append)
    reader = gevent.spawn(sub.get)
    gevent.sleep(0)  # let the reader block (ordering only; the join below is bounded)
    sub.close()
    sub.close()
    reader.join(timeout=5)
    assert isinstance(reader.exception, SubscriptionClosed)
    assert calls == [sub]


def test_context_manager_closes_and_closed_subscription_ignores_offers() -> None:
    with Subscription("c") as sub:
        pass
    assert sub.closed
    sub._offer(notes(1, 1))
    assert sub.pending == 0
    with pytest.raises(SubscriptionClosed, match="closed by its owner"):
        sub.get(timeout=1)


@pytest.mark.parametrize(
    ("maxsize", "overflow"), [(0, "drop_oldest"), (10, "block"), (True, "drop_newest")]
)
def test_bad_options_are_configuration_errors(maxsize: int, overflow: str) -> None:
    with pytest.raises(ConfigurationError):
        Subscription("c", maxsize=maxsize, overflow=overflow)  # type: ignore[arg-type]


def test_queue_subscription_forwards_and_drops_when_the_callers_queue_is_full() -> None:
    q: Queue = Queue(3)
    sub = QueueSubscription("c", q)
    sub._offer(notes(1, 5))
    sub._offer_gap(Reconnected(("c",), 1.0, "x"))  # full: dropped with a warning
    assert [q.get().seq for _ in range(3)] == [1, 2, 3]
    assert (sub.delivered, sub.dropped) == (3, 2)
