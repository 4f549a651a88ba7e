"""A pool's arguments are checked before anything connects: typed errors naming them."""

from __future__ import annotations

import socket

import pytest

from gdbpool import ArgumentTypeError, ConfigurationError, DBConnectionPool, GDBPoolError


@pytest.fixture
def nowhere() -> str:
    """A DSN whose port nobody listens on: a connection attempt would fail loudly."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"host=127.0.0.1 port={port} dbname=x user=x connect_timeout=1"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"pool_size": 1.5}, "pool_size"),
        ({"pool_size": "10"}, "pool_size"),
        ({"pool_size": True}, "pool_size"),
        ({"min_size": 1.0}, "min_size"),
        ({"max_waiting": None}, "max_waiting"),
        ({"timeout": "30"}, "timeout"),
        ({"max_lifetime": [1]}, "max_lifetime"),
        ({"check_after": None}, "check_after"),
        ({"reconnect_max": "1"}, "reconnect_max"),
        ({"name": 5}, "name"),
        ({"application_name": b"app"}, "application_name"),
    ],
)
def test_a_wrong_typed_argument_is_a_type_error_naming_it_before_connecting(
    nowhere: str, kwargs: dict[str, object], named: str
) -> None:
    with pytest.raises(ArgumentTypeError, match=named) as info:
        DBConnectionPool(nowhere, **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError) and isinstance(info.value, GDBPoolError)


def test_a_positional_float_size_fails_before_the_first_connection(nowhere: str) -> None:
    with pytest.raises(ArgumentTypeError, match="pool_size must be an int, not float"):
        DBConnectionPool(nowhere, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="dsn"):
        DBConnectionPool(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [{"check_after": float("nan")}, {"reconnect_max": float("nan")}, {"timeout": float("nan")}],
)
def test_nan_seconds_are_a_configuration_error(nowhere: str, kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        DBConnectionPool(nowhere, **kwargs)  # type: ignore[arg-type]


def test_get_checks_its_timeout_and_isolation_level_types(nowhere: str) -> None:
    pool = DBConnectionPool(nowhere, 1, min_size=0)
    try:
        with pytest.raises(ArgumentTypeError, match="timeout"):
            pool.get(timeout="1")  # type: ignore[arg-type]
        with pytest.raises(ArgumentTypeError, match="isolation_level"):
            pool.get(isolation_level=["serializable"])  # type: ignore[arg-type]
    finally:
        pool.close()
