"""A gevent WSGI app embedding gDBPool: writes go to the primary, reads to the replica.

    python examples/wsgi_app.py [--primary DSN] [--replica DSN] [--port 58080]

Defaults come from the environment (as set by ``examples/Procfile.replica``):
``GDBPOOL_PG_PORT`` (55432), ``GDBPOOL_REPLICA_PORT`` (55433),
``GDBPOOL_PG_PASSWORD`` (gdbpool-demo), ``GDBPOOL_APP_PORT`` (58080).

Routes (all JSON):

* ``GET /events``: the latest rows, read with ``read_only=True``, so the
  router sends them to a healthy replica; each answer says which server
  answered (``pg_is_in_recovery()`` is true on a replica).
* ``POST /events``: insert a row on the primary (the writer's table and
  trigger: the row is also a NOTIFY).
* ``GET /stats``: the pools' counters and the replica's last probe.
* ``GET /metrics``: the same and more as OpenMetrics / Prometheus text, for a
  scraper (``gdbpool.metrics``; needs the ``metrics`` extra, else 501).

One process, one gevent hub: every request is a greenlet, queries never
block the others (``import gdbpool`` makes psycopg2 cooperative).  Stops
cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from _env import procfile_dsn
from gevent.pywsgi import WSGIServer
from wait_for_postgres import wait_for_postgres
from writer import SCHEMA

from gdbpool import DBInteractionPool, configure_logging

try:  # the optional metrics extra (prometheus_client)
    from gdbpool.metrics import GDBPoolCollector, exposition
except ImportError:
    GDBPoolCollector = None

READ = """SELECT id, channel, n, created_at, pg_is_in_recovery() AS on_replica
          FROM gdbpool_events ORDER BY id DESC LIMIT %s"""
WRITE = "INSERT INTO gdbpool_events (channel, n) VALUES (%s, %s) RETURNING id"
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class EventsApp:
    """The WSGI application: a thin layer over one :class:`DBInteractionPool`."""

    def __init__(self, ipool: DBInteractionPool) -> None:
        self.ipool = ipool
        self.collector = GDBPoolCollector(ipool) if GDBPoolCollector is not None else None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        if path == "/metrics" and method == "GET":
            return self.metrics(environ, start_response)
        try:
            if path in ("/", "/events") and method == "GET":
                status, body = "200 OK", self.latest()
            elif path == "/events" and method == "POST":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                data = json.loads(environ["wsgi.input"].read(length) or b"{}")
                status, body = "201 Created", self.insert(str(data.get("channel", "events")),
                                                          int(data.get("n", 0)))
            elif path == "/stats" and method == "GET":
                status, body = "200 OK", self.stats()
            else:
                status, body = "404 Not Found", {"error": f"no route {method} {path}"}
        except (ValueError, TypeError) as exc:  # a bad request body
            status, body = "400 Bad Request", {"error": str(exc)}
        except Exception as exc:  # a database error: say so, keep serving
            status, body = "503 Service Unavailable", {"error": f"{type(exc).__name__}: {exc}"}
        payload = json.dumps(body, default=str).encode()
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(payload)))])
        return [payload]

    def metrics(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """The scrape: text in the format the scraper's Accept header asks for."""
        if self.collector is None:
            start_response("501 Not Implemented", [("Content-Type", "text/plain")])
            return [b"pip install 'gdbpool[metrics]' for /metrics\n"]
        body, content_type = exposition(self.collector, environ.get("HTTP_ACCEPT", ""))
        start_response("200 OK", [("Content-Type", content_type),
                                  ("Content-Length", str(len(body)))])
        return [body]

    def latest(self, limit: int = 10) -> dict[str, Any]:
        """The latest rows, from a replica when one is acceptable (read_only=True)."""
        rows = self.ipool.run(READ, (limit,), read_only=True).get(timeout=10)
        on_replica = bool(rows[0][4]) if rows else None
        return {"served_by": {True: "replica", False: "primary", None: "unknown"}[on_replica],
                "rows": [{"id": r[0], "channel": r[1], "n": r[2], "created_at": r[3]}
                         for r in rows]}

    def insert(self, channel: str, n: int) -> dict[str, Any]:
        """Insert one row on the primary (a write is never routed to a replica)."""
        rows = self.ipool.run(WRITE, (channel, n)).get(timeout=10)
        return {"id": rows[0][0], "channel": channel}

    def stats(self) -> dict[str, Any]:
        """Pool counters and the replica's last probe."""
        status = self.ipool.replica_status()
        return {"pools": self.ipool.stats(),
                "replicas": {name: repr(s) for name, s in status.items()}}


def main() -> int:
    """Wait for both servers, open the pools, serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description="gevent WSGI app over DBInteractionPool")
    parser.add_argument("--primary", default=procfile_dsn("GDBPOOL_PG_PORT", "55432"))
    parser.add_argument("--replica", default=procfile_dsn("GDBPOOL_REPLICA_PORT", "55433"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GDBPOOL_APP_PORT", 58080)))
    parser.add_argument("--wait", type=float, default=90.0,
                        help="seconds to wait for the servers to come up (default 90)")
    args = parser.parse_args()
    configure_logging(level="WARNING")

    wait_for_postgres(args.primary, args.wait)   # bounded retries, not a blind sleep
    wait_for_postgres(args.replica, args.wait)
    ipool = DBInteractionPool(args.primary, pool_size=4)
    try:
        ipool.run(SCHEMA).get(timeout=30)        # the writer's table, in case it is not up yet
        ipool.add_pool("replica", args.replica, 4, role="replica")
        ipool.wait_for_replica("replica", timeout=30)
        server = WSGIServer(("127.0.0.1", args.port), EventsApp(ipool), log=None)
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, server.stop, 5)
        server.start()                           # bound: say so only now
        print(f"wsgi_app: listening on http://127.0.0.1:{args.port}/events", flush=True)
        server.serve_forever()                   # returns once server.stop() ran
    finally:
        ipool.close()
    print("wsgi_app: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
