"""The bridge's replay side: a ring of recent messages per channel and the ROUTER that serves it.

:class:`ReplayRing` keeps the last ``size`` messages published on each
bridged channel, as the exact header and payload frames that went out on the
PUB socket.  The bridge's publisher actor writes it; :class:`ReplayServer`
(one greenlet on a ``zmq.green`` ROUTER socket) reads it.  Both run on the
bridge's gevent hub and neither yields while touching the ring, so no lock
is needed.

The server is bounded against any requester, honest or hostile (decisions:
docs/design/bridge.md, "Replay"):

* a request is one frame of at most
  :data:`~gdbpool.notify.wire.REPLAY_MAX_REQUEST_BYTES` (ZeroMQ disconnects
  a peer that sends more); an answer covers at most
  :data:`~gdbpool.notify.wire.REPLAY_MAX_RANGE` messages;
* one request per peer is kept (a newer one replaces an older unanswered
  one), at most :data:`MAX_WAITING_PEERS` peers wait, the rest are told
  ``busy``;
* answers, refusals included, are paced to ``rate`` messages per second, so
  replay never takes more than that from publishing.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Sequence
from operator import itemgetter
from typing import Final

import zmq
from gevent.event import Event

from gdbpool.errors import WireFormatError
from gdbpool.logging import get_logger
from gdbpool.notify.wire import (
    REPLAY_MAX_RANGE,
    REPLAY_MAX_REQUEST_BYTES,
    ReplayRequest,
    decode_replay_request,
    encode_replay_answer,
    encode_replay_error,
)

__all__ = [
    "DEFAULT_REPLAY_RATE",
    "DEFAULT_REPLAY_SIZE",
    "MAX_WAITING_PEERS",
    "ReplayRing",
    "ReplayServer",
]

#: Messages kept per channel for replay (0 turns replay off).
DEFAULT_REPLAY_SIZE: Final = 10_000
#: Replayed messages per second the server sends at most, over all requesters.
DEFAULT_REPLAY_RATE: Final = 50_000
#: Peers whose request may wait at once; more are answered ``busy``.
MAX_WAITING_PEERS: Final = 256
#: Requests read per round before answering (a flood cannot starve answers).
_READ_BATCH: Final = 256

_Entry = tuple[int, bytes, bytes]  # seq, header frame, payload frame
_seq_of = itemgetter(0)


class ReplayRing:
    """The last ``size`` published messages of each channel, oldest first."""

    def __init__(self, channels: Sequence[str], size: int) -> None:
        self.size = size
        self._rings: dict[str, deque[_Entry]] = {c: deque(maxlen=size) for c in channels}
        self._last: dict[str, int] = dict.fromkeys(channels, 0)

    def add(self, channel: str, seq: int, header: bytes, payload: bytes) -> None:
        """Keep one published message (the oldest falls out when the ring is full)."""
        ring = self._rings.get(channel)
        if ring is not None:
            ring.append((seq, header, payload))
            self._last[channel] = seq

    def drop(self, channel: str) -> None:
        """Forget ``channel`` (it is no longer bridged)."""
        self._rings.pop(channel, None)
        self._last.pop(channel, None)

    def window(
        self, channel: str, first: int, last: int, cap: int = REPLAY_MAX_RANGE
    ) -> tuple[int, int, list[tuple[bytes, bytes]]] | None:
        """What the ring holds of ``first`` .. ``last`` (at most ``cap`` seqs), or None.

        Returns ``(covered_last, available_from, entries)``: the range answered
        is ``first`` .. ``covered_last`` (cut at ``cap`` and at the last seq
        published), ``available_from`` the oldest seq held (the next one to be
        published when the ring is empty), ``entries`` the held messages of
        the range in order.  None when ``channel`` is not bridged.
        """
        ring = self._rings.get(channel)
        if ring is None:
            return None
        newest = self._last[channel]
        covered = min(last, first + cap - 1, newest)
        available = ring[0][0] if ring else newest + 1
        if covered < max(first, available):
            return covered, available, []
        start = bisect.bisect_left(ring, first, key=_seq_of)
        entries: list[tuple[bytes, bytes]] = []
        for seq, header, payload in itertools.islice(ring, start, None):
            if seq > covered:
                break
            entries.append((header, payload))
        return covered, available, entries


class ReplayServer:
    """Answers replay requests on a ROUTER socket from a :class:`ReplayRing`.

    :meth:`serve` is the greenlet body (the bridge spawns and kills it);
    :attr:`counts` are its counters, merged into the bridge's ``stats()``.
    """

    def __init__(
        self,
        socket: zmq.Socket[bytes],
        ring: ReplayRing,
        *,
        source: str,
        bridge: str,
        rate: int = DEFAULT_REPLAY_RATE,
        stop: Event | None = None,
    ) -> None:
        self._socket = socket
        self._ring = ring
        self._source = source
        self._bridge = bridge
        self._rate = rate
        self._stop = stop or Event()
        self._waiting: dict[bytes, ReplayRequest] = {}
        self.counts = {
            "replay_requests": 0,
            "replay_answers": 0,
            "replay_messages": 0,
            "replay_refused": 0,
            "replay_unsent": 0,
        }
        self._log = get_logger("gdbpool.bridge", bridge=bridge, source=source)

    @staticmethod
    def configure(socket: zmq.Socket[bytes]) -> None:
        """Bounds set on the ROUTER before it binds (see the module docstring)."""
        socket.maxmsgsize = REPLAY_MAX_REQUEST_BYTES
        socket.rcvhwm = 64
        socket.sndhwm = 16
        socket.linger = 0

    def serve(self) -> None:
        """Read requests, answer one peer at a time, pace by cost; until killed."""
        while not self._stop.is_set():
            cost = self._read(block=not self._waiting)
            if self._waiting:
                peer = next(iter(self._waiting))
                cost += self._answer(peer, self._waiting.pop(peer))
            if cost and self._stop.wait(cost / self._rate):
                return

    # -- internals ----------------------------------------------------------

    def _read(self, *, block: bool) -> int:
        """Take up to a batch of requests into the waiting set; return the cost of refusals."""
        cost = 0
        for n in range(_READ_BATCH):
            try:
                frames = self._socket.recv_multipart(0 if block and n == 0 else zmq.NOBLOCK)
            except zmq.Again:
                break
            peer, body = frames[0], frames[1:]
            self.counts["replay_requests"] += 1
            try:
                request = decode_replay_request(body)
            except WireFormatError as exc:
                cost += self._refuse(peer, None, f"bad request: {exc}")
                continue
            if peer not in self._waiting and len(self._waiting) >= MAX_WAITING_PEERS:
                cost += self._refuse(peer, request.id, "busy: too many requesters, retry later")
                continue
            self._waiting[peer] = request  # one per peer: the newest one wins
        return cost

    def _answer(self, peer: bytes, request: ReplayRequest) -> int:
        if request.source != self._source:
            return self._refuse(
                peer,
                request.id,
                f"unknown source {request.source[:32]!r}: this bridge run is {self._source}",
            )
        window = self._ring.window(request.channel, request.first, request.last)
        if window is None:
            return self._refuse(
                peer, request.id, f"channel {request.channel[:64]!r} is not bridged here"
            )
        covered, available, entries = window
        frames = encode_replay_answer(
            id=request.id,
            source=self._source,
            bridge=self._bridge,
            channel=request.channel,
            first=request.first,
            last=covered,
            available_from=available,
            entries=entries,
        )
        if self._send(peer, frames):
            self.counts["replay_answers"] += 1
            self.counts["replay_messages"] += len(entries)
        return max(1, len(entries))

    def _refuse(self, peer: bytes, request_id: int | None, error: str) -> int:
        self.counts["replay_refused"] += 1
        self._log.info("replay_refused", error=error)
        self._send(peer, encode_replay_error(request_id, error))
        return 1

    def _send(self, peer: bytes, frames: list[bytes]) -> bool:
        try:
            self._socket.send_multipart([peer, *frames], flags=zmq.NOBLOCK)
        except zmq.Again:  # that peer does not read its answers: drop, never wait
            self.counts["replay_unsent"] += 1
            return False
        except zmq.ZMQError as exc:
            self.counts["replay_unsent"] += 1
            self._log.info("replay_send_failed", error=exc.strerror)
            return False
        return True
