"""What an interaction pool knows about its servers: roles, and the events of changes.

:class:`NodeState` is one entry of ``ipool.topology()``; :class:`PrimaryChanged`,
:class:`NodeUp` and :class:`NodeDown` are what ``ipool.watch_topology()``
yields, through a :class:`TopologyWatch`.  The decisions (who becomes the
primary, when writes wait) are in docs/design/router.md, "Following the primary".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import gevent
from gevent.queue import Empty, Queue

from gdbpool.routing.node_probe import NodeStatus

__all__ = ["NodeDown", "NodeRole", "NodeState", "NodeUp", "PrimaryChanged", "TopologyWatch"]

#: A node's role as the router sees it now (see :meth:`DBInteractionPool.topology`).
NodeRole = Literal["primary", "replica", "down", "unknown"]


@dataclass(frozen=True, slots=True)
class NodeState:
    """One pool's role and the last probe of its server (None before the first)."""

    name: str
    role: NodeRole
    last_probe: NodeStatus | None


@dataclass(frozen=True, slots=True)
class PrimaryChanged:
    """Writes go to ``new`` now (None: no primary; writes wait), since ``at`` (``time.time()``)."""

    old: str | None
    new: str | None
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class NodeUp:
    """Node ``name`` answers its probes again, as ``role``."""

    name: str
    role: NodeRole
    at: float


@dataclass(frozen=True, slots=True)
class NodeDown:
    """Node ``name`` stopped answering its probes (``error`` says how)."""

    name: str
    at: float
    error: str


TopologyEvent = PrimaryChanged | NodeUp | NodeDown


class TopologyWatch:
    """The events of one ``watch_topology()`` call: iterate, or ``get(timeout)``; ``close()``.

    Unbounded: topology events are rare (a few per failover).  Iteration ends
    when the watch or its interaction pool is closed.
    """

    def __init__(self) -> None:
        self._queue: Queue[TopologyEvent | None] = Queue()
        self.closed = False

    def put(self, event: TopologyEvent) -> None:
        """Deliver ``event`` (the router calls this; never blocks)."""
        if not self.closed:
            self._queue.put(event)

    def get(self, timeout: float | None = None) -> TopologyEvent:
        """The next event; ``gevent.Timeout`` after ``timeout`` s, ``EOFError`` once closed."""
        try:
            event: TopologyEvent | None = self._queue.get(timeout=timeout)
        except Empty:
            raise gevent.Timeout(timeout) from None
        if event is None:
            self._queue.put(None)  # keep later get() calls answered
            raise EOFError("the topology watch is closed")
        return event

    def close(self) -> None:
        """Stop receiving; an iteration in progress ends after the events already queued."""
        if not self.closed:
            self.closed = True
            self._queue.put(None)

    def __iter__(self) -> Iterator[TopologyEvent]:
        while True:
            try:
                yield self.get()
            except EOFError:
                return

    def __enter__(self) -> TopologyWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
