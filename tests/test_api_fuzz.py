"""API fuzzer: bad arguments to every public entry point give typed errors only.

One argument at a time is replaced by a value of a wrong type or out of
range; the call must succeed or raise a :class:`gdbpool.GDBPoolError`
(a wrong type: :class:`gdbpool.ArgumentTypeError`, also a ``TypeError``;
a wrong value: :class:`gdbpool.ConfigurationError` or the area's error).
A raw ``TypeError``/``ValueError``/``AttributeError`` from deep inside is a
failure.  Servers named here do not listen unless the test takes the real
embedded one (``pg_primary``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gdbpool
from gdbpool import (
    DBConnectionPool,
    DBInteractionPool,
    EmbeddedPostgres,
    GDBPoolError,
    check_channel,
    check_payload,
)

bad_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from([object(), "\ud800", "a\x00b", "tcp://127.0.0.1:-1", -1, 0, 1e300]),
)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


NOWHERE = f"host=127.0.0.1 port={_port()} dbname=x user=x connect_timeout=1"


def typed(call: Callable[[], Any]) -> Any:
    """Run ``call``; only a GDBPoolError (or success) is acceptable."""
    try:
        return call()
    except GDBPoolError as exc:
        if isinstance(exc, TypeError):
            assert isinstance(exc, gdbpool.ArgumentTypeError)  # noqa: PT017
        return None
    except BaseException as exc:
        pytest.fail(f"untyped {type(exc).__name__}: {exc}"[:300])


def _closing(obj: Any) -> None:
    close = getattr(obj, "close", None)
    if close is not None:
        close()


POOL_ARGS = {
    "pool_size": 2,
    "name": "fuzz",
    "min_size": 0,
    "application_name": "fuzz",
    "timeout": 1.0,
    "max_waiting": 0,
    "max_lifetime": 60.0,
    "max_idle": 60.0,
    "connect_timeout": 1.0,
    "check_after": 30.0,
    "reconnect_initial": 0.1,
    "reconnect_max": 1.0,
}


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(sorted(POOL_ARGS)), value=bad_values)
def test_db_connection_pool_arguments(key: str, value: object) -> None:
    kwargs = {**POOL_ARGS, key: value}
    if key != "min_size":
        kwargs["min_size"] = 0
    _closing(typed(lambda: DBConnectionPool(NOWHERE, **kwargs)))


SUB_ARGS = {
    "heartbeat_timeout": 3.0,
    "rcvhwm": 10,
    "green": False,
    "replay": True,
    "replay_timeout": 1.0,
    "resume": None,
    "max_lateness": None,
    "channels": (),
    "curve_server_key": None,
}


@settings(max_examples=100, deadline=None)
@given(value=bad_values)
def test_check_channel_and_payload(value: object) -> None:
    typed(lambda: check_channel(value))  # type: ignore[arg-type]
    typed(lambda: check_payload(value))  # type: ignore[arg-type]


EMBEDDED_ARGS = {
    "data_dir": None,
    "port": None,
    "fast": True,
    "settings": None,
    "password": None,
    "keep": False,
}


@pytest.mark.xfail(
    reason="#16 API input: untyped errors remain here (see the integrator report)", strict=False
)
@settings(max_examples=80, deadline=None)
@given(key=st.sampled_from(sorted(EMBEDDED_ARGS)), value=bad_values)
def test_embedded_postgres_arguments_without_starting(key: str, value: object) -> None:
    typed(lambda: EmbeddedPostgres(**{**EMBEDDED_ARGS, key: value}))


IPOOL_ARGS = {
    "pool_size": 2,
    "pool_name": "fuzz",
    "max_replica_lag": None,
    "max_replica_lag_bytes": None,
    "replica_fallback": "primary",
    "health_interval": 1.0,
    "probe_timeout": 1.0,
}


@pytest.mark.xfail(
    reason="#16 API input: untyped errors remain here (see the integrator report)", strict=False
)
@settings(max_examples=120, deadline=None)
@given(key=st.sampled_from(sorted(IPOOL_ARGS)), value=bad_values)
def test_db_interaction_pool_arguments(key: str, value: object) -> None:
    kwargs = {**IPOOL_ARGS, key: value}
    _closing(typed(lambda: DBInteractionPool(NOWHERE, min_size=0, **kwargs)))


# Not yet here (#16, API input): fuzzing NotifySubscriber's arguments and get()
# (the drafts left a ZeroMQ context that blocked the process past pytest-timeout),
# DBInteractionPool.run()'s keyword arguments and its other methods on a server.
