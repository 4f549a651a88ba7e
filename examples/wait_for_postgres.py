"""Wait until a PostgreSQL server accepts connections (bounded, with backoff).

Processes of a Procfile start together: the writer and the web app must not
race the embedded server's ``initdb``.  Rather than a blind ``sleep``, they
retry connecting with a doubling delay (0.1 s up to 2 s) until the server
answers or ``timeout`` seconds have passed.

    python examples/wait_for_postgres.py DSN [--timeout 60]   # exit 0 ready, 1 not
"""

from __future__ import annotations

import argparse
import sys
import time

import psycopg2

# Errors that waiting will not fix.
_PERMANENT = ("password authentication failed", "does not exist", "no pg_hba.conf entry")


def wait_for_postgres(dsn: str, timeout: float = 60.0) -> None:
    """Return once ``dsn`` accepts a connection; raise ``TimeoutError`` after ``timeout`` s.

    A wrong password or a missing database raises ``psycopg2.OperationalError``
    at once.  It blocks the calling thread (``time.sleep`` between attempts):
    call it at start-up, before serving anything.
    """
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            psycopg2.connect(dsn, connect_timeout=5).close()
            return
        except psycopg2.OperationalError as exc:
            if any(text in str(exc) for text in _PERMANENT):
                raise
            if time.monotonic() + delay > deadline:
                raise TimeoutError(f"PostgreSQL did not accept connections within "
                                   f"{timeout:g} s: {' '.join(str(exc).split())}") from exc
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def main() -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dsn")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    try:
        wait_for_postgres(args.dsn, args.timeout)
    except (TimeoutError, psycopg2.OperationalError) as exc:
        print(f"wait_for_postgres: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
