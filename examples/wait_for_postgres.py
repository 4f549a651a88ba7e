"""Wait until a PostgreSQL server accepts connections (bounded, with backoff).

Processes of a Procfile start together: the writer and the web app must not
race the embedded server's ``initdb``.  Rather than a blind ``sleep``, they
retry connecting with a doubling delay (0.1 s up to 2 s) until the server
answers or ``timeout`` seconds have passed.  Each attempt is bounded too (by
at most 5 s and the time left), so a server that accepts TCP but never
answers cannot hang it.  It is the same code as ``gdbpool bridge --wait``.

    python examples/wait_for_postgres.py DSN [--timeout 60]   # exit 0 ready, 1 not
"""

from __future__ import annotations

import argparse
import sys

from gdbpool import GDBPoolError, wait_for_server


def wait_for_postgres(dsn: str, timeout: float = 60.0) -> None:
    """Return once ``dsn`` accepts a connection; raise ``GDBPoolError`` after ``timeout`` s.

    A wrong password or a missing database raises at once.  Cooperative: under
    gevent, other greenlets run while it waits.
    """
    wait_for_server(dsn, timeout, application_name="wait_for_postgres")


def main() -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dsn", help="without password=, libpq reads PGPASSWORD")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    try:
        wait_for_postgres(args.dsn, args.timeout)
    except GDBPoolError as exc:
        print(f"wait_for_postgres: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
