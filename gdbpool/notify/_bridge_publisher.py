"""BridgePublisher: the actor that owns a ZmqNotifyBridge's PUB socket, and its messages.

The bridge's pump greenlets tell it ``_Forward`` (one item of a channel) and
``_Unbridge`` (a channel whose hub is gone), its heartbeat greenlet tells it
``_Beat``; ``_Stats`` asks for its counters.  See :mod:`gdbpool.notify.bridge`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from actors import Actor, handles
from gdbpool.logging import get_logger
from gdbpool.notify.wire import encode_heartbeat, encode_notify, encode_reconnected

__all__ = ["BridgePublisher"]


@dataclass(frozen=True, slots=True)
class _Forward:
    """One item taken from a channel subscription; ``dropped`` is its drop count so far."""

    channel: str
    item: Any
    dropped: int


@dataclass(frozen=True, slots=True)
class _Unbridge:
    """The hub is closed for good: stop advertising ``channel`` in heartbeats."""

    channel: str


@dataclass(frozen=True, slots=True)
class _Beat:
    """Time to publish a heartbeat."""


@dataclass(frozen=True, slots=True)
class _Stats:
    """Ask for the publisher's counters."""


class BridgePublisher(Actor):
    """Owns the PUB socket and the per-channel sequence counters.

    Every ``_Forward`` becomes one message on its channel's topic; every
    ``_Beat`` one heartbeat of the channels still bridged (none: no
    heartbeat).  Sends never block.  The socket is closed when the actor
    stops.
    """

    def __init__(
        self,
        socket: zmq.Socket[bytes],
        channels: Sequence[str],
        source: str,
        bridge: str,
        heartbeat_interval: float,
    ) -> None:
        super().__init__()
        self._socket = socket
        self._source = source
        self._bridge = bridge
        self._interval = heartbeat_interval
        self._seqs: dict[str, int] = dict.fromkeys(channels, 0)
        self._seen_dropped: dict[str, int] = dict.fromkeys(channels, 0)
        self._counts = {
            "published": 0,
            "reconnected": 0,
            "heartbeats": 0,
            "dropped_in_bridge": 0,
            "send_failed": 0,
        }
        self._log = get_logger("gdbpool.bridge", bridge=bridge, source=source)

    def on_stop(self) -> None:
        self._socket.close(linger=0)

    @handles(_Forward)
    def forward(self, msg: _Forward) -> None:
        channel = msg.channel
        # Notifications the hub dropped from our subscription queue still take
        # sequence numbers: subscribers then see the loss as a gap.
        lost = msg.dropped - self._seen_dropped[channel]
        if lost > 0:
            self._seen_dropped[channel] = msg.dropped
            self._counts["dropped_in_bridge"] += lost
            self._log.warning("bridge_queue_overflow", channel=channel, dropped=lost)
        seq = self._seqs[channel] + lost + 1
        self._seqs[channel] = seq
        item = msg.item
        if hasattr(item, "payload"):
            frames = encode_notify(
                channel,
                item.payload,
                source=self._source,
                bridge=self._bridge,
                seq=seq,
                pid=item.pid,
                ts=item.received_at,
            )
            self._counts["published"] += 1
        else:
            reason = str(getattr(item, "reason", "listener reconnected"))
            frames = encode_reconnected(
                channel,
                source=self._source,
                bridge=self._bridge,
                seq=seq,
                ts=float(getattr(item, "at", time.time())),
                reason=reason,
            )
            self._counts["reconnected"] += 1
            self._log.warning("listener_reconnected_forwarded", channel=channel, reason=reason)
        self._send(frames)

    @handles(_Unbridge)
    def unbridge(self, msg: _Unbridge) -> None:
        self._seqs.pop(msg.channel, None)
        self._log.error("channel_unbridged", channel=msg.channel, remaining=len(self._seqs))

    @handles(_Beat)
    def beat(self, msg: _Beat) -> None:
        if not self._seqs:
            return  # nothing is bridged any more: let subscribers see the silence
        self._counts["heartbeats"] += 1
        self._send(
            encode_heartbeat(
                source=self._source,
                bridge=self._bridge,
                ts=time.time(),
                interval=self._interval,
                seqs=self._seqs,
            )
        )

    @handles(_Stats)
    def stats(self, msg: _Stats) -> dict[str, int]:
        return dict(self._counts)

    def _send(self, frames: list[bytes]) -> None:
        try:
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            # PUB drops on its high-water mark rather than failing; count it anyway.
            self._counts["send_failed"] += 1
