"""Text that is not valid UTF-8 (a lone surrogate) is a NotificationError before any round trip."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from gdbpool import (
    DBInteractionPool,
    NotificationError,
    NotificationHub,
    check_channel,
    check_payload,
)

BAD = ["\ud800", "caf\udce9", "x" * 3000 + "\udfff"]  # \udce9: a Latin-1 byte in sys.argv


@pytest.fixture
def nowhere() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"host=127.0.0.1 port={port} dbname=x user=x connect_timeout=1"


@pytest.mark.parametrize("text", BAD)
def test_a_lone_surrogate_is_no_payload_and_no_channel(text: str) -> None:
    with pytest.raises(NotificationError, match="not valid UTF-8"):
        check_payload(text)
    with pytest.raises(NotificationError, match="not valid UTF-8"):
        check_channel(text[-20:])


@pytest.fixture
def ipool(nowhere: str) -> Iterator[DBInteractionPool]:
    pool = DBInteractionPool(nowhere, 1, min_size=0)
    yield pool
    pool.close()


@pytest.mark.parametrize("text", BAD)
def test_interaction_pool_notify_refuses_it_before_the_pool_is_asked(
    ipool: DBInteractionPool, text: str
) -> None:
    with pytest.raises(NotificationError, match="not valid UTF-8"):
        ipool.notify("c", text)
    with pytest.raises(NotificationError, match="not valid UTF-8"):
        ipool.notify(text[-20:], "p")
    assert ipool.stats()["default"]["requests_waiting"] == 0


def test_hub_notify_and_subscribe_refuse_it(dsn: str) -> None:
    hub = NotificationHub(dsn)
    try:
        with pytest.raises(NotificationError, match="not valid UTF-8"):
            hub.notify("c", "caf\udce9")
        with pytest.raises(NotificationError, match="not valid UTF-8"):
            hub.subscribe("caf\udce9")
    finally:
        hub.close()
