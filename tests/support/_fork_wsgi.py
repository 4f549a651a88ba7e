"""A small WSGI app for the gunicorn ``--preload`` fork test: ``/?v=N`` answers ``N pid``.

The DBInteractionPool is made (and used) at import, in gunicorn's master,
before it forks its workers: the case issue 16 saw go wrong.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from gdbpool import DBInteractionPool

ipool = DBInteractionPool(os.environ["GDBPOOL_TEST_DSN"], pool_size=4)
assert ipool.run("SELECT 1").get(timeout=10) == [(1,)]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    value = int(parse_qs(environ.get("QUERY_STRING", ""))["v"][0])
    try:
        rows = ipool.run("SELECT %s::int", (value,), timeout=10).get(timeout=15)
        body, status = f"{rows[0][0]} {os.getpid()}", "200 OK"
    except Exception as exc:
        body, status = f"error {type(exc).__name__}: {exc}", "500 Internal Server Error"
    start_response(status, [("Content-Type", "text/plain")])
    return [body.encode()]
