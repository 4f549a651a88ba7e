"""What the router knows about a replica: health, replay position and lag.

Measured by each node's :class:`~gdbpool.routing.node_probe.NodeProbe`; the
router turns a standby's :class:`~gdbpool.routing.node_probe.NodeStatus` into
the :class:`ReplicaStatus` reads are routed on.

A replica that fails its probe, or is found not in recovery (promoted, or a
primary configured as a replica), is unhealthy until a good probe brings it
back.  Reads are routed on the last report, so a replica that dies is used
until the next probe notices (at most ``interval`` + ``probe timeout``
seconds); ``read_only`` interactions that fail in that window fail like any
other.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ReplicaStatus", "lsn_to_int"]


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
