"""A private primary and its streaming replica, for tests that change roles (``make_pair``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from gdbpool import EmbeddedPostgres


@dataclass
class PgPair:
    """The two servers of ``make_pair``; a test may promote, stop or demote either."""

    primary: EmbeddedPostgres
    replica: EmbeddedPostgres


def wait_caught_up(
    source: EmbeddedPostgres, standby: EmbeddedPostgres, timeout: float = 10.0
) -> None:
    """Block until ``standby`` has replayed everything ``source`` has flushed.

    The flush position, not the insert position: right after a WAL page
    boundary the insert position points past the next page's header, where no
    record is, and a standby never "replays" up to it until something else is
    written. ``make_pair`` servers commit with ``synchronous_commit=on``, so a
    commit that returned is flushed.
    """
    target = source.psql("SELECT pg_current_wal_flush_lsn()")
    deadline = time.monotonic() + timeout
    sql = f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"
    while standby.psql(sql) != "t":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{standby!r} did not replay up to {target} within {timeout} s")
        time.sleep(0.02)
