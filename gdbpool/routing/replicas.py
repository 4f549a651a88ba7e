"""What the router knows about a replica: health, replay position and lag.

A :class:`ReplicaProbe` greenlet per replica measures, every ``interval``
seconds, through the replica's own pool (so a probe waits its turn like any
interaction and never blocks the router):

* ``pg_is_in_recovery()`` and ``pg_last_wal_replay_lsn()`` on the replica;
* ``pg_current_wal_insert_lsn()`` on the primary, for the lag in bytes;
* the lag in seconds: ``now() - pg_last_xact_replay_timestamp()`` while the
  replica has received WAL it has not replayed yet, else 0 (an idle primary
  writes no transactions, so the timestamp alone would grow without any lag).
  It is None (unknown) while WAL waits but no transaction has been replayed
  since the replica started; a seconds bound then treats the replica as too far
  behind until it replays one.

It tells the router a :class:`ReplicaStatus` after each probe.  A probe that
fails or times out, or finds the server not in recovery (promoted, or a primary
configured as a replica), reports the replica unhealthy; the next good probe
brings it back.  No error ends the probe greenlet.  Reads are routed on the
last report, so a replica that dies is used until the next probe notices (at
most ``interval`` + ``probe timeout`` seconds);
``read_only`` interactions that fail in that window fail like any other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
from gevent import Greenlet

from gdbpool.interaction import Interaction
from gdbpool.logging import get_logger

__all__ = ["ReplicaProbe", "ReplicaStatus", "lsn_to_int"]

_REPLICA_SQL = """
SELECT pg_is_in_recovery(),
       pg_last_wal_replay_lsn()::text,
       CASE WHEN pg_last_wal_receive_lsn() IS NULL
                 OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0.0
            ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())
       END::float8
"""
_PRIMARY_SQL = "SELECT pg_current_wal_insert_lsn()::text"


def lsn_to_int(lsn: str) -> int:
    """``'16/B374D848'`` → a byte position that compares like the LSN."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """One probe's findings about replica ``pool``."""

    pool: str
    healthy: bool
    replay_lsn: int | None = None
    lag_seconds: float | None = None
    lag_bytes: int | None = None
    checked_at: float = 0.0
    error: str | None = None

    def acceptable(self, max_lag_seconds: float | None, max_lag_bytes: int | None) -> bool:
        """True when healthy and within both lag bounds (None: no bound).

        An unknown lag (None) is outside any bound that is set.
        """
        if not self.healthy:
            return False
        if max_lag_seconds is not None and (
            self.lag_seconds is None or self.lag_seconds > max_lag_seconds
        ):
            return False
        return not (
            max_lag_bytes is not None and (self.lag_bytes is None or self.lag_bytes > max_lag_bytes)
        )


class ReplicaProbe:
    """A greenlet that probes one replica every ``interval`` seconds.

    ``submit_replica`` / ``submit_primary`` hand an :class:`Interaction` to the
    replica's and the primary's pool; ``report`` receives each status.
    """

    def __init__(
        self,
        name: str,
        submit_replica: Callable[[Interaction], None],
        submit_primary: Callable[[Interaction], None],
        report: Callable[[ReplicaStatus], None],
        interval: float,
        timeout: float,
    ) -> None:
        self.name = name
        self._submit_replica = submit_replica
        self._submit_primary = submit_primary
        self._report = report
        self._interval = interval
        self._timeout = timeout
        self._greenlet: Greenlet[Any, Any] | None = None

    def start(self) -> None:
        """Start probing (the first probe runs at once)."""
        self._greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        """Stop probing; returns when the greenlet is gone."""
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=self._timeout + 1)
            self._greenlet = None

    def _abandon(self) -> None:
        """In a fork() child: the probing greenlet is the parent's; kill it (no switch here)."""
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.kill(block=False)

    def probe_once(self) -> ReplicaStatus:
        """Run one probe now and return its status (also used by tests)."""
        now = time.time()
        replica = Interaction(_REPLICA_SQL, read_only=True, timeout=self._timeout)
        primary = Interaction(_PRIMARY_SQL, read_only=True, timeout=self._timeout)
        try:
            self._submit_replica(replica)
            self._submit_primary(primary)
            ((in_recovery, replay, lag_s),) = replica.reply.get(timeout=self._timeout + 1)
        except gevent.Timeout:
            return ReplicaStatus(self.name, False, checked_at=now, error="probe timed out")
        except Exception as exc:
            return ReplicaStatus(self.name, False, checked_at=now, error=str(exc))
        if not in_recovery:
            # Promoted, or a primary configured as a replica: its data may have forked.
            return ReplicaStatus(
                self.name,
                False,
                checked_at=now,
                error="not in recovery: this server is not a replica",
            )
        replay_lsn = lsn_to_int(replay) if replay else None
        lag_bytes = None
        try:
            ((current,),) = primary.reply.get(timeout=self._timeout + 1)
            if replay_lsn is not None:
                lag_bytes = max(0, lsn_to_int(current) - replay_lsn)
        except (Exception, gevent.Timeout):  # noqa: S110 - unknown lag: a bytes bound refuses it
            pass
        return ReplicaStatus(
            self.name,
            True,
            replay_lsn=replay_lsn,
            lag_seconds=None if lag_s is None else float(lag_s),
            lag_bytes=lag_bytes,
            checked_at=now,
        )

    def _loop(self) -> None:
        log = get_logger("gdbpool.router", pool=self.name)
        while True:
            try:
                self._report(self.probe_once())
            except Exception as exc:  # a probe must never end: routing would freeze on it
                log.error("replica_probe_failed", error=str(exc))
            gevent.sleep(self._interval)
