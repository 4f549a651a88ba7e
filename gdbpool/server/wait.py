"""Connecting to a PostgreSQL server that may still be starting, within a bound.

Under gdbpool psycopg2 waits through a gevent callback (see
:mod:`gdbpool.green`), and libpq's own ``connect_timeout`` is then not
enforced: a server that accepts TCP but never answers would hang a connect
forever.  Every attempt here is therefore bounded by a ``gevent.Timeout``, and
the whole wait by its deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent
import psycopg2

from gdbpool.errors import GDBPoolError
from gdbpool.green import ensure_green
from gdbpool.logging import describe_dsn, redact

__all__ = [
    "ATTEMPT_TIMEOUT",
    "PERMANENT",
    "STEP_MAX",
    "connect_when_ready",
    "one_line",
    "wait_for_server",
]

#: Longest one connection attempt may take (seconds), however long the wait.
ATTEMPT_TIMEOUT = 5.0
#: Longest a backoff step between attempts gets (seconds); the first is 0.1 s.
STEP_MAX = 2.0
#: Fragments of libpq errors that waiting will not fix: they fail at once.
PERMANENT = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
    "authentication",
)


def one_line(exc: BaseException) -> str:
    """An error's message on one line, passwords masked (libpq messages span lines)."""
    return " ".join(redact(str(exc)).split())


def connect_when_ready(
    dsn: str,
    wait: float,
    *,
    application_name: str = "gdbpool-cli",
    attempt_timeout: float = ATTEMPT_TIMEOUT,
    pause: Callable[[float], None] = gevent.sleep,
) -> Any:
    """An open psycopg2 connection to ``dsn``, retrying for at most ``wait`` seconds.

    Attempts are spaced by a doubling backoff (0.1 s up to :data:`STEP_MAX`)
    taken with ``pause`` (which may raise to abandon the wait, e.g. on a stop
    signal).  Each attempt is bounded by ``min(attempt_timeout, time left)``;
    ``wait=0`` makes exactly one attempt, bounded by ``attempt_timeout``.
    Authentication errors and a missing database fail at once.  Raises
    :class:`GDBPoolError` naming host, port and database, never the password.
    """
    ensure_green()  # the bound on each attempt is a gevent timer (docs/design/green.md)
    deadline = time.monotonic() + wait
    delay = 0.1
    while True:
        left = deadline - time.monotonic()
        bound = attempt_timeout if wait == 0 else max(0.05, min(attempt_timeout, left))
        timer = gevent.Timeout(bound)
        timer.start()
        try:
            return psycopg2.connect(dsn, application_name=application_name)
        except psycopg2.OperationalError as exc:
            detail = one_line(exc)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            detail = f"no answer within {bound:g} s"
        finally:
            timer.close()
        permanent = any(word in detail for word in PERMANENT)
        if permanent or time.monotonic() + delay > deadline:
            hint = "" if permanent or wait else " (--wait SECONDS waits for it to come up)"
            raise GDBPoolError(f"cannot connect to {describe_dsn(dsn)}: {detail}{hint}")
        pause(delay)
        delay = min(delay * 2, STEP_MAX)


def wait_for_server(
    dsn: str,
    wait: float,
    *,
    application_name: str = "gdbpool-cli",
    attempt_timeout: float = ATTEMPT_TIMEOUT,
    pause: Callable[[float], None] = gevent.sleep,
) -> None:
    """Return once the server at ``dsn`` accepts a connection (see :func:`connect_when_ready`).

    Cooperative (gevent): other greenlets run while it waits.  Raises
    :class:`GDBPoolError` after ``wait`` seconds, or at once for errors that
    waiting will not fix (wrong password, missing database).
    """
    connect_when_ready(
        dsn, wait, application_name=application_name, attempt_timeout=attempt_timeout, pause=pause
    ).close()
