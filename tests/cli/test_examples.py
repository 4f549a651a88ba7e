"""The examples/ scripts as real processes: writer, plain pyzmq subscriber, WSGI app."""

from __future__ import annotations

import importlib.util
import json
import select
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg2
import pytest
from _cli_process import GDBPOOL, REPO, ChildProcess
from prometheus_client.parser import text_string_to_metric_families

from gdbpool import GDBPoolError
from gdbpool.server.embedded import free_port

EXAMPLES = REPO / "examples"
PYTHON = sys.executable


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bridge_endpoint(dsn: str) -> Iterator[str]:
    child = ChildProcess(
        [*GDBPOOL, "bridge", "--dsn", dsn, "--channel", "ex_ev", "--heartbeat", "0.2"]
    )
    try:
        yield child.wait_for(r"endpoint (tcp://\S+)", timeout=20, stream="out")[1]
    finally:
        child.stop()
        child.kill()


def test_the_plain_pyzmq_subscriber_reads_the_wire_format_without_gdbpool(
    dsn: str, bridge_endpoint: str
) -> None:
    source = (EXAMPLES / "plain_pyzmq_subscriber.py").read_text()
    assert "import gdbpool" not in source and "from gdbpool" not in source
    sub = ChildProcess(
        [
            PYTHON,
            str(EXAMPLES / "plain_pyzmq_subscriber.py"),
            "--connect",
            bridge_endpoint,
            "--channel",
            "ex_ev",
            "--json",
            "--count",
            "3",
            "--timeout",
            "20",
        ]
    )
    try:
        sub.wait_for(r"heard from bridge", timeout=15, stream="err")
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            for n in range(3):
                cur.execute("SELECT pg_notify('ex_ev', %s)", (f"p{n}",))
        conn.close()
        assert sub.proc.wait(timeout=20) == 0, sub.transcript()
        records = [json.loads(line) for name, line in sub.drain() if name == "out"]
        assert [(r["type"], r["payload"], r["seq"]) for r in records] == [
            ("notify", "p0", 1),
            ("notify", "p1", 2),
            ("notify", "p2", 3),
        ]
    finally:
        sub.kill()


def test_the_plain_subscribers_sequence_tracker_reports_gaps_and_restarts() -> None:
    tracker: Any = _load("plain_pyzmq_subscriber").SequenceTracker()
    assert tracker.source("tcp://b", "s1") is None
    assert tracker.missed("s1", "c", 5, is_last=False) == 0  # a late start is no gap
    assert tracker.missed("s1", "c", 6, is_last=False) == 0
    assert tracker.missed("s1", "c", 9, is_last=False) == 2  # 7 and 8 lost
    assert tracker.missed("s1", "c", 11, is_last=True) == 2  # heartbeat: 10 and 11 lost
    assert tracker.missed("s1", "c", 11, is_last=True) == 0
    assert tracker.source("tcp://b", "s2") == "s1"  # restarted: counters reset
    assert tracker.missed("s2", "c", 1, is_last=False) == 0


def test_the_writer_inserts_rows_that_notify_at_a_steady_rate(dsn: str) -> None:
    listener = psycopg2.connect(dsn)
    listener.autocommit = True
    with listener.cursor() as cur:
        cur.execute('LISTEN "ex_a"; LISTEN "ex_b"')
    try:
        proc = ChildProcess(
            [
                PYTHON,
                str(EXAMPLES / "writer.py"),
                "--dsn",
                dsn,
                "--channel",
                "ex_a",
                "--channel",
                "ex_b",
                "--rate",
                "20",
                "--count",
                "4",
            ]
        )
        assert proc.proc.wait(timeout=30) == 0, proc.transcript()
        got: list[Any] = []
        while len(got) < 4:
            if not select.select([listener], [], [], 10)[0]:
                pytest.fail(f"only {len(got)} notifications arrived")
            listener.poll()
            got.extend(listener.notifies)
            listener.notifies.clear()
        assert [n.channel for n in got] == ["ex_a", "ex_b", "ex_a", "ex_b"]
        assert [json.loads(n.payload)["n"] for n in got] == [1, 2, 3, 4]
    finally:
        listener.close()


