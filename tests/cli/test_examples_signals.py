"""Examples stop on SIGTERM/SIGINT/SIGHUP even while they wait, and say what they wait for."""

from __future__ import annotations

import signal
import sys

import pytest
from _cli_process import REPO, ChildProcess

from gdbpool.server.embedded import free_port


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_writer_stops_at_once_on_a_signal_while_it_waits_for_postgres(sig: int) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} dbname=postgres user=postgres"  # nobody listens
    child = ChildProcess(
        [
            sys.executable,
            str(REPO / "examples" / "writer.py"),
            "--dsn",
            dsn,
            "--wait",
            "60",
        ]
    )
    try:
        child.wait_for(r"writer: waiting up to 60 s for PostgreSQL", timeout=30, stream="err")
        assert child.stop(sig, timeout=3) == 0, child.transcript()
        assert "Traceback" not in child.transcript()
    finally:
        child.kill()
