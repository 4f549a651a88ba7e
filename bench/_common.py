"""Helpers shared by the pool benchmarks (``bench/pool.py``, ``bench/interactions.py``).

Nothing here imports gevent or gdbpool at module level: the psycopg_pool and
asyncpg children import this module too, and must stay unpatched (real OS
threads, a plain asyncio loop).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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


def warmup_seconds(seconds: float) -> float:
    """How long every op runs off the record first (first-use costs: stacks, caches, server)."""
    return min(0.5, seconds / 4)


def run_threads(op: Callable[[int], None], threads: int, seconds: float) -> float:
    """Rate of ``op(i)`` calls by ``threads`` OS threads (``i``: the thread's index), warmed up."""
    _run_threads(op, threads, warmup_seconds(seconds))
    return _run_threads(op, threads, seconds)


def _run_threads(op: Callable[[int], None], threads: int, seconds: float) -> float:
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
    return measure_greenlets(op, greenlets, seconds).rate


@dataclass(frozen=True)
class Measured:
    """One measurement: calls per second, and this process's CPU microseconds per call."""

    rate: float
    cpu_us: float


def measure_greenlets(op: Callable[[int], None], greenlets: int, seconds: float) -> Measured:
    """Like :func:`run_greenlets`, with the client CPU spent per call.

    CPU per call is the robust number on a shared machine: it does not move
    with what the server or the neighbours do with the cores.
    """
    import gevent

    counts = [0] * greenlets
    loop = _counting_loop(op, seconds, counts)
    started, cpu = time.monotonic(), time.process_time()
    gevent.joinall([gevent.spawn(loop, i) for i in range(greenlets)], raise_error=True)
    calls = max(1, sum(counts))
    return Measured(calls / (time.monotonic() - started), (time.process_time() - cpu) / calls * 1e6)


def alternate(
    ceiling: tuple[Callable[[int], None], int],
    candidates: dict[str, tuple[Callable[[int], None], int]],
    seconds: float,
    rounds: int,
) -> dict[str, list[Measured]]:
    """Measure the ceiling, then each candidate, ``rounds`` times over.

    Each value is ``(op, greenlets)``. Every op first runs briefly off the
    record (warm-up). Alternating puts every candidate next to a ceiling
    measured under the same machine load; :func:`report` turns each round
    into a ratio to that round's ceiling.
    """
    results: dict[str, list[Measured]] = {"ceiling": [], **{name: [] for name in candidates}}
    for op, greenlets in (ceiling, *candidates.values()):
        measure_greenlets(op, greenlets, warmup_seconds(seconds))
    for _ in range(rounds):
        results["ceiling"].append(measure_greenlets(*ceiling, seconds))
        for name, (op, greenlets) in candidates.items():
            results[name].append(measure_greenlets(op, greenlets, seconds))
    return results


def report(label: str, runs: list[Measured], ceiling: list[Measured] | None) -> str:
    """One line: median rate, median ratio to the same rounds' ceiling [range], CPU per call."""
    rate = statistics.median(m.rate for m in runs)
    cpu = statistics.median(m.cpu_us for m in runs)
    line = f"{label:46} {rate:10.0f}/s {cpu:7.1f} us cpu"
    if ceiling is not None:
        ratios = [m.rate / c.rate for m, c in zip(runs, ceiling, strict=True)]
        cpu_ratio = statistics.median(c.cpu_us for c in ceiling) / cpu
        line += (
            f"   {statistics.median(ratios):5.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"
            f"   cpu {cpu_ratio:.2f}x"
        )
    return line


def raw_cursors(dsn: str, n: int = CONNECTIONS) -> list[Any]:
    """``n`` cursors, each on its own autocommit psycopg2 connection: the ceiling's."""
    import psycopg2

    cursors = []
    for _ in range(n):
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        cursors.append(conn.cursor())
    return cursors


def raw_query(
    cursors: list[Any], sql: str, args: Callable[[], Any] | None = None
) -> Callable[[int], None]:
    """The ceiling's op: greenlet ``i`` runs ``sql`` on its own cursor (``args()``: parameters)."""
    if args is None:

        def op(i: int) -> None:
            cur = cursors[i]
            cur.execute(sql)
            cur.fetchall()

    else:

        def op(i: int) -> None:
            cur = cursors[i]
            cur.execute(sql, args())
            cur.fetchall()

    return op


def green_client() -> None:
    """Make this process the gevent client: our packages, cooperative psycopg2, quiet logs."""
    use_repository_packages()
    from gdbpool import configure_logging, make_psycopg_green

    make_psycopg_green()
    configure_logging(level="WARNING")


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
