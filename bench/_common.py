"""Helpers shared by the pool benchmarks (``bench/pool.py``, ``bench/interactions.py``).

Nothing here imports gevent or gdbpool at module level: the psycopg_pool and
asyncpg children import this module too, and must stay unpatched (real OS
threads, a plain asyncio loop).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Connections in every pool, and greenlets of the raw ceiling.
CONNECTIONS = 16
#: Callers sharing the pools (greenlets, or asyncio tasks).
CALLERS = 64


def use_repository_packages() -> None:
    """Put the repository first on ``sys.path``.

    Run as a script, ``bench/`` is ``sys.path[0]``, and ``bench/actors.py``
    would shadow the ``actors`` package.
    """
    root = str(ROOT)
    if sys.path[:1] != [root]:
        sys.path.insert(0, root)


def _counting_loop(
    op: Callable[[int], None], seconds: float, counts: list[int]
) -> Callable[[int], None]:
    """A loop calling ``op(i)`` for ``seconds`` from now; its count goes to ``counts[i]``."""
    stop = time.monotonic() + seconds

    def loop(i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            op(i)
            n += 1
        counts[i] = n

    return loop


def run_threads(op: Callable[[int], None], threads: int, seconds: float) -> float:
    """Rate of ``op(i)`` calls by ``threads`` OS threads (``i`` = the thread's index)."""
    counts = [0] * threads
    loop = _counting_loop(op, seconds, counts)
    started = time.monotonic()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.monotonic() - started)


def run_greenlets(op: Callable[[int], None], greenlets: int, seconds: float) -> float:
    """Rate of ``op(i)`` calls by ``greenlets`` greenlets (``i`` = the greenlet's index)."""
    import gevent

    counts = [0] * greenlets
    loop = _counting_loop(op, seconds, counts)
    started = time.monotonic()
    gevent.joinall([gevent.spawn(loop, i) for i in range(greenlets)], raise_error=True)
    return sum(counts) / (time.monotonic() - started)


def raw_cursors(dsn: str, n: int = CONNECTIONS) -> list[Any]:
    """``n`` cursors, each on its own autocommit psycopg2 connection: the ceiling's."""
    import psycopg2

    cursors = []
    for _ in range(n):
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        cursors.append(conn.cursor())
    return cursors


def close_raw(cursors: list[Any]) -> None:
    """Close the connections behind :func:`raw_cursors`."""
    for cur in cursors:
        cur.connection.close()


def run_child(script: str, *args: str, timeout: float = 300) -> dict[str, float]:
    """Run ``python script *args`` in a fresh process; return the JSON its last line prints."""
    child = subprocess.run(
        [sys.executable, script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if child.returncode != 0:
        raise RuntimeError(f"{Path(script).name} {args[:1]} child failed:\n{child.stderr}")
    result: dict[str, float] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


def print_child_result(result: dict[str, float]) -> None:
    """What a child prints last, for :func:`run_child`."""
    print(json.dumps(result))
