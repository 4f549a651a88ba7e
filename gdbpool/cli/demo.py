"""``gdbpool demo``: the main job, end to end.

With no DSN it starts an embedded PostgreSQL primary and a streaming replica
(throwaway clusters on free loopback ports), then:

1. loads the 2011 library's demo schema (``test_values`` with NOTIFY rules);
2. runs the original README's examples through :class:`DBInteractionPool`: an
   SQL read routed to the replica, a function interaction, a write on the
   primary, a read-your-writes read;
3. starts a :class:`ZmqNotifyBridge` on loopback and a :class:`NotifySubscriber`
   connected to it, inserts and updates rows, and shows the notifications the
   rules send arriving across ZeroMQ;
4. fails over (embedded servers only): under a steady write load it stops the
   primary (``-m immediate``, a crash), promotes the replica and shows the
   writes resuming on it and how long that took;
5. prints a summary and stops everything, leaving nothing running.

With ``--dsn`` it uses that server as the primary (no replica; reads fall back
to the primary) and works in a private schema (``gdbpool_demo_<hex>``, unique
per run) that it drops at the end, whether the tour succeeded or not.
Each step prints one progress line.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
from psycopg2 import sql
from psycopg2.extensions import make_dsn

from gdbpool.logging import configure_logging, redact
from gdbpool.notify.bridge import ZmqNotifyBridge
from gdbpool.notify.notification import Notification
from gdbpool.notify.subscriber import NotifySubscriber
from gdbpool.routing.interaction_pool import DBInteractionPool
from gdbpool.routing.read_your_writes import ReadYourWrites
from gdbpool.server.embedded import EmbeddedPostgres

__all__ = ["run_demo"]

CHANNEL = "notify_test_values"
_ROWS = 10_000
_EVENTS = 20

# The 2011 library's tests/test_schema.sql (10,000 rows instead of 1,000,000).
_SCHEMA = f"""
CREATE TABLE test_values (
  id serial NOT NULL,
  val1 integer NOT NULL,
  val2 integer NOT NULL,
  CONSTRAINT test_values_pkey PRIMARY KEY (id)
);
INSERT INTO test_values (val1, val2)
SELECT (random() * 9 + 1)::integer, (random() * 99 + 1)::integer
FROM generate_series(1, {_ROWS});
CREATE RULE notify_value_inserts AS ON INSERT TO test_values
DO SELECT pg_notify('{CHANNEL}', 'id:' || NEW.id || '|val1:' || NEW.val1 || '|val2:' || NEW.val2);
CREATE RULE notify_value_updates AS ON UPDATE TO test_values
WHERE NEW.val1 <> OLD.val1
DO SELECT pg_notify('{CHANNEL}', 'id:' || NEW.id || '|val1:' || NEW.val1);
"""


@contextlib.contextmanager
def _step(title: str) -> Iterator[None]:
    started = time.monotonic()
    print(f"  … {title}", end="", flush=True)
    try:
        yield
    except BaseException:
        print(" FAILED", flush=True)
        raise
    print(f" done ({time.monotonic() - started:.2f}s)", flush=True)


def run_demo(dsn: str | None = None, *, json_logs: bool = False) -> int:
    """Run the tour against ``dsn`` or an embedded primary + replica; return the exit code."""
    configure_logging(json=json_logs, level="WARNING")
    print("gDBPool demo", flush=True)
    with contextlib.ExitStack() as stack:
        replica_dsn = None
        servers: tuple[EmbeddedPostgres, EmbeddedPostgres] | None = None
        if dsn is None:
            with _step("starting embedded PostgreSQL (primary)"):
                primary = stack.enter_context(EmbeddedPostgres())
            with _step("starting a streaming replica (pg_basebackup -R)"):
                replica = primary.create_replica()
                stack.callback(replica.stop)
            dsn, replica_dsn = primary.dsn(), replica.dsn()
            servers = (primary, replica)
        print(f"  primary: {redact(dsn)}", flush=True)
        if replica_dsn:
            print(f"  replica: {redact(replica_dsn)}", flush=True)
        summary = _tour(dsn, replica_dsn, servers)
        with _step("stopping everything"):
            stack.close()
    print("summary:", flush=True)
    for key, value in summary.items():
        print(f"  {key}: {value}", flush=True)
    print("demo finished: everything stopped", flush=True)
    return 0


def _tour(
    dsn: str,
    replica_dsn: str | None,
    servers: tuple[EmbeddedPostgres, EmbeddedPostgres] | None = None,
) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if replica_dsn is None:  # a user's server: work in a private schema, dropped at the end
            with _step("creating a private schema"):
                dsn = stack.enter_context(_private_schema(dsn))
        ipool = stack.enter_context(
            DBInteractionPool(
                dsn, pool_size=4, health_interval=0.2, probe_timeout=1.0, reconnect_max=1.0
            )
        )
        with _step("loading the demo schema (test_values + NOTIFY rules)"):
            loaded = ipool.session()
            ipool.run(_SCHEMA, session=loaded).get(timeout=60)
        summary.update(_examples(ipool, replica_dsn, loaded))
        summary.update(_notifications(ipool))
        if servers is not None:
            summary.update(_failover(ipool, *servers))
    return summary


def _failover(
    ipool: DBInteractionPool, primary: EmbeddedPostgres, replica: EmbeddedPostgres
) -> dict[str, Any]:
    """Crash the primary under a write load, promote the replica, time the first write after."""
    acked: list[tuple[float, bool]] = []  # (monotonic time, ran on the promoted replica)
    failed = 0
    stop = False

    def writer() -> None:
        nonlocal failed
        while not stop:
            try:
                ((port,),) = ipool.run(
                    "INSERT INTO test_values (val1, val2) VALUES (1, 1) "
                    "RETURNING inet_server_port()",
                    timeout=5,
                ).get(timeout=10)
                acked.append((time.monotonic(), port == replica.port))
            except Exception:
                failed += 1
                gevent.sleep(0.01)

    writers = [gevent.spawn(writer) for _ in range(4)]
    try:
        with _step("failover: crash the primary, promote the replica, writes resume"):
            gevent.sleep(0.3)
            primary.halt(mode="immediate")
            replica.promote()
            promoted = time.monotonic()
            deadline = promoted + 30
            while not any(on_new for _, on_new in acked) and time.monotonic() < deadline:
                gevent.sleep(0.01)
    finally:
        stop = True
        gevent.joinall(writers, timeout=15)
    first = min((t for t, on_new in acked if on_new), default=None)
    took = (
        "never (within 30 s)" if first is None else f"{first - promoted:.2f}s after the promotion"
    )
    return {
        "failover": f"writes on the new primary ({ipool.primary}) {took}; "
        f"{failed} writes failed around the crash"
    }


@contextlib.contextmanager
def _private_schema(dsn: str) -> Iterator[str]:
    """A new schema on ``dsn``'s server for the tour; yields a DSN that works in it.

    The name is unique per run (``gdbpool_demo_<hex>``), so concurrent runs do
    not collide; the schema is dropped however the tour ends, even when loading
    it failed.
    """
    schema = sql.Identifier(f"gdbpool_demo_{secrets.token_hex(4)}")

    def execute(statement: sql.Composable) -> Callable[[Any], None]:
        def interaction(conn: Any) -> None:
            with conn.cursor() as cur:
                cur.execute(statement)

        return interaction

    with DBInteractionPool(dsn, pool_size=1) as admin:
        admin.run(execute(sql.SQL("CREATE SCHEMA {}").format(schema)), is_write=True).get(30)
        try:
            # make_dsn keeps URI and key=value DSNs alike valid, quoting as needed.
            yield make_dsn(dsn, options=f"-c search_path={schema.string}")
        finally:
            admin.run(execute(sql.SQL("DROP SCHEMA {} CASCADE").format(schema)), is_write=True).get(
                30
            )


def _examples(
    ipool: DBInteractionPool, replica_dsn: str | None, loaded: ReadYourWrites
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if replica_dsn is not None:
        with _step("adding the replica pool; waiting until it has replayed the schema"):
            ipool.add_pool("replica", replica_dsn, 4)
            ipool.wait_for_replica("replica", session=loaded, timeout=30)
    with _step("original README example 1: an SQL read (read_only=True)"):
        sql = """
        SELECT val1, count(id), pg_is_in_recovery() FROM test_values
        WHERE val2 = %s GROUP BY val1 ORDER BY val1;
        """
        rows = ipool.run(sql, [5], read_only=True).get(timeout=30)
    where = "replica" if rows and rows[0][2] else "primary"
    total = sum(r[1] for r in rows)
    out["read (val2 = 5)"] = f"{len(rows)} groups, {total} rows, ran on the {where}"

    def interaction(conn: Any) -> Any:
        curs = conn.cursor()
        curs.execute(
            "SELECT val1, val2, count(id) FROM test_values GROUP BY val1, val2 ORDER BY val1, val2"
        )
        res = curs.fetchall()
        curs.close()
        return res

    with _step("original README example 2: a function interaction"):
        groups = ipool.run(interaction).get(timeout=30)
    out["function interaction"] = f"{len(groups)} (val1, val2) groups"
    with _step("a write on the primary, then a read-your-writes read"):
        session = ipool.session()
        ipool.run("UPDATE test_values SET val2 = 1000 WHERE id = %s", (1,), session=session).get(30)
        seen = ipool.run(
            "SELECT val2, pg_is_in_recovery() FROM test_values WHERE id = 1",
            read_only=True,
            session=session,
        ).get(30)
    where = "replica" if seen[0][1] else "primary"
    out["read-your-writes"] = f"read val2={seen[0][0]} right after writing it, on the {where}"
    with _step("four queries in parallel with run_many"):
        started = time.monotonic()
        ipool.run_many(["SELECT pg_sleep(0.2)"] * 4, timeout=30)
    out["run_many(4 x pg_sleep(0.2))"] = f"{time.monotonic() - started:.2f}s"
    return out


def _notifications(ipool: DBInteractionPool) -> dict[str, Any]:
    with _step("starting the ZeroMQ bridge and a subscriber on loopback"):
        bridge = ZmqNotifyBridge(ipool.notification_hub(), [CHANNEL])
        subscriber = NotifySubscriber(bridge.endpoint, [CHANNEL], green=True)
        subscriber.wait_connected(timeout=10)
    try:
        with _step(f"inserting {_EVENTS} rows: the rules NOTIFY, the bridge publishes"):
            for i in range(_EVENTS):
                ipool.run(
                    "INSERT INTO test_values (val1, val2) VALUES (%s, %s)", (i % 9 + 1, i)
                ).get(timeout=30)
            received: list[Notification] = []
            other = 0
            while len(received) < _EVENTS:
                event = subscriber.get(timeout=10)
                if isinstance(event, Notification):
                    received.append(event)
                else:
                    other += 1
        for event in received[:3]:
            print(f"    {event.channel} seq={event.seq} payload={event.payload!r}", flush=True)
        if len(received) > 3:
            print(f"    … and {len(received) - 3} more", flush=True)
        seqs = [n.seq for n in received]
        contiguous = seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        return {
            "bridge": bridge.endpoint,
            "notifications across ZeroMQ": f"{len(received)} of {_EVENTS}, "
            f"sequence {'contiguous' if contiguous else 'with gaps'}, {other} other events",
        }
    finally:
        subscriber.close()
        bridge.close()


if __name__ == "__main__":
    sys.exit(run_demo())