def test_the_writer_stops_cleanly_on_sigterm(dsn: str) -> None:
    proc = ChildProcess([PYTHON, str(EXAMPLES / "writer.py"), "--dsn", dsn, "--rate", "5"])
    try:
        proc.wait_for(r"writer: row \d+ -> NOTIFY events", timeout=20, stream="out")
        assert proc.stop(signal.SIGTERM) == 0
        assert any("writer: stopped" in line for _, line in proc.drain())
    finally:
        proc.kill()


def _http(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_the_wsgi_app_writes_on_the_primary_and_reads_on_the_replica(
    dsn: str, replica_dsn: str, wait_replay: Callable[[str, str], None]
) -> None:
    port = free_port()
    app = ChildProcess(
        [
            PYTHON,
            str(EXAMPLES / "wsgi_app.py"),
            "--primary",
            dsn,
            "--replica",
            replica_dsn,
            "--port",
            str(port),
            "--wait",
            "20",
        ]
    )
    try:
        app.wait_for(rf"listening on http://127.0.0.1:{port}/events", timeout=40, stream="out")
        base = f"http://127.0.0.1:{port}"
        created = _http("POST", f"{base}/events", {"channel": "ex_web", "n": 7})
        assert created["channel"] == "ex_web"
        wait_replay(dsn, replica_dsn)  # the table and row have reached the replica (bounded)
        page = _http("GET", f"{base}/events")
        assert page["served_by"] == "replica"
        assert created["id"] in [row["id"] for row in page["rows"]]
        stats = _http("GET", f"{base}/stats")
        assert set(stats["pools"]) == {"default", "replica"}
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            text = response.read().decode()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        # the read went to the replica: one routing decision, one request on its pool
        assert samples[("gdbpool_router_decisions_total",
                        (("primary", "default"), ("reason", "replica")))] == 1  # fmt: skip
        assert samples[("gdbpool_pool_requests_total", (("pool", "replica"),))] >= 1
        assert samples[("gdbpool_replica_acceptable", (("pool", "replica"),))] == 1
        assert app.stop(signal.SIGTERM) == 0, app.transcript()
    finally:
        app.kill()


def test_wait_for_postgres_gives_up_after_its_timeout() -> None:
    wait: Any = _load("wait_for_postgres").wait_for_postgres
    port = free_port()
    with pytest.raises(GDBPoolError, match=rf"cannot connect to 127\.0\.0\.1:{port}/d: "):
        wait(f"host=127.0.0.1 port={port} user=u password=p dbname=d", timeout=0.5)


def test_wait_for_postgres_is_bounded_when_the_server_never_answers() -> None:
    wait: Any = _load("wait_for_postgres").wait_for_postgres
    with socket.socket() as silent:  # handshakes complete in the kernel; nobody answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(GDBPoolError, match=r"no answer within"):
            wait(f"host=127.0.0.1 port={port} user=u dbname=d", timeout=1)
        assert time.monotonic() - started < 2.5


def test_examples_import_only_the_public_package() -> None:
    for script in sorted(Path(EXAMPLES).glob("*.py")):
        for line in script.read_text().splitlines():
            if line.startswith(("from gdbpool", "import gdbpool")):
                module = line.split()[1]
                assert module == "gdbpool", f"{script.name}: {line}"


def test_every_example_is_documented_and_runnable_with_help() -> None:
    for script in sorted(Path(EXAMPLES).glob("*.py")):
        assert script.read_text().startswith('"""'), script
        proc = ChildProcess([PYTHON, str(script), "--help"])
        assert proc.proc.wait(timeout=20) == 0, proc.transcript()
