"""EmbeddedPostgres(ssl=True): verify-full via the pool, the hub and the CLI; a wrong CA fails."""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _cli_process import GDBPOOL

from gdbpool import (
    DBConnectionPool,
    DBInteractionPool,
    EmbeddedPostgres,
    NotificationHub,
    PoolConnectionError,
)
from gdbpool.server.tls import make_certificates

ON_TLS = "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


@pytest.fixture(scope="module")
def tls_server() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(ssl=True).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def wrong_ca(tmp_path: Path) -> Path:
    """The CA of another server: well formed, but it never signed this server's certificate."""
    return make_certificates(tmp_path)


def test_the_server_has_its_own_ca_and_a_private_key(tls_server: EmbeddedPostgres) -> None:
    assert tls_server.ssl_root_cert is not None and tls_server.ssl_root_cert.exists()
    assert "sslmode=verify-full" in tls_server.dsn()
    assert f"sslrootcert={tls_server.ssl_root_cert}" in tls_server.dsn()
    key = tls_server.ssl_root_cert.parent / "server.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # the CA's own key was thrown away: nothing beside the certificates can sign
    assert not list(tls_server.ssl_root_cert.parent.glob("ca*.key"))
    assert tls_server.psql("SHOW ssl") == "on"


def test_the_pool_connects_with_verify_full(tls_server: EmbeddedPostgres) -> None:
    ipool = DBInteractionPool(tls_server.dsn(), pool_size=2)
    try:
        ((ssl, version),) = ipool.run(ON_TLS).get(timeout=10)
        assert ssl is True and version.startswith("TLS")
        conn = ipool.pool().get(timeout=10)
        try:
            assert conn.info.ssl_in_use
        finally:
            ipool.pool().put(conn)
    finally:
        ipool.close()


def test_the_hub_listens_over_verify_full(tls_server: EmbeddedPostgres) -> None:
    with NotificationHub(tls_server.dsn()) as hub:
        sub = hub.subscribe("tls_feed")
        hub.notify("tls_feed", "secret payload")
        assert sub.get(timeout=10).payload == "secret payload"
        pid = hub._state.backend_pid
        rows = tls_server.psql(f"SELECT ssl FROM pg_stat_ssl WHERE pid = {int(pid or 0)}")
        assert rows == "t"


def test_the_cli_connects_with_verify_full(tls_server: EmbeddedPostgres) -> None:
    proc = subprocess.run(
        [*GDBPOOL, "notify", "--dsn", tls_server.dsn(), "--channel", "c", "--payload", "x"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "sent 1 bytes" in proc.stdout


def test_a_wrong_ca_fails_with_a_clear_error(tls_server: EmbeddedPostgres, wrong_ca: Path) -> None:
    dsn = tls_server.dsn(sslrootcert=str(wrong_ca))
    with pytest.raises(PoolConnectionError, match="certificate verify failed") as info:
        DBConnectionPool(dsn, 1, name="wrong-ca")
    assert f"127.0.0.1:{tls_server.port}/postgres" in str(info.value)
    assert tls_server.password not in str(info.value)
    with pytest.raises(PoolConnectionError, match=r"LISTEN connection .* verify failed"):
        NotificationHub(dsn)  # opens its LISTEN connection at once

    proc = subprocess.run(
        [*GDBPOOL, "notify", "--dsn", dsn, "--channel", "c", "--payload", "x"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "certificate verify failed" in proc.stderr
    assert tls_server.password not in proc.stderr


def test_verify_full_refuses_a_name_the_certificate_does_not_carry(
    tls_server: EmbeddedPostgres,
) -> None:
    # the certificate names 127.0.0.1 and localhost: any other name is refused
    dsn = tls_server.dsn(host="127.0.0.2", hostaddr="127.0.0.1")
    with pytest.raises(PoolConnectionError, match="does not match host name"):
        DBConnectionPool(dsn, 1, name="wrong-name")
