"""GDBPoolCollector: metric families built from ``stats()`` at scrape time.

Names and labels: ``docs/reference/metrics.md``. Every source is read through
its public ``stats()`` family of methods, so a scrape costs a few actor asks
(answered inline when the actor is idle) and, for an interaction pool, one
``SELECT pg_notification_queue_usage()``; an interaction costs nothing more.
A source that is closed (or does not answer) is left out of that scrape.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST, generate_latest
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "gdbpool.metrics needs prometheus_client: pip install 'gdbpool[metrics]'"
    ) from exc

from gdbpool.errors import ConfigurationError
from gdbpool.logging import get_logger
from gdbpool.notify.bridge import ZmqNotifyBridge
from gdbpool.notify.hub import NotificationHub
from gdbpool.pool.connection_pool import DBConnectionPool
from gdbpool.pool.wait_queue import WAIT_BUCKETS
from gdbpool.routing.interaction_pool import DBInteractionPool

__all__ = ["CONTENT_TYPE_LATEST", "GDBPoolCollector", "exposition", "serve"]

Source = DBInteractionPool | DBConnectionPool | NotificationHub | ZmqNotifyBridge

_log = get_logger("gdbpool.metrics")

# (stats key, metric name without gdbpool_pool_, help) for the pool's counters.
_POOL_COUNTERS = (
    ("requests_num", "requests", "Requests (run() interactions and get() checkouts)."),
    ("requests_queued", "requests_queued", "Requests that had to wait for a connection."),
    ("requests_errors", "requests_errors", "Requests failed by the pool (timeouts, too many)."),
    ("connections_num", "connection_attempts", "Connection attempts."),
    ("connections_errors", "connection_errors", "Failed connection attempts."),
    ("connections_lost", "connections_lost", "Connections found broken and replaced."),
    ("connections_replaced", "connections_replaced", "Connections replaced past max_lifetime."),
)
_POOL_STATES = ("idle", "busy", "lent", "connecting")
_BRIDGE_COUNTERS = (
    ("published", "published", "Notifications published on the PUB socket."),
    ("heartbeats", "heartbeats", "Heartbeats published."),
    ("dropped_in_bridge", "dropped", "Notifications the bridge's hub subscriptions dropped."),
    ("send_failed", "send_failed", "Sends refused by the PUB socket (high-water mark)."),
    ("reconnected", "reconnected", "Gap markers published after the hub reconnected."),
    ("replay_requests", "replay_requests", "Replay requests received."),
    ("replay_answers", "replay_answers", "Replay answers sent."),
    ("replay_messages", "replay_messages", "Notifications replayed in those answers."),
    ("replay_refused", "replay_refused", "Replay requests answered with an error."),
    ("replay_unsent", "replay_unsent", "Replay answers dropped (the requester did not read)."),
)


class GDBPoolCollector(Collector):
    """A prometheus_client collector over gdbpool objects (``docs/reference/metrics.md``).

    ``sources``: any mix of :class:`~gdbpool.DBInteractionPool` (its pools,
    router, hub and subscriptions, and the server's notification queue),
    :class:`~gdbpool.DBConnectionPool`, :class:`~gdbpool.NotificationHub` and
    :class:`~gdbpool.ZmqNotifyBridge`; more with :meth:`add`.
    ``queue_usage_timeout``: seconds the ``pg_notification_queue_usage()``
    query may take per scrape (default 1.0; ``None`` skips it). It runs on a
    hub's NOTIFY connection, or, for an interaction pool that has no hub
    open, as one interaction on its primary pool (counted in its requests).
    Samples are labelled by pool, hub and bridge names: give the sources of
    one collector distinct names (two pools both called ``default`` would
    export the same series twice, which scrapers reject).
    """

    def __init__(self, *sources: Source, queue_usage_timeout: float | None = 1.0) -> None:
        self._sources: list[Source] = []
        self.queue_usage_timeout = queue_usage_timeout
        for source in sources:
            self.add(source)

    def add(self, source: Source) -> None:
        """Scrape ``source`` too (TypeError for anything else)."""
        if not isinstance(
            source, DBInteractionPool | DBConnectionPool | NotificationHub | ZmqNotifyBridge
        ):
            raise TypeError(
                "GDBPoolCollector reads DBInteractionPool, DBConnectionPool, NotificationHub "
                f"or ZmqNotifyBridge objects, not {type(source).__name__}"
            )
        if source not in self._sources:
            self._sources.append(source)

    def remove(self, source: Source) -> None:
        """Stop scraping ``source`` (nothing if it was not added)."""
        with contextlib.suppress(ValueError):
            self._sources.remove(source)

    def collect(self) -> Iterator[Metric]:
        """Read every source's stats now; yield the metric families."""
        out = _Families()
        for source in list(self._sources):
            try:
                if isinstance(source, DBInteractionPool):
                    self._interaction_pool(out, source)
                elif isinstance(source, DBConnectionPool):
                    _pool(out, source.name, source.stats())
                elif isinstance(source, NotificationHub):
                    self._hub(out, source)
                else:
                    _bridge(out, source)
            except Exception as exc:  # closed, or not answering: leave it out of this scrape
                _log.debug("metrics_source_skipped", source=repr(source), error=str(exc))
        yield from out.families()

    def _interaction_pool(self, out: _Families, ipool: DBInteractionPool) -> None:
        for name, stats in ipool.stats().items():
            _pool(out, name, stats)
        router = ipool.router_stats()
        _router(out, router)
        hub = ipool.hub
        if hub is not None:
            self._hub(out, hub)  # its NOTIFY connection reads the queue usage
        elif self.queue_usage_timeout is not None:
            # No hub: one interaction on the primary pool (counted in its requests).
            usage = ipool.run(
                "SELECT pg_notification_queue_usage()", timeout=self.queue_usage_timeout
            ).get(timeout=self.queue_usage_timeout + 1.0)
            _queue_usage(out, router["primary"], float(usage[0][0]))

    def _hub(self, out: _Families, hub: NotificationHub) -> None:
        _hub(out, hub)
        if self.queue_usage_timeout is not None:
            late = TimeoutError(
                f"pg_notification_queue_usage() took over {self.queue_usage_timeout}s"
            )
            with gevent.Timeout(self.queue_usage_timeout, late):
                usage = hub.queue_usage()
            _queue_usage(out, hub.name, usage)


def _queue_usage(out: _Families, source: str, usage: float) -> None:
    out.gauge("notification_queue_usage",
              "pg_notification_queue_usage() of the server (0..1): NOTIFY queue held unread.",
              ("source",), (source,), usage)  # fmt: skip


def exposition(collector: GDBPoolCollector, accept: str | None = None) -> tuple[bytes, str]:
    """``(body, content type)`` of one scrape of ``collector``.

    ``accept``: the scraper's ``Accept`` header. None (the default) gives
    OpenMetrics text; a header picks what it asks for, as prometheus_client's
    own server does (OpenMetrics when it lists ``application/openmetrics-text``,
    else the Prometheus text format 0.0.4).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if accept is None:
        body: bytes = generate_latest(registry)  # type: ignore[no-untyped-call]
        return body, CONTENT_TYPE_LATEST
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def serve(address: str, collector: GDBPoolCollector) -> Any:
    """Serve ``GET /metrics`` on ``address`` (``HOST:PORT``) from a greenlet.

    The body is OpenMetrics or Prometheus text, as the scraper's ``Accept`` asks.

    A gevent WSGI server, so scrapes run on the hub like everything else
    (prometheus_client's own threaded server would read the actors from
    another thread). Port 0 picks a free port (``server.server_port``).
    Only loopback is the default anywhere gdbpool chooses; any host given here
    is bound as given. Returns the started ``gevent.pywsgi.WSGIServer``;
    ``server.stop()`` ends it. ConfigurationError for an address that is not
    ``HOST:PORT``.
    """
    from gevent.pywsgi import WSGIServer

    host, port = parse_address(address)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") not in ("/metrics", "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: GET /metrics\n"]
        body, content_type = exposition(collector, environ.get("HTTP_ACCEPT", ""))
        start_response("200 OK", [("Content-Type", content_type)])
        return [body]

    server = WSGIServer((host, port), app, log=None, error_log=None)
    server.start()
    return server


def parse_address(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``[::1]:PORT`` for IPv6) -> ``(host, port)``, or ConfigurationError."""
    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigurationError(
            f"metrics address must be HOST:PORT such as 127.0.0.1:9187, not {address!r}"
        )
    return host, int(port_text)


# -- families ----------------------------------------------------------------------


class _Families:
    """Metric families by name, so several sources add samples to one family."""

    def __init__(self) -> None:
        self._by_name: dict[str, Metric] = {}

    def _family(self, kind: Any, name: str, doc: str, labels: tuple[str, ...]) -> Any:
        family = self._by_name.get(name)
        if family is None:
            family = self._by_name[name] = kind(f"gdbpool_{name}", doc, labels=list(labels))
        return family

    def gauge(
        self, name: str, doc: str, labels: tuple[str, ...], values: tuple[str, ...], value: float
    ) -> None:
        self._family(GaugeMetricFamily, name, doc, labels).add_metric(list(values), value)

    def counter(
        self, name: str, doc: str, labels: tuple[str, ...], values: tuple[str, ...], value: float
    ) -> None:
        self._family(CounterMetricFamily, name, doc, labels).add_metric(list(values), value)

    def histogram(
        self,
        name: str,
        doc: str,
        labels: tuple[str, ...],
        values: tuple[str, ...],
        buckets: list[tuple[str, float]],
        total: float,
    ) -> None:
        family = self._family(HistogramMetricFamily, name, doc, labels)
        family.add_metric(list(values), buckets, total)

    def families(self) -> Iterator[Metric]:
        yield from self._by_name.values()


def _pool(out: _Families, name: str, stats: dict[str, int]) -> None:
    labels, values = ("pool",), (name,)
    for state in _POOL_STATES:
        out.gauge(
            "pool_connections", "Connections by state.", ("pool", "state"), (name, state),
            stats[f"connections_{state}"],
        )  # fmt: skip
    out.gauge("pool_max_size", "Most connections the pool opens.", labels, values,
              stats["pool_max"])  # fmt: skip
    out.gauge("pool_min_size", "Connections the pool keeps open.", labels, values,
              stats["pool_min"])  # fmt: skip
    out.gauge("pool_requests_waiting", "Requests waiting for a connection now.", labels, values,
              stats["requests_waiting"])  # fmt: skip
    for key, metric, doc in _POOL_COUNTERS:
        out.counter(f"pool_{metric}", doc, labels, values, stats[key])
    out.counter("pool_usage_seconds", "Time connections were busy or lent.", labels, values,
                stats["usage_ms"] / 1000)  # fmt: skip
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound in WAIT_BUCKETS:
        cumulative += stats[f"requests_wait_bucket_{bound:g}"]
        buckets.append((f"{bound:g}", cumulative))
    cumulative += stats["requests_wait_bucket_inf"]
    buckets.append(("+Inf", cumulative))
    out.histogram(
        "pool_wait_seconds", "How long requests that had to wait waited (served or timed out).",
        labels, values, buckets, stats["requests_wait_ms"] / 1000,
    )  # fmt: skip
    actor = (f"{name}.pool",)
    out.gauge("actor_mailbox_depth", "Messages waiting in an actor's mailbox.", ("actor",), actor,
              stats["pool_mailbox_depth"])  # fmt: skip
    out.counter("actor_restarts", "Actor restarts by a supervisor.", ("supervisor",),
                (f"{name}.workers",), stats["worker_restarts"])  # fmt: skip


def _router(out: _Families, router: dict[str, Any]) -> None:
    primary = router["primary"]
    for pool, role in router["roles"].items():
        out.gauge("router_role", "1 for the role each pool has now.", ("pool", "role"),
                  (pool, role), 1)  # fmt: skip
    for pool, replica in router["replicas"].items():
        labels, values = ("pool",), (pool,)
        out.gauge("replica_healthy", "1 while the last probe found the replica healthy.",
                  labels, values, int(replica["healthy"]))  # fmt: skip
        out.gauge("replica_acceptable", "1 while reads may go to the replica (healthy, in bounds).",
                  labels, values, int(replica["acceptable"]))  # fmt: skip
        if replica["lag_seconds"] is not None:
            out.gauge("replica_lag_seconds", "Replay lag in seconds at the last probe.",
                      labels, values, replica["lag_seconds"])  # fmt: skip
        if replica["lag_bytes"] is not None:
            out.gauge("replica_lag_bytes", "WAL bytes behind the primary at the last probe.",
                      labels, values, replica["lag_bytes"])  # fmt: skip
        out.counter("replica_probe_errors", "Replica probes that failed.", labels, values,
                    replica["probe_errors"])  # fmt: skip
    for reason, count in router["decisions"].items():
        out.counter("router_decisions", "Reads routed, by where and why.", ("primary", "reason"),
                    (primary, reason), count)  # fmt: skip
    out.gauge("actor_mailbox_depth", "Messages waiting in an actor's mailbox.", ("actor",),
              (f"{primary}.router",), router["mailbox_depth"])  # fmt: skip


def _hub(out: _Families, hub: NotificationHub) -> None:
    stats = hub.stats()
    labels, values = ("hub",), (hub.name,)
    out.counter("hub_received", "Notifications the hub received.", labels, values,
                stats["received"])  # fmt: skip
    out.counter("hub_reconnects", "Times the LISTEN connection was reopened.", labels, values,
                stats["reconnects"])  # fmt: skip
    out.gauge("hub_connected", "1 while the LISTEN connection is up.", labels, values,
              stats["connected"])  # fmt: skip
    out.gauge("hub_channels", "Channels listened on.", labels, values, stats["channels"])
    out.gauge("hub_subscriptions", "Open subscriptions.", labels, values, stats["subscriptions"])
    out.gauge("actor_mailbox_depth", "Messages waiting in an actor's mailbox.", ("actor",),
              (f"{hub.name}-connection",), stats["mailbox_depth"])  # fmt: skip
    out.counter("actor_restarts", "Actor restarts by a supervisor.", ("supervisor",),
                (f"{hub.name}-supervisor",), stats["restarts"])  # fmt: skip
    sub_labels = ("hub", "channel", "overflow")
    for counts in hub.subscription_stats():  # one per (channel, overflow): labels unique
        sub_values = (hub.name, counts["channel"], counts["overflow"])
        out.counter("subscription_delivered", "Notifications handed to consumers.", sub_labels,
                    sub_values, counts["delivered"])  # fmt: skip
        out.counter("subscription_dropped", "Notifications dropped by the overflow policy.",
                    sub_labels, sub_values, counts["dropped"])  # fmt: skip
        out.counter("subscription_gaps", "Reconnects (gap events) told to subscriptions.",
                    sub_labels, sub_values, counts["gaps"])  # fmt: skip
        out.gauge("subscription_pending", "Notifications queued, not yet consumed.", sub_labels,
                  sub_values, counts["pending"])  # fmt: skip
        out.gauge("subscription_open", "Subscriptions open now.", sub_labels, sub_values,
                  counts["open"])  # fmt: skip


def _bridge(out: _Families, bridge: ZmqNotifyBridge) -> None:
    stats = bridge.stats()
    labels, values = ("bridge",), (bridge.name,)
    for key, metric, doc in _BRIDGE_COUNTERS:
        if key in stats:
            out.counter(f"bridge_{metric}", doc, labels, values, stats[key])
