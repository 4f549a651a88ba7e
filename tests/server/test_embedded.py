"""The embedded PostgreSQL cluster: start, connect, replicate, stop without a trace."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import psycopg2
import pytest

from gdbpool import EmbeddedPostgres, EmbeddedPostgresError
from gdbpool.server.embedded import pid_alive


def _query(dsn: str, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def test_primary_accepts_connections_on_loopback(pg_primary: EmbeddedPostgres) -> None:
    assert pg_primary.host == "127.0.0.1"
    rows = _query(pg_primary.dsn(), "SELECT inet_server_addr()::text, pg_is_in_recovery()")
    assert rows == [("127.0.0.1/32", False)]


def test_primary_requires_the_password(pg_primary: EmbeddedPostgres) -> None:
    bad = pg_primary.dsn(password="wrong-password")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(bad)


def test_replica_is_in_recovery_and_replicates_a_committed_row(
    pg_primary: EmbeddedPostgres,
    pg_replica: EmbeddedPostgres,
    dsn: str,
    replica_dsn: str,
    wait_replay: object,
) -> None:
    assert _query(replica_dsn, "SELECT pg_is_in_recovery()") == [(True,)]
    _query(dsn, "CREATE TABLE t (v text)")
    _query(dsn, "INSERT INTO t VALUES (%s)", ("replicated",))
    wait_replay(pg_primary.dsn(), pg_replica.dsn())  # type: ignore[operator]
    assert _query(replica_dsn, "SELECT v FROM t") == [("replicated",)]


def test_stop_leaves_no_process_and_no_files() -> None:
    server = EmbeddedPostgres().start()
    pid = server.postmaster_pid()
    root = server.data_dir.parent if server.data_dir else None
    assert pid is not None and root is not None and root.exists()
    server.stop()
    assert not pid_alive(pid)
    assert not root.exists()
    server.stop()  # a second stop is harmless


def test_context_manager_starts_and_stops() -> None:
    with EmbeddedPostgres() as server:
        assert _query(server.dsn(), "SELECT 1") == [(1,)]
        pid = server.postmaster_pid()
    assert pid is not None
    assert not pid_alive(pid)


def test_restart_keeps_data(make_pg: object) -> None:
    server = make_pg()  # type: ignore[operator]
    _query(server.dsn(), "CREATE TABLE kept (v int)")
    _query(server.dsn(), "INSERT INTO kept VALUES (7)")
    server.restart()
    assert _query(server.dsn(), "SELECT v FROM kept") == [(7,)]


def test_kept_data_dir_is_reused(tmp_path_factory: pytest.TempPathFactory) -> None:
    # pytest's tmp root is private to root; the server user needs to reach the data dir.
    base = Path(tempfile.mkdtemp(prefix="gdbpool-kept-"))
    os.chmod(base, 0o755)
    data = base / "pgdata"
    with EmbeddedPostgres(data_dir=data, password="pw-1") as server:
        assert not server.fast, "fsync must stay on for a kept data directory"
        _query(server.dsn(), "CREATE TABLE kept (v int)")
    assert (data / "PG_VERSION").exists()
    with EmbeddedPostgres(data_dir=data, password="pw-1") as again:
        assert _query(again.dsn(), "SELECT count(*) FROM kept") == [(0,)]
    shutil.rmtree(base)


def test_taken_port_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(EmbeddedPostgresError, match=f"port {port} .* already in use"):
            EmbeddedPostgres(port=port).start()


def test_non_empty_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "something.txt").write_text("not a cluster")
    with pytest.raises(EmbeddedPostgresError, match="not empty and holds no PostgreSQL cluster"):
        EmbeddedPostgres(data_dir=data).start()


def test_missing_binaries_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GDBPOOL_PG_BINDIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("glob.glob", lambda _pattern: [])
    with pytest.raises(EmbeddedPostgresError, match="apt-get install postgresql"):
        EmbeddedPostgres()


def test_invalid_port_is_a_clear_error() -> None:
    with pytest.raises(EmbeddedPostgresError, match="not a valid TCP port"):
        EmbeddedPostgres(port=70000)


def test_a_failed_start_leaves_no_files_behind() -> None:
    server = EmbeddedPostgres(settings={"shared_buffers": "'not-a-size'"})
    with pytest.raises(EmbeddedPostgresError, match="server log tail"):
        server.start()
    assert server.data_dir is not None
    assert not server.data_dir.exists()
    assert not server.is_running
