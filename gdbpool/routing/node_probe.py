"""NodeProbe: the greenlet that asks one server, again and again, what it is now.

Every node of an interaction pool (its first DSN and every ``add_pool``) has
one.  It keeps its own connection (``application_name`` ``gdbpool-probe:<pool>``),
not one of the pool's, so that a probe never waits behind the pool's queue and
a server that is down is seen as soon as a connection attempt is refused.  Each
``interval`` seconds, or at once when :meth:`NodeProbe.probe_now` is called
(a write failed with 25006 or on a lost connection, ``resume()``), it runs one
statement and tells the router a :class:`NodeStatus`:

* ``pg_is_in_recovery()`` and ``default_transaction_read_only``: a node is
  *writable* when it is in neither;
* on a standby, ``pg_last_wal_replay_lsn()`` and the lag in seconds:
  ``now() - pg_last_xact_replay_timestamp()`` while it has received WAL it has
  not replayed yet, else 0 (an idle primary writes no transactions, so the
  timestamp alone would grow without any lag); None (unknown) while WAL waits
  but nothing was replayed since the standby started;
* on a standby, the lag in bytes against ``pg_current_wal_insert_lsn()`` of the
  current primary, asked through the primary's pool at the same moment
  (``submit_primary``); None when that fails.

A probe that cannot connect, fails or takes longer than ``timeout`` seconds
reports the node unreachable and closes its connection (the next probe opens a
new one).  No error ends the probe greenlet.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import psycopg2
from gevent import Greenlet
from gevent.event import Event
from gevent.lock import Semaphore

from gdbpool.green import shutdown_socket
from gdbpool.interaction import Interaction
from gdbpool.logging import get_logger
from gdbpool.routing.replicas import lsn_to_int

__all__ = ["NodeProbe", "NodeStatus"]

_NODE_SQL = """
SELECT pg_is_in_recovery(),
       current_setting('default_transaction_read_only') = 'on',
       pg_last_wal_replay_lsn()::text,
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() IS NULL
                 OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0.0
            ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())
       END::float8
"""
_PRIMARY_SQL = "SELECT pg_current_wal_insert_lsn()::text"


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One probe's findings about the server of pool ``pool``.

    ``reachable``: the probe connected and got its answer within the probe
    timeout.  ``in_recovery``/``read_only``: ``pg_is_in_recovery()`` and
    ``default_transaction_read_only`` (None when unreachable).  ``replay_lsn``,
    ``lag_seconds`` and ``lag_bytes`` are set for a standby only.
    """

    pool: str
    reachable: bool
    in_recovery: bool | None = None
    read_only: bool | None = None
    replay_lsn: int | None = None
    lag_seconds: float | None = None
    lag_bytes: int | None = None
    checked_at: float = 0.0
    error: str | None = None

    @property
    def writable(self) -> bool:
        """True when the server takes writes: reachable, not a standby, not read-only."""
        return self.reachable and self.in_recovery is False and self.read_only is False


class NodeProbe:
    """Probes one server every ``interval`` seconds on its own connection (module docstring).

    ``report`` receives each :class:`NodeStatus`; ``submit_primary`` hands an
    :class:`Interaction` to the current primary's pool (for a standby's lag in
    bytes).
    """

    def __init__(
        self,
        name: str,
        dsn: str,
        submit_primary: Callable[[Interaction], None],
        report: Callable[[NodeStatus], None],
        interval: float,
        timeout: float,
    ) -> None:
        self.name = name
        self._dsn = dsn
        self._submit_primary = submit_primary
        self._report = report
        self._interval = interval
        self._timeout = timeout
        self._conn: Any = None
        self._lock = Semaphore()
        self._wake = Event()
        self._greenlet: Greenlet[Any, Any] | None = None
        self._stopping = False

    def start(self) -> None:
        """Start probing (the first probe runs at once)."""
        self._greenlet = gevent.spawn(self._loop)
        self._greenlet.name = f"probe:{self.name}"

    def stop(self) -> None:
        """Stop probing and close the probe connection; returns when the greenlet is gone."""
        self._stopping = True
        self._wake.set()
        if self._greenlet is not None:
            # Let a probe in progress finish (bounded by its timeout) rather than
            # kill it mid-query, which would leave a cancel greenlet behind.
            self._greenlet.join(timeout=self._timeout + 1)
            self._greenlet.kill(block=True, timeout=1)
            self._greenlet = None
        self._close()

    def probe_now(self) -> None:
        """Probe at once instead of at the end of the interval (never blocks)."""
        self._wake.set()

    def probe_and_report(self) -> NodeStatus:
        """Probe now on the caller's greenlet, report the status and return it."""
        status = self.probe_once()
        self._report(status)
        return status

    def probe_once(self) -> NodeStatus:
        """Run one probe and return its status (one at a time per node)."""
        with self._lock:
            now = time.time()
            try:
                with gevent.Timeout(self._timeout):
                    in_recovery, read_only, replay, lag_s = self._query()
            except gevent.Timeout:
                self._close()
                return NodeStatus(self.name, False, checked_at=now, error="probe timed out")
            except psycopg2.Error as exc:
                self._close()
                error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                return NodeStatus(self.name, False, checked_at=now, error=error)
        if not in_recovery:
            return NodeStatus(self.name, True, False, bool(read_only), checked_at=now)
        replay_lsn = lsn_to_int(replay) if replay else None
        return NodeStatus(
            self.name,
            True,
            True,
            True,
            replay_lsn=replay_lsn,
            lag_seconds=None if lag_s is None else float(lag_s),
            lag_bytes=self._lag_bytes(replay_lsn),
            checked_at=now,
        )

    def _query(self) -> tuple[Any, ...]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(
                self._dsn,
                connect_timeout=max(1, int(self._timeout + 0.999)),
                application_name=f"gdbpool-probe:{self.name}",
            )
            self._conn.autocommit = True
        with self._conn.cursor() as cur:
            cur.execute(_NODE_SQL)
            row: tuple[Any, ...] = cur.fetchone()
        return row

    def _lag_bytes(self, replay_lsn: int | None) -> int | None:
        if replay_lsn is None:
            return None
        primary = Interaction(_PRIMARY_SQL, read_only=True, timeout=self._timeout)
        try:
            self._submit_primary(primary)
            ((current,),) = primary.reply.get(timeout=self._timeout + 1)
        except (Exception, gevent.Timeout):
            return None  # unknown lag: a bytes bound refuses it
        return max(0, lsn_to_int(current) - replay_lsn)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):
                shutdown_socket(conn)
            with contextlib.suppress(Exception):
                conn.close()

    def _loop(self) -> None:
        log = get_logger("gdbpool.router", pool=self.name)
        while not self._stopping:
            self._wake.clear()
            try:
                self.probe_and_report()
            except Exception as exc:  # a probe must never end: routing would freeze on it
                log.error("node_probe_failed", error=str(exc))
            if not self._stopping:
                self._wake.wait(self._interval)
