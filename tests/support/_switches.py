"""Counting greenlet switches, for the switch counts docs/benchmarks.md quotes."""

from __future__ import annotations

from collections.abc import Callable

import greenlet


def switches_per_call(op: Callable[[], object], calls: int = 1) -> float:
    """Greenlet switches (``greenlet.settrace``) per call of ``op``, over ``calls`` calls."""
    count = 0

    def trace(event: str, args: object) -> None:
        nonlocal count
        if event in ("switch", "throw"):
            count += 1

    old = greenlet.settrace(trace)
    try:
        for _ in range(calls):
            op()
    finally:
        greenlet.settrace(old)
    return count / calls
