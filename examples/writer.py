"""A writer producing NOTIFY events at a steady rate, through DBInteractionPool.

It creates (if missing) a table whose INSERT trigger sends ``pg_notify`` on
the row's channel, then inserts one row every ``1/rate`` seconds, cycling
over the channels given.  Every committed row becomes one notification with
a JSON payload ``{"id": ..., "n": ..., "at": ...}`` that a bridge publishes.

    python examples/writer.py --dsn DSN [--channel events ...] [--rate 2] [--count 0]

The DSN defaults to the Procfile's embedded server, built from
``GDBPOOL_PG_PORT`` (55432) and ``GDBPOOL_PG_PASSWORD`` (gdbpool-demo).
Stops cleanly on SIGTERM/SIGINT/SIGHUP (exit 0), also while it waits for the
server (saying so on stderr), after ``--count`` rows when given.
"""

from __future__ import annotations

import argparse
import signal
import sys
from itertools import count

import gevent
from _env import procfile_dsn
from gevent.event import Event
from wait_for_postgres import wait_for_postgres

from gdbpool import DBInteractionPool, GDBPoolError, configure_logging, redact

# The trigger makes the database, not the application, responsible for the
# notification: it is sent at commit, only if the row really was written.
SCHEMA = """
SELECT pg_advisory_xact_lock(7707);  -- the writer and the web app may both run this at once
CREATE TABLE IF NOT EXISTS gdbpool_events (
    id         bigserial PRIMARY KEY,
    channel    text NOT NULL,
    n          bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION gdbpool_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(NEW.channel, json_build_object(
        'id', NEW.id, 'n', NEW.n, 'at', NEW.created_at)::text);
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS gdbpool_events_notify ON gdbpool_events;
CREATE TRIGGER gdbpool_events_notify AFTER INSERT ON gdbpool_events
    FOR EACH ROW EXECUTE FUNCTION gdbpool_events_notify();
"""

INSERT = "INSERT INTO gdbpool_events (channel, n) VALUES (%s, %s) RETURNING id"


def main() -> int:
    """Create the schema, then insert rows at ``--rate`` until stopped."""
    parser = argparse.ArgumentParser(description="insert rows that NOTIFY, at a steady rate")
    parser.add_argument("--dsn", default=None, help="default: the Procfile's embedded server")
    parser.add_argument("--channel", action="append", default=None,
                        help="channel(s) to notify on, in turn (default: events)")
    parser.add_argument("--rate", type=float, default=2.0, help="rows per second (default 2)")
    parser.add_argument("--count", type=int, default=0, help="stop after N rows (0: never)")
    parser.add_argument("--wait", type=float, default=60.0,
                        help="seconds to wait for the server to come up (default 60)")
    args = parser.parse_args()
    dsn = args.dsn or procfile_dsn()
    channels = args.channel or ["events"]

    configure_logging(level="WARNING")  # our own lines on stdout are the story here
    stop = Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: the terminal closed
        gevent.signal_handler(sig, stop.set)

    # Bounded retry (the server may still be starting), in a greenlet so that a stop
    # signal ends the wait at once instead of after it.
    print(f"writer: waiting up to {args.wait:g} s for PostgreSQL at {redact(dsn)}",
          file=sys.stderr, flush=True)
    waiter = gevent.spawn(wait_for_postgres, dsn, args.wait)
    gevent.wait([waiter, stop], count=1)
    if stop.is_set():
        waiter.kill()
        print("writer: stopped while waiting for PostgreSQL", file=sys.stderr, flush=True)
        return 0
    try:
        waiter.get()
    except GDBPoolError as exc:
        print(f"writer: {exc}", file=sys.stderr, flush=True)
        return 1
    ipool = DBInteractionPool(dsn, pool_size=2)
    try:
        # Several statements in one string: runs as one transaction on the primary.
        ipool.run(SCHEMA).get(timeout=30)
        print(f"writer: inserting {args.rate:g} rows/s on {', '.join(channels)}", flush=True)
        interval = 1.0 / args.rate
        for n in count(1):
            channel = channels[(n - 1) % len(channels)]
            rows = ipool.run(INSERT, (channel, n)).get(timeout=30)
            print(f"writer: row {rows[0][0]} -> NOTIFY {channel}", flush=True)
            if n == args.count or stop.wait(interval):  # pacing, and the stop signal
                break
    finally:
        ipool.close()
    print("writer: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
