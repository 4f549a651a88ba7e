"""Read-your-writes tokens: reads that must see a session's earlier writes.

Pass the same :class:`ReadYourWrites` as ``session=`` to a write and to later
reads.  After the write commits, its connection reads the primary's WAL
insert position (``pg_current_wal_insert_lsn()``: past the commit record even
with ``synchronous_commit=off``, where ``pg_current_wal_lsn()`` can still be
behind it; one extra round trip, only for writes that carry a session) into
the token; a read carrying the token is routed only to a
replica whose last probed replay position is at or past it, otherwise to the
primary.  The probe's position is older than the replica's real one, so the
rule can send a read to the primary needlessly, never to a replica that has not
replayed the write.

It lives in the core (not in :mod:`gdbpool.routing`) because a delivered
:class:`~gdbpool.notify.notification.Notification` hands one out too
(``event.session()``: the WAL position the hub read after receiving it, see
docs/design/durable.md).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ReadYourWrites"]

# Larger than any real LSN: no replica ever reaches it.
_PRIMARY_ONLY = (1 << 64) - 1


class ReadYourWrites:
    """A causality token: the WAL position a later read must have seen.

    One token belongs to one logical session (a request, a user); it is not
    a lock and may be shared between greenlets (it only ever moves forward).
    """

    __slots__ = ("lsn",)

    def __init__(self, lsn: int | None = None) -> None:
        self.lsn: int | None = lsn

    def advance(self, lsn: int) -> None:
        """Move the token forward to ``lsn`` (never backwards)."""
        if self.lsn is None or lsn > self.lsn:
            self.lsn = lsn

    def observe_commit(self, conn: Any) -> None:
        """Record the primary's WAL position after a commit on ``conn``.

        Never raises: the write has committed, so reporting it as failed would
        be wrong.  If the position cannot be read, the token moves to the end
        of time, which sends every later read of this session to the primary.
        """
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint")
                row = cur.fetchone()
            if not conn.autocommit:
                conn.rollback()
            self.advance(int(row[0]))
        except Exception:
            self.advance(_PRIMARY_ONLY)

    def __repr__(self) -> str:
        if self.lsn is None:
            return "ReadYourWrites(lsn=None)"
        return f"ReadYourWrites(lsn={self.lsn >> 32:X}/{self.lsn & 0xFFFFFFFF:X})"
