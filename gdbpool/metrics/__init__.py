"""Prometheus / OpenMetrics exposition of every gdbpool counter (extra ``metrics``).

``pip install gdbpool[metrics]`` brings ``prometheus_client``. A
:class:`GDBPoolCollector` is a custom collector: it keeps no metric objects and
adds no work to an interaction. At scrape time it reads the ``stats()`` the
pools, router, hub, subscriptions and bridge already keep (plain integers,
bumped where the event happens) and turns them into metric families. The
metric names and labels are listed once, in ``docs/reference/metrics.md``.

Typical use::

    from gdbpool.metrics import GDBPoolCollector, serve
    collector = GDBPoolCollector(interaction_pool, bridge)
    server = serve("127.0.0.1:9187", collector)   # GET /metrics

or register the collector with your own registry
(``prometheus_client.REGISTRY.register(collector)``), or call
:func:`exposition` for the OpenMetrics text yourself (the WSGI example does).
"""

from __future__ import annotations

from gdbpool.metrics.collector import GDBPoolCollector, exposition, serve

__all__ = ["GDBPoolCollector", "exposition", "serve"]
