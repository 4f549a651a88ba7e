"""The Notification record, the Reconnected gap event, and PostgreSQL's NOTIFY limits.

A :class:`Notification` is what a subscriber receives for one ``NOTIFY``: the
channel, the payload (always ``str``; :meth:`Notification.json` decodes it),
the pid of the backend that sent it, when this process received it, and a
sequence number.  ``seq`` counts the notifications one hub received, in
receive order, from 1; ``source`` is that hub's random id, so ``(source,
seq)`` identifies a notification and a jump in ``seq`` seen downstream (e.g.
through the ZeroMQ bridge) means something was lost on the way.

A :class:`Reconnected` event is put into every subscription when the LISTEN
connection was lost and has been re-established: PostgreSQL does not replay
notifications sent while nobody listened, so anything sent in between may be
missing.  Applications that keep state in sync with NOTIFY should re-read it.

Limits checked before anything reaches the server:

* payloads: PostgreSQL's limit is 8000 bytes including the terminating NUL,
  i.e. at most :data:`MAX_PAYLOAD_BYTES` (7999) bytes of UTF-8;
* channel names: identifiers of 1 to :data:`MAX_CHANNEL_BYTES` (63) bytes of
  UTF-8 without NUL.  PostgreSQL would silently truncate a longer name (two
  long names could then collide), so they are rejected instead.
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass
from typing import Any

from gdbpool.errors import NotificationError
from gdbpool.read_your_writes import ReadYourWrites

__all__ = [
    "MAX_CHANNEL_BYTES",
    "MAX_PAYLOAD_BYTES",
    "Notification",
    "Reconnected",
    "check_channel",
    "check_payload",
]

#: Longest NOTIFY payload PostgreSQL accepts, in UTF-8 bytes (8000 with the NUL).
MAX_PAYLOAD_BYTES = 7999
#: Longest channel name (an identifier, NAMEDATALEN - 1), in UTF-8 bytes.
MAX_CHANNEL_BYTES = 63


@dataclass(frozen=True, slots=True)
class Notification:
    """One NOTIFY as received by a hub.

    ``channel`` and ``payload`` are exactly what was sent (``payload`` is ``""``
    for a bare ``NOTIFY channel``), ``pid`` the sending backend's process id,
    ``received_at`` the ``time.time()`` at which the hub read it from the
    socket, ``seq`` its 1-based position in everything the hub ``source``
    received.  ``replayed`` is True for a notification a
    :class:`~gdbpool.NotifySubscriber` recovered from a bridge's replay ring
    after it was lost on the way (its other fields are as first published),
    or a durable subscription read from the log table after a reconnect.

    ``log_id`` is the row id in ``gdbpool.notify_log`` for a notification of a
    durable channel (None otherwise; ``payload`` is then the application's
    payload, without the id prefix).  ``lsn`` is a WAL position of the primary
    at or past the sending transaction's commit (read by the hub once per
    received batch; None when unknown): :meth:`session` turns it into a
    read-your-writes token.  See docs/design/durable.md.
    """

    channel: str
    payload: str
    pid: int
    received_at: float
    seq: int
    source: str
    replayed: bool = False
    log_id: int | None = None
    lsn: int | None = None

    def session(self) -> ReadYourWrites:
        """A read-your-writes token at :attr:`lsn`: ``ipool.run(..., read_only=True, session=...)``.

        A read carrying it goes to a replica only once that replica has
        replayed the sender's commit (to the primary otherwise).  Without a
        known ``lsn`` the token sends reads to the primary.
        """
        token = ReadYourWrites()
        token.advance((1 << 64) - 1 if self.lsn is None else self.lsn)
        return token

    def json(self) -> Any:
        """Decode the payload as JSON.

        Raises :class:`NotificationError` (the ``json`` error chained) when the
        payload is not valid JSON; the message names channel and seq.
        """
        try:
            return _json.loads(self.payload)
        except ValueError as exc:
            raise NotificationError(
                f"payload of notification {self.seq} on channel {self.channel!r} is not "
                f"valid JSON ({exc}); payload starts with {self.payload[:60]!r}"
            ) from exc


@dataclass(frozen=True, slots=True)
class Reconnected:
    """Gap event: the LISTEN connection was lost and is listening again.

    Notifications sent between the loss and ``at`` (``time.time()`` when
    LISTEN was re-issued) may be missing.  ``channels`` are the channels
    listened again, ``reason`` says why the connection was lost.
    """

    channels: tuple[str, ...]
    at: float
    reason: str


def _fast_constructor() -> Any:
    """``Notification(...)`` for the receive path, about 40 % cheaper.

    The dataclass ``__init__`` of a frozen class sets each field through
    ``object.__setattr__``; calling the slot descriptors directly builds the
    same (equal, immutable) object faster, which matters at 10^5 notifications/s.
    """
    new = object.__new__
    slots = vars(Notification)
    set_channel, set_payload, set_pid, set_at, set_seq, set_source, set_replayed = (
        slots[name].__set__
        for name in ("channel", "payload", "pid", "received_at", "seq", "source", "replayed")
    )
    set_log_id, set_lsn = slots["log_id"].__set__, slots["lsn"].__set__

    def make(
        channel: str,
        payload: str,
        pid: int,
        received_at: float,
        seq: int,
        source: str,
        lsn: int | None = None,
    ) -> Notification:
        n = new(Notification)
        set_channel(n, channel)
        set_payload(n, payload)
        set_pid(n, pid)
        set_at(n, received_at)
        set_seq(n, seq)
        set_source(n, source)
        set_replayed(n, False)
        set_log_id(n, None)
        set_lsn(n, lsn)
        return n

    return make


make_notification = _fast_constructor()


def check_payload(payload: str) -> str:
    """Return ``payload`` if PostgreSQL accepts it as a NOTIFY payload.

    Raises :class:`NotificationError` when it is not a ``str``, contains NUL,
    is not valid UTF-8 text (a lone surrogate), or is longer than
    :data:`MAX_PAYLOAD_BYTES` bytes in UTF-8 — before any round trip to the
    server.
    """
    if not isinstance(payload, str):
        raise NotificationError(
            f"NOTIFY payload must be str, not {type(payload).__name__}; encode it (e.g. json.dumps)"
        )
    _check_text(payload, "NOTIFY payload")
    # Cheap upper bound first: a UTF-8 character is at most 4 bytes.
    if len(payload) * 4 > MAX_PAYLOAD_BYTES:
        size = len(payload.encode("utf-8"))
        if size > MAX_PAYLOAD_BYTES:
            raise NotificationError(
                f"NOTIFY payload is {size} bytes of UTF-8; PostgreSQL accepts at most "
                f"{MAX_PAYLOAD_BYTES}. Send a key and let listeners fetch the data instead."
            )
    if "\x00" in payload:
        raise NotificationError("NOTIFY payload must not contain NUL characters")
    return payload


def _check_text(text: str, what: str) -> None:
    """NotificationError if ``text`` cannot be sent as UTF-8 (a lone surrogate).

    Python puts lone surrogates where it could not decode bytes (a Latin-1
    byte in ``sys.argv`` becomes ``"\\udce9"``); psycopg2 would fail on them
    only when encoding the query.  ASCII text is checked in constant time.
    """
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise NotificationError(
                f"{what} is not valid UTF-8 text: a lone surrogate at position {exc.start} "
                "(bytes that were not UTF-8, e.g. Latin-1, on the command line or stdin?)"
            ) from None


def check_channel(channel: str) -> str:
    """Return ``channel`` if it is a usable channel name (any identifier text).

    Raises :class:`NotificationError` when it is not a ``str``, is empty,
    contains NUL or a lone surrogate (not UTF-8), or is longer than
    :data:`MAX_CHANNEL_BYTES` bytes in UTF-8
    (PostgreSQL would truncate it silently).  Spaces, quotes, semicolons and
    mixed case are fine: names are always quoted, never folded.
    """
    if not isinstance(channel, str):
        raise NotificationError(f"channel name must be str, not {type(channel).__name__}")
    if not channel:
        raise NotificationError("channel name must not be empty")
    if "\x00" in channel:
        raise NotificationError("channel name must not contain NUL characters")
    _check_text(channel, "channel name")
    size = len(channel.encode("utf-8"))
    if size > MAX_CHANNEL_BYTES:
        raise NotificationError(
            f"channel name {channel[:20]!r}... is {size} bytes of UTF-8; PostgreSQL identifiers "
            f"are at most {MAX_CHANNEL_BYTES} bytes (longer names are truncated and could collide)"
        )
    return channel
