"""gdbpool.metrics: scraped over real HTTP, parsed with prometheus_client's parsers.

Known traffic against a real server (runs, a pool timeout, a subscriber
overflow, the hub's LISTEN backend terminated) must move each counter by
exactly what it did; the scrape itself must not move them.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import gevent
import psycopg2
import pytest
from _waits import wait_for
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from gdbpool import (
    ConfigurationError,
    DBInteractionPool,
    PoolTimeout,
    ZmqNotifyBridge,
)
from gdbpool.metrics import GDBPoolCollector, exposition, serve

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _fetch(url: str, accept: str | None) -> tuple[str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode(), response.headers["Content-Type"]


def scrape(url: str, accept: str | None = OPENMETRICS) -> Samples:
    """GET ``url`` from a real thread (urllib, not gevent) and parse the answer."""
    body, content_type = gevent.get_hub().threadpool.apply(_fetch, (url, accept))
    if accept == OPENMETRICS:
        assert content_type.startswith("application/openmetrics-text")
        assert body.endswith("# EOF\n")
        families = parse_openmetrics(body)
    else:
        assert content_type.startswith("text/plain; version=0.0.4")
        families = parse_text(body)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in families
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def terminate(dsn: str, pid: int) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            assert cur.fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def ipool(dsn: str) -> Iterator[DBInteractionPool]:
    pool = DBInteractionPool(dsn, pool_size=1, timeout=0.3)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def server() -> Iterator[list[Any]]:
    servers: list[Any] = []
    try:
        yield servers
    finally:
        for s in servers:
            s.stop(timeout=1)


def test_known_traffic_moves_each_counter_by_exactly_that(
    dsn: str, ipool: DBInteractionPool, server: list[Any]
) -> None:
    hub = ipool.notification_hub()
    bridge = ZmqNotifyBridge(hub, ["m_feed"], heartbeat_interval=0.1)
    try:
        sub = hub.subscribe("m_feed", maxsize=1, overflow="drop_newest")
        http = serve("127.0.0.1:0", GDBPoolCollector(ipool, bridge))
        server.append(http)
        url = f"http://127.0.0.1:{http.server_port}/metrics"
        pool = {"pool": "default"}
        subl = {"hub": hub.name, "channel": "m_feed", "overflow": "drop_newest"}
        bl = {"bridge": bridge.name}

        before = scrape(url)
        again = scrape(url)  # a scrape moves no counter (its queries use no pool)
        for key in ("gdbpool_pool_requests_total", "gdbpool_pool_requests_errors_total"):
            assert delta(before, again, key, **pool) == 0

        n = 5
        for _ in range(n):
            assert ipool.run("SELECT 1").get(timeout=5) == [(1,)]
        held = ipool.pool().get(timeout=5)  # the only connection: the next run must wait
        try:
            with pytest.raises(PoolTimeout):
                ipool.run("SELECT 1").get(timeout=5)
        finally:
            ipool.pool().put(held)

        hub.notify("m_feed", "one")
        hub.notify("m_feed", "two")  # sub holds one: this one is dropped (drop_newest)
        assert wait_for(lambda: sub.dropped == 1 and bridge.stats()["published"] == 2, 5)
        assert sub.get(timeout=5).payload == "one"

        old_pid = hub._state.backend_pid
        assert old_pid is not None
        terminate(dsn, old_pid)
        assert wait_for(lambda: hub.stats()["reconnects"] == 1 and hub.stats()["connected"], 10)
        assert wait_for(lambda: sub.gaps == 1 and bridge.stats()["reconnected"] == 1, 5)

        after = scrape(url)
        assert delta(before, after, "gdbpool_pool_requests_total", **pool) == n + 2  # get + timeout
        assert delta(before, after, "gdbpool_pool_requests_errors_total", **pool) == 1
        assert delta(before, after, "gdbpool_pool_requests_queued_total", **pool) == 1
        assert delta(before, after, "gdbpool_pool_wait_seconds_count", **pool) == 1
        # it waited its 0.3 s timeout: counted in the 0.5 s bucket, not the 0.1 s one
        assert delta(before, after, "gdbpool_pool_wait_seconds_bucket", le="0.1", **pool) == 0
        assert delta(before, after, "gdbpool_pool_wait_seconds_bucket", le="0.5", **pool) == 1
        assert delta(before, after, "gdbpool_pool_connections_lost_total", **pool) == 0
        assert value(after, "gdbpool_pool_connections", state="idle", **pool) == 1
        assert value(after, "gdbpool_pool_connections", state="lent", **pool) == 0

        assert delta(before, after, "gdbpool_hub_received_total", hub=hub.name) == 2
        assert delta(before, after, "gdbpool_hub_reconnects_total", hub=hub.name) == 1
        assert value(after, "gdbpool_hub_connected", hub=hub.name) == 1
        assert delta(before, after, "gdbpool_subscription_delivered_total", **subl) == 1
        assert delta(before, after, "gdbpool_subscription_dropped_total", **subl) == 1
        assert delta(before, after, "gdbpool_subscription_gaps_total", **subl) == 1
        assert value(after, "gdbpool_subscription_pending", **subl) == 0
        usage = value(after, "gdbpool_notification_queue_usage", source=hub.name)
        assert 0 <= usage < 0.01

        assert delta(before, after, "gdbpool_bridge_published_total", **bl) == 2
        assert delta(before, after, "gdbpool_bridge_reconnected_total", **bl) == 1
        assert delta(before, after, "gdbpool_bridge_dropped_total", **bl) == 0
        assert delta(before, after, "gdbpool_bridge_heartbeats_total", **bl) >= 1
        assert delta(before, after, "gdbpool_bridge_replay_answers_total", **bl) == 0

        assert value(after, "gdbpool_router_role", pool="default", role="primary") == 1
        assert value(after, "gdbpool_actor_mailbox_depth", actor="default.pool") == 0
        assert delta(before, after, "gdbpool_actor_restarts_total",
                     supervisor="default.workers") == 0  # fmt: skip

        # a closed subscription's counts stay in the totals (counters never go down)
        sub.close()
        closed = scrape(url, accept=None)  # the Prometheus text format, same numbers
        assert value(closed, "gdbpool_subscription_dropped_total", **subl) == value(
            after, "gdbpool_subscription_dropped_total", **subl
        )
        assert value(closed, "gdbpool_subscription_open", **subl) == 0
    finally:
        bridge.close()


def test_routing_decisions_and_replica_state_are_exported(
    dsn: str, replica_dsn: str, ipool: DBInteractionPool
) -> None:
    ipool.add_pool("replica", replica_dsn, 1, role="replica")
    ipool.wait_for_replica("replica", timeout=20)
    collector = GDBPoolCollector(ipool, queue_usage_timeout=None)
    before = _samples(collector)
    for _ in range(3):
        ipool.run("SELECT 1", read_only=True).get(timeout=5)
    ipool.run("SELECT 1").get(timeout=5)  # a write: no routing decision
    after = _samples(collector)
    decisions = "gdbpool_router_decisions_total"
    assert delta(before, after, decisions, primary="default", reason="replica") == 3
    for reason in ("lag", "token", "fallback", "refused"):
        assert delta(before, after, decisions, primary="default", reason=reason) == 0
    assert value(after, "gdbpool_router_role", pool="replica", role="replica") == 1
    assert value(after, "gdbpool_replica_acceptable", pool="replica") == 1
    assert value(after, "gdbpool_replica_healthy", pool="replica") == 1
    assert value(after, "gdbpool_replica_lag_seconds", pool="replica") >= 0
    assert value(after, "gdbpool_replica_probe_errors_total", pool="replica") == 0
    assert delta(before, after, "gdbpool_pool_requests_total", pool="replica") == 3
    assert ("gdbpool_notification_queue_usage", frozenset({("source", "default")})) not in after


def _samples(collector: GDBPoolCollector) -> Samples:
    body, _ = exposition(collector)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in parse_openmetrics(body.decode())
        for s in family.samples
    }


def test_a_closed_source_is_left_out_and_bad_input_is_typed(dsn: str) -> None:
    pool = DBInteractionPool(dsn, pool_size=1)
    collector = GDBPoolCollector(pool)
    assert any(k[0] == "gdbpool_pool_requests_total" for k in _samples(collector))
    pool.close()
    assert _samples(collector) == {}
    with pytest.raises(TypeError, match="not str"):
        collector.add("default")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="HOST:PORT"):
        serve("9187", collector)


def test_only_get_metrics_is_served(server: list[Any]) -> None:
    http = serve("127.0.0.1:0", GDBPoolCollector())
    server.append(http)
    url = f"http://127.0.0.1:{http.server_port}/other"
    with pytest.raises(urllib.error.HTTPError) as info:
        gevent.get_hub().threadpool.apply(_fetch, (url, None))
    assert info.value.code == 404
    assert http.address[0] == "127.0.0.1"
    assert scrape(url.replace("/other", "/metrics")) == {}


def test_a_pool_without_a_hub_reads_queue_usage_through_one_counted_interaction(
    ipool: DBInteractionPool,
) -> None:
    collector = GDBPoolCollector(ipool)
    first = _samples(collector)
    second = _samples(collector)
    assert value(second, "gdbpool_notification_queue_usage", source="default") == 0
    # the first scrape's query was counted (read before the query, so seen by the second)
    assert delta(first, second, "gdbpool_pool_requests_total", pool="default") == 1
