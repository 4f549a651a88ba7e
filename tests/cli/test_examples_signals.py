"""Examples stop on SIGTERM/SIGINT/SIGHUP even while they wait, and say what they wait for."""

from __future__ import annotations

import json
import signal
import sys
import urllib.request

import pytest
from _cli_process import REPO, ChildProcess
from _waits import wait_for

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


def test_gunicorn_serves_the_wsgi_app_through_its_factory(pg_primary, pg_replica) -> None:
    port = free_port()
    env = {
        "GDBPOOL_APP_PRIMARY": pg_primary.dsn(),
        "GDBPOOL_APP_REPLICA": pg_replica.dsn(),
        "GDBPOOL_APP_WAIT": "20",
    }
    child = ChildProcess(
        [
            sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1",
            "-b", f"127.0.0.1:{port}", "--chdir", str(REPO / "examples"),
            "wsgi_app:create_app()",
        ],
        env=env,
    )  # fmt: skip
    stats: dict = {}

    def answered() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
                stats.update(json.loads(response.read()))
        except OSError:
            return False
        return True

    try:
        child.wait_for(r"wsgi_app: waiting up to 20 s for the primary", timeout=30, stream="err")
        child.wait_for(r"wsgi_app: waiting up to 20 s for the replica", timeout=30, stream="err")
        assert wait_for(answered, 30), child.transcript()  # the worker loads the app lazily
        assert set(stats["pools"]) == {"default", "replica"}
        assert child.stop(signal.SIGTERM, timeout=20) == 0, child.transcript()
        assert "Traceback" not in child.transcript()
    finally:
        child.kill()
