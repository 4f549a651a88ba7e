"""Bounded waits for server-side state that has no event to wait on."""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` (e.g. a pg_stat_activity count) until true or ``timeout``; say which."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.02)
    return True
