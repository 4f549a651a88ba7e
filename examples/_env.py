"""The Procfiles' settings, read from the environment, for the examples to share.

Not a script: ``writer.py`` and ``wsgi_app.py`` import :func:`procfile_dsn`.
"""

from __future__ import annotations

import os

__all__ = ["procfile_dsn"]


def procfile_dsn(port_var: str = "GDBPOOL_PG_PORT", default_port: str = "55432") -> str:
    """The DSN of a Procfile's embedded server: the port from ``port_var``, on loopback.

    The password comes from ``GDBPOOL_PG_PASSWORD`` (default ``gdbpool-demo``,
    as in the Procfiles); it stays in this process, never on a command line.
    """
    from psycopg2.extensions import make_dsn

    port = os.environ.get(port_var, default_port)
    password = os.environ.get("GDBPOOL_PG_PASSWORD", "gdbpool-demo")
    return str(make_dsn(host="127.0.0.1", port=port, user="postgres", password=password,
                        dbname="postgres"))
