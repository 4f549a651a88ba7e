"""What bounds a pool call: its timeout end to end, killed callers, TCP keepalives (#16)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gdbpool import DBConnectionPool

MakePool = Callable[..., DBConnectionPool]


@pytest.fixture
def make_pool() -> Iterator[MakePool]:
    pools: list[DBConnectionPool] = []

    def factory(dsn: str, pool_size: int = 1, **options: Any) -> DBConnectionPool:
        options.setdefault("name", f"b{uuid.uuid4().hex[:8]}")
        options.setdefault("reconnect_initial", 0.05)
        options.setdefault("reconnect_max", 0.3)
        options.setdefault("connect_timeout", 1.0)
        pool = DBConnectionPool(dsn, pool_size, **options)
        pools.append(pool)
        pool.wait(10)
        return pool

    yield factory
    for pool in pools:
        pool.close(timeout=2)


def _socket_of(conn: Any) -> socket.socket:
    return socket.socket(fileno=os.dup(conn.fileno()))


# -- keepalives -------------------------------------------------------------------------


def test_pool_connections_have_tcp_keepalives(make_pool: MakePool, dsn: str) -> None:
    pool = make_pool(dsn)
    with pool.connection() as conn:
        sock = _socket_of(conn)
        try:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        finally:
            sock.close()


def test_keepalive_settings_in_the_pool_dsn_win(make_pool: MakePool, dsn: str) -> None:
    pool = make_pool(f"{dsn} keepalives_idle=2 keepalives_interval=1")
    with pool.connection() as conn:
        sock = _socket_of(conn)
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 2
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 1
        finally:
            sock.close()
