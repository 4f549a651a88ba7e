"""Helpers shared by the pool benchmarks (``bench/peers.py``, ``bench/interactions.py``).

Nothing here imports gevent or gdbpool at module level: the psycopg_pool and
asyncpg children of ``peers.py`` import this module too, and must stay
unpatched (real OS threads, a plain asyncio loop).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Connections in every pool, and greenlets of the raw ceiling.
CONNECTIONS = 16
#: Callers sharing the pools (greenlets, OS threads or asyncio tasks).
CALLERS = 64


def use_repository_packages() -> None:
    """Put the repository first on ``sys.path``.

    Run as a script, ``bench/`` is ``sys.path[0]``, and ``bench/actors.py``
    would shadow the ``actors`` package.
    """
    root = str(ROOT)
    if sys.path[:1] != [root]:
        sys.path.insert(0, root)


def warmup_seconds(seconds: float) -> float:
    """How long every op runs off the record first (first-use costs: stacks, caches, server)."""
    return min(0.5, seconds / 4)
