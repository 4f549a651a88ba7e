"""gDBPool: PostgreSQL connection and interaction pooling for gevent.

Importing this package makes psycopg2 cooperative (see :mod:`gdbpool.green`).
Users import from ``gdbpool`` only; submodules are internal.
"""

from __future__ import annotations

from gdbpool.embedded import EmbeddedPostgres
from gdbpool.errors import (
    ConfigurationError,
    DBInteractionException,
    DBPoolConnectionException,
    EmbeddedPostgresError,
    GDBPoolError,
    InteractionTimeout,
    NotificationError,
    PoolClosed,
    PoolConnectionError,
    PoolConnectionException,
    PoolTimeout,
    TooManyRequests,
)
from gdbpool.green import make_psycopg_green
from gdbpool.logging import configure_logging, redact

make_psycopg_green()

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "DBInteractionException",
    "DBPoolConnectionException",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "GDBPoolError",
    "InteractionTimeout",
    "NotificationError",
    "PoolClosed",
    "PoolConnectionError",
    "PoolConnectionException",
    "PoolTimeout",
    "TooManyRequests",
    "__version__",
    "configure_logging",
    "make_psycopg_green",
    "redact",
]
