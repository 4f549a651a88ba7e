"""``gdbpool demo``: the main job, end to end.

With no DSN it starts an embedded PostgreSQL (a throwaway cluster on a free
loopback port), runs the tour against it, prints a summary and stops the
server, leaving nothing running.  Each step prints one progress line.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

import psycopg2

from gdbpool.embedded import EmbeddedPostgres
from gdbpool.logging import redact

__all__ = ["run_demo"]


@contextlib.contextmanager
def _step(title: str) -> Iterator[None]:
    started = time.monotonic()
    print(f"  … {title}", end="", flush=True)
    try:
        yield
    except BaseException:
        print(" FAILED", flush=True)
        raise
    print(f" done ({time.monotonic() - started:.2f}s)", flush=True)


def _server_version(dsn: str) -> str:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('server_version'), %s::int + %s::int", (40, 2))
            version, answer = cur.fetchone()
    finally:
        conn.close()
    return f"PostgreSQL {version}, 40 + 2 = {answer}"


def run_demo(dsn: str | None = None, *, json_logs: bool = False) -> int:
    """Run the tour against ``dsn`` or an embedded server; return the exit code."""
    print("gDBPool demo", flush=True)
    with contextlib.ExitStack() as stack:
        embedded = dsn is None
        if dsn is None:
            with _step("starting embedded PostgreSQL"):
                primary = stack.enter_context(EmbeddedPostgres())
            dsn = primary.dsn()
        print(f"  server: {redact(dsn)}", flush=True)
        with _step("running a query"):
            result = _server_version(dsn)
        print(f"  result: {result}", flush=True)
        if embedded:
            with _step("stopping embedded PostgreSQL"):
                stack.close()
    print("demo finished: everything stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_demo())
