"""Durable channels: the log table, its SQL function, catch-up reads and pruning.

The rules (why the cursor is a snapshot horizon and not a log id, what prune
keeps) are in docs/design/durable.md; this module is their SQL.

``gdbpool.notify(channel, payload)`` (installed by :func:`install`) inserts one
row into ``gdbpool.notify_log`` and sends ``NOTIFY channel, '<id>:<xid>:<payload>'``:
the log id and the writing transaction's id (xid8) ride in front of the
application's payload, so a durable subscription knows both without a round
trip.  :func:`parse` splits them off again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg2.errors

from gdbpool.errors import ConfigurationError, NotificationError, check_type
from gdbpool.notify.notification import MAX_PAYLOAD_BYTES

__all__ = [
    "DEFAULT_PRUNE_KEEP",
    "DEFAULT_PRUNE_OLDER_THAN",
    "INSTALL_SQL",
    "MAX_DURABLE_PAYLOAD_BYTES",
    "CatchUp",
    "check_durable_payload",
    "check_prune_options",
    "install",
    "parse",
    "prune",
    "read_missed",
    "write",
]

#: Rows younger than this many seconds are never pruned by default (7 days).
DEFAULT_PRUNE_OLDER_THAN = 7 * 24 * 3600.0
#: By default the newest this many rows of each channel stay, however old.
DEFAULT_PRUNE_KEEP = 1000
#: The id and xid prefix (two int64 in decimal and two colons) takes at most 40 bytes.
MAX_DURABLE_PAYLOAD_BYTES = MAX_PAYLOAD_BYTES - 40

# Idempotent: IF NOT EXISTS / OR REPLACE everywhere, safe to run at every start; one
# transaction behind an advisory lock, so processes installing at once do not collide.
# The function is SECURITY INVOKER (the caller needs INSERT on the table).
INSTALL_SQL = """
SELECT pg_advisory_xact_lock(7436907151830137699);
CREATE SCHEMA IF NOT EXISTS gdbpool;
CREATE TABLE IF NOT EXISTS gdbpool.notify_log (
    id bigserial PRIMARY KEY,
    channel text NOT NULL,
    payload text NOT NULL DEFAULT '',
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    created timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS notify_log_channel_xid ON gdbpool.notify_log (channel, xid);
CREATE OR REPLACE FUNCTION gdbpool.notify(channel text, payload text DEFAULT '')
RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    new_id bigint;
    new_xid xid8;
BEGIN
    INSERT INTO gdbpool.notify_log (channel, payload)
        VALUES (notify.channel, coalesce(notify.payload, ''))
        RETURNING notify_log.id, notify_log.xid INTO new_id, new_xid;
    PERFORM pg_notify(notify.channel, new_id::text || ':' || new_xid::text || ':'
                      || coalesce(notify.payload, ''));
    RETURN new_id;
END
$fn$;
"""

# Horizon and the rows a cursor has not passed, from one snapshot (one statement).
_READ_SQL = """
SELECT h.horizon::text, h.lsn, l.id, l.payload, l.xid::text
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon,
             (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint AS lsn) AS h
LEFT JOIN gdbpool.notify_log AS l
    ON l.channel = %s AND l.xid >= coalesce(%s::xid8, h.horizon) AND l.id > %s
ORDER BY l.id
"""

_PRUNE_SQL = """
DELETE FROM gdbpool.notify_log AS l
WHERE l.created < now() - make_interval(secs => %s)
  AND l.id <= coalesce((
        SELECT k.id FROM gdbpool.notify_log AS k
        WHERE k.channel = l.channel ORDER BY k.id DESC OFFSET %s LIMIT 1
      ), 0)
  AND NOT EXISTS (
        SELECT 1 FROM unnest(%s::text[], %s::xid8[]) AS p(channel, cursor)
        WHERE p.channel = l.channel AND l.xid >= p.cursor
      )
"""


@dataclass(frozen=True, slots=True)
class CatchUp:
    """One catch-up read: the new horizon, a WAL position past every row, the rows.

    ``rows`` are ``(id, payload, xid)`` in id order.
    """

    horizon: int
    lsn: int
    rows: tuple[tuple[int, str, int], ...]


def install(cursor: Any) -> None:
    """Create (or update) the schema, table, index and function on ``cursor``'s connection."""
    cursor.execute(INSTALL_SQL)


def check_durable_payload(payload: str) -> str:
    """Refuse a payload that would not fit a NOTIFY once the id prefix is added."""
    if len(payload) * 4 > MAX_DURABLE_PAYLOAD_BYTES:
        size = len(payload.encode("utf-8"))
        if size > MAX_DURABLE_PAYLOAD_BYTES:
            raise NotificationError(
                f"durable NOTIFY payload is {size} bytes of UTF-8; at most "
                f"{MAX_DURABLE_PAYLOAD_BYTES} fit beside the log id"
            )
    return payload


#: ``SELECT gdbpool.notify(%s, %s)``: what ``notify(..., durable=True)`` runs.
write = "SELECT gdbpool.notify(%s, %s)"


def parse(payload: str) -> tuple[int, int, str] | None:
    """``'<id>:<xid>:<payload>'`` → ``(id, xid, payload)``; None if not in that form."""
    head, sep, rest = payload.partition(":")
    if not sep or not head.isdigit():
        return None
    xid, sep, body = rest.partition(":")
    if not sep or not xid.isdigit():
        return None
    return int(head), int(xid), body


def read_missed(cursor: Any, channel: str, horizon: int | None, after_id: int) -> CatchUp:
    """The rows of ``channel`` with ``xid >= horizon`` and ``id > after_id``, and the new horizon.

    ``horizon=None`` means the current one (the rows not final yet).  One
    statement, so the horizon and the rows come from one snapshot.
    """
    try:
        cursor.execute(_READ_SQL, (channel, None if horizon is None else str(horizon), after_id))
    except psycopg2.errors.UndefinedTable as exc:
        raise NotificationError(
            "durable channels are not installed in this database: run install_durable() first"
        ) from exc
    fetched = cursor.fetchall()
    if not fetched:  # pragma: no cover - the LEFT JOIN always yields the horizon row
        raise NotificationError("catch-up read returned no horizon")
    rows = tuple((int(r[2]), r[3], int(r[4])) for r in fetched if r[2] is not None)
    return CatchUp(int(fetched[0][0]), int(fetched[0][1]), rows)


def check_prune_options(older_than: float, keep: int) -> None:
    """ArgumentTypeError / ConfigurationError unless ``older_than`` >= 0 s and ``keep`` >= 0."""
    check_type("older_than", older_than, (int, float), "a number of seconds")
    check_type("keep", keep, int, "an int")
    if not older_than >= 0:
        raise ConfigurationError(f"older_than must be >= 0 seconds, not {older_than!r}")
    if keep < 0:
        raise ConfigurationError(f"keep must be >= 0, not {keep!r}")


def prune(cursor: Any, older_than: float, keep: int, protected: dict[str, int]) -> int:
    """Delete old rows (see docs/design/durable.md); ``protected``: channel → lowest cursor."""
    check_prune_options(older_than, keep)
    channels = list(protected)
    cursors = [str(protected[c]) for c in channels]
    cursor.execute(_PRUNE_SQL, (float(older_than), keep, channels, cursors))
    return int(cursor.rowcount)
