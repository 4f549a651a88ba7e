"""The ``gdbpool`` command: help, the foreground embedded server, the demo."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import psycopg2
import pytest
from psycopg2.extensions import parse_dsn

from gdbpool.server.embedded import free_port, pid_alive

GDBPOOL = [sys.executable, "-m", "gdbpool"]


def _run(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GDBPOOL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_the_subcommands() -> None:
    proc = _run("--help")
    assert proc.returncode == 0
    for name in ("demo", "postgres"):
        assert name in proc.stdout


def test_unknown_subcommand_exits_2() -> None:
    proc = _run("no-such-command")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


def test_postgres_runs_in_the_foreground_and_stops_on_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*GDBPOOL, "postgres", "--port", str(port), "--password", "pw-cli", "--fast"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert "ready on 127.0.0.1" in ready, proc.stderr.read() if proc.stderr else ready
        dsnline = proc.stdout.readline()
        assert "pw-cli" not in dsnline and "password=***" in dsnline
        conn = psycopg2.connect(
            host="127.0.0.1", port=port, user="postgres", password="pw-cli", dbname="postgres"
        )
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_backend_pid(), (SELECT pid FROM pg_stat_activity "
                "WHERE backend_type = 'checkpointer')"
            )
            _, checkpointer = cur.fetchone()
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while pid_alive(checkpointer) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(checkpointer), "the server outlived gdbpool postgres"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_postgres_reads_its_password_from_the_environment_not_the_command_line() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*GDBPOOL, "postgres", "--port", str(port), "--fast", "--password-env", "GDBPOOL_T_PW"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "GDBPOOL_T_PW": "pw-from-env"},
    )
    try:
        assert proc.stdout is not None
        assert "ready on 127.0.0.1" in proc.stdout.readline()
        conn = psycopg2.connect(
            host="127.0.0.1", port=port, user="postgres", password="pw-from-env", dbname="postgres"
        )
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_postgres_refuses_a_password_env_that_is_not_set() -> None:
    proc = _run("postgres", "--port", str(free_port()), "--password-env", "GDBPOOL_T_UNSET")
    assert proc.returncode == 2
    assert "GDBPOOL_T_UNSET is not set" in proc.stderr


def test_postgres_refuses_a_taken_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        proc = _run("postgres", "--port", str(s.getsockname()[1]))
    assert proc.returncode == 1
    assert "already in use" in proc.stderr


def test_postgres_refuses_a_non_empty_data_dir(tmp_path: Path) -> None:
    (tmp_path / "junk").write_text("x")
    proc = _run("postgres", "--data", str(tmp_path), "--port", str(free_port()))
    assert proc.returncode == 1
    assert "not empty" in proc.stderr


@pytest.mark.timeout(150)
def test_demo_exits_0_and_leaves_no_postgres_behind() -> None:
    proc = _run("demo", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo finished" in proc.stdout
    assert "password=***" in proc.stdout
    assert "ran on the replica" in proc.stdout
    assert "20 of 20, sequence contiguous" in proc.stdout
    assert re.search(r"failover: writes on the new primary \(replica\) [0-9.]+s after", proc.stdout)
    ports = [int(p) for p in re.findall(r"^  (?:primary|replica): .*port=(\d+)", proc.stdout, re.M)]
    assert len(ports) == 2
    for port in ports:  # other tests may run servers meanwhile: look at the demo's own
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))
    assert not _postgres_pids_on(ports), "the demo left a server running"


def _postgres_pids_on(ports: list[int]) -> set[int]:
    """Postmasters whose data directory configures one of ``ports``."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            cwd = Path(os.readlink(f"/proc/{entry}/cwd"))
            conf = (cwd / "postgresql.auto.conf").read_text()
        except OSError:
            continue
        if (
            comm == "postgres"
            and pid_alive(int(entry))
            and any(f"port = {port}\n" in conf for port in ports)
        ):
            pids.add(int(entry))
    return pids


def _demo_schemas(dsn: str) -> list[str]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'gdbpool_demo%'")
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


@pytest.mark.timeout(150)
def test_demo_on_a_users_server_drops_its_schema_and_can_run_again_with_a_uri_dsn(
    dsn: str,
) -> None:
    parts = parse_dsn(dsn)
    uri = (
        f"postgresql://{quote(parts['user'], safe='')}:{quote(parts['password'], safe='')}"
        f"@{parts['host']}:{parts['port']}/{parts['dbname']}"
    )
    for given in (dsn, uri):  # the second run would fail on a schema the first left behind
        proc = _run("demo", "--dsn", given, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "20 of 20, sequence contiguous" in proc.stdout
        assert parts["password"] not in proc.stdout + proc.stderr
        assert _demo_schemas(dsn) == []
