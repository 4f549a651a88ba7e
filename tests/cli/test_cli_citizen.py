"""The command as a well-behaved tool: --version, python -m, exit 2 naming the right option."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _cli_process import GDBPOOL as GDBPOOL_CMD
from _cli_process import REPO

import gdbpool


def _gdbpool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gdbpool", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version_prints_the_single_sourced_version() -> None:
    out = _gdbpool("--version")
    assert (out.returncode, out.stdout, out.stderr) == (0, f"gdbpool {gdbpool.__version__}\n", "")


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["demo", "--dsn", "junk"], "--dsn"),
        (["postgres", "--port", "99999"], "--port"),
        (["postgres", "--port", "many"], "--port"),
        (["postgres", "--replica-of", "garbage"], "--replica-of"),
    ],
)
def test_bad_input_exits_2_naming_the_option_and_prints_nothing_on_stdout(
    argv: list[str], option: str
) -> None:
    out = _gdbpool(*argv)
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    last = out.stderr.strip().splitlines()[-1]
    assert option in last, last
    wrong = {"--dsn", "--port", "--replica-of"} - {option}
    assert not any(other in last for other in wrong), last


def test_postgres_without_a_password_writes_a_usable_pgpass_file_and_never_prints_it() -> None:
    import os
    import signal

    import psycopg2
    from _cli_process import ChildProcess

    from gdbpool.server.embedded import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    child = ChildProcess([*GDBPOOL_CMD, "postgres", "--port", str(port), "--fast"], env=env)
    try:
        found = child.wait_for(r"generated password in (\S+) ", timeout=60)
        pgpass = found.group(1)
        assert os.stat(pgpass).st_mode & 0o777 == 0o600
        password = Path(pgpass).read_text().strip().rsplit(":", 1)[1]
        assert password not in child.transcript()
        os.environ["PGPASSFILE"] = pgpass
        try:
            conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        finally:
            del os.environ["PGPASSFILE"]
        conn.close()
        assert child.stop(signal.SIGTERM) == 0
        assert not os.path.exists(pgpass)  # a throwaway cluster's file goes with it
    finally:
        child.kill()


def test_postgres_stops_its_server_on_sighup_like_on_sigterm() -> None:
    import signal

    from _cli_process import ChildProcess

    from gdbpool.server.embedded import free_port, pid_alive

    child = ChildProcess(
        [*GDBPOOL_CMD, "postgres", "--port", str(free_port()), "--fast", "--password", "pw-hup"]
    )
    try:
        found = child.wait_for(r"ready on \S+ data=(\S+)", timeout=60)
        data_dir = Path(found.group(1))
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
        assert child.stop(signal.SIGHUP, timeout=30) == 0, child.transcript()
        assert not pid_alive(postmaster)
        assert not data_dir.exists()
    finally:
        child.kill()
