"""What a DBConnectionPool is built with, checked before anything opens.

``_parse_dsn`` turns the DSN into its parameters (PoolConnectionError, never
quoting the password, when it cannot); ``_check_tunables`` raises
ConfigurationError for a tunable out of range (the defaults and meanings are
documented on :class:`~gdbpool.pool.connection_pool.DBConnectionPool`).
"""

from __future__ import annotations

from psycopg2 import extensions

from gdbpool.errors import ConfigurationError, PoolConnectionError
from gdbpool.logging import describe_dsn

__all__: list[str] = []


def _parse_dsn(dsn: str, name: str) -> dict[str, str]:
    try:
        return dict(extensions.parse_dsn(dsn))
    except Exception:
        # The parser's message may quote a fragment of the password: do not chain it.
        raise PoolConnectionError(
            f"pool {name!r}: invalid DSN ({describe_dsn(dsn)}); expected "
            "'key=value ...' pairs or a postgresql:// URI"
        ) from None


def _check_tunables(
    pool_size: int,
    min_size: int,
    timeout: float,
    max_waiting: int,
    max_lifetime: float,
    max_idle: float,
    connect_timeout: float,
    check_after: float,
    reconnect_initial: float,
    reconnect_max: float,
) -> None:
    if pool_size < 1:
        raise ConfigurationError(f"pool_size must be >= 1, not {pool_size}")
    if not 0 <= min_size <= pool_size:
        raise ConfigurationError(f"min_size must be between 0 and pool_size, not {min_size}")
    if max_waiting < 0:
        raise ConfigurationError(f"max_waiting must be >= 0 (0 = unbounded), not {max_waiting}")
    for label, value in (
        ("timeout", timeout),
        ("max_lifetime", max_lifetime),
        ("max_idle", max_idle),
        ("connect_timeout", connect_timeout),
        ("reconnect_initial", reconnect_initial),
    ):
        if not value > 0:
            raise ConfigurationError(f"{label} must be > 0 seconds, not {value}")
    if check_after < 0:
        raise ConfigurationError(f"check_after must be >= 0 seconds, not {check_after}")
    if reconnect_max < reconnect_initial:
        raise ConfigurationError("reconnect_max must be >= reconnect_initial")
