"""``gdbpool bridge``, ``subscribe`` and ``notify`` as real processes: happy paths, errors."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from _cli_process import GDBPOOL, ChildProcess
from psycopg2.extensions import parse_dsn

from gdbpool.server.embedded import free_port


def _run(
    *args: str, stdin: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GDBPOOL, *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )


class Bridge:
    """A ``gdbpool bridge`` child and the endpoint/source it announced."""

    def __init__(self, child: ChildProcess, endpoint: str, source: str) -> None:
        self.child = child
        self.endpoint = endpoint
        self.source = source


@pytest.fixture
def bridge(dsn: str) -> Iterator[Bridge]:
    child = ChildProcess(
        [
            *GDBPOOL,
            "bridge",
            "--dsn",
            dsn,
            "--channel",
            "cli_ev",
            "--channel",
            "cli_other",
            "--heartbeat",
            "0.2",
        ]
    )
    try:
        match = child.wait_for(
            r"^gdbpool bridge: endpoint (tcp://\S+) channels=\S+ source=(\w+)",
            timeout=20,
            stream="out",
        )
        yield Bridge(child, match[1], match[2])
    finally:
        child.stop(signal.SIGTERM)
        child.kill()


def _subscriber(bridge: Bridge, *args: str) -> ChildProcess:
    """A ``gdbpool subscribe`` child that has heard the bridge (past ZeroMQ's slow joiner)."""
    child = ChildProcess([*GDBPOOL, "subscribe", "--connect", bridge.endpoint, *args])
    child.wait_for(
        rf"connected to {bridge.endpoint} \(source {bridge.source}\)", timeout=15, stream="err"
    )
    return child


def test_help_lists_every_subcommand() -> None:
    proc = _run("--help")
    assert proc.returncode == 0
    for name in ("demo", "postgres", "bridge", "subscribe", "notify", "keys", "bench"):
        assert name in proc.stdout
    for name in ("bridge", "subscribe", "notify", "keys", "bench"):
        assert _run(name, "--help").returncode == 0


def test_notifications_reach_json_and_readable_subscribers_through_the_bridge(
    dsn: str, bridge: Bridge
) -> None:
    as_json = _subscriber(
        bridge, "--channel", "cli_ev", "--json", "--count", "3", "--timeout", "20"
    )
    readable = _subscriber(bridge, "--channel", "cli_ev", "--count", "3", "--timeout", "20")
    try:
        for payload in ('{"n": 1}', "two"):
            sent = _run("notify", "--dsn", dsn, "--channel", "cli_ev", "--payload", payload)
            assert sent.returncode == 0, sent.stderr
            assert "sent" in sent.stdout
        # not subscribed to this one: the subscribers must not count it
        other = _run("notify", "--dsn", dsn, "--channel", "cli_other", "--payload", "x")
        assert other.returncode == 0
        sent = _run(
            "notify", "--dsn", dsn, "--channel", "cli_ev", "--payload", "-", stdin="from stdin\n"
        )
        assert sent.returncode == 0, sent.stderr

        assert as_json.proc.wait(timeout=20) == 0, as_json.transcript()
        records = [json.loads(line) for name, line in as_json.drain() if name == "out"]
        assert [r["payload"] for r in records] == ['{"n": 1}', "two", "from stdin"]
        assert [r["seq"] for r in records] == [1, 2, 3]
        assert {r["type"] for r in records} == {"notify"}
        assert {r["channel"] for r in records} == {"cli_ev"}
        assert {r["source"] for r in records} == {bridge.source}
        assert all(isinstance(r["pid"], int) and r["pid"] > 0 for r in records)

        assert readable.proc.wait(timeout=20) == 0, readable.transcript()
        lines = [line for name, line in readable.drain() if name == "out"]
        assert len(lines) == 3
        assert lines[0].startswith("[cli_ev] #1 pid=") and lines[0].endswith(': {"n": 1}')
        assert lines[2].endswith(": from stdin")
    finally:
        as_json.kill()
        readable.kill()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_bridge_and_subscriber_stop_cleanly_on_a_signal(
    bridge: Bridge, sig: signal.Signals, code: int
) -> None:
    sub = _subscriber(bridge, "--channel", "cli_ev")
    try:
        assert sub.stop(sig) == code, sub.transcript()
    finally:
        sub.kill()
    assert bridge.child.stop(sig) == code, bridge.child.transcript()
    assert any("gdbpool bridge: stopped" in line for _, line in bridge.child.drain())


def test_subscribe_times_out_with_exit_1_when_nothing_arrives() -> None:
    proc = _run(
        "subscribe",
        "--connect",
        f"tcp://127.0.0.1:{free_port()}",
        "--channel",
        "x",
        "--timeout",
        "1",
    )
    assert proc.returncode == 1
    assert "no notification within 1 s" in proc.stderr


def test_bridge_refuses_an_address_in_use_with_exit_1(dsn: str, bridge: Bridge) -> None:
    proc = _run("bridge", "--dsn", dsn, "--channel", "x", "--bind", bridge.endpoint)
    assert proc.returncode == 1
    assert "Address already in use" in proc.stderr


def test_bridge_warns_when_publishing_beyond_loopback(dsn: str) -> None:
    child = ChildProcess(
        [*GDBPOOL, "bridge", "--dsn", dsn, "--channel", "x", "--bind", "tcp://0.0.0.0:0"]
    )
    try:
        child.wait_for(r"warning: publishing on tcp://0\.0\.0\.0:0, beyond loopback", 20, "err")
        child.wait_for(r"^gdbpool bridge: endpoint tcp://0\.0\.0\.0:\d+", 20, "out")
        assert child.stop() == 0
    finally:
        child.kill()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["notify", "--dsn", "garbage", "--channel", "c", "--payload", "p"],
            "--dsn is not a valid libpq connection string",
        ),
        (["bridge", "--dsn", "host='unterminated", "--channel", "c"], "not a valid libpq"),
        (
            ["bridge", "--dsn", "host=127.0.0.1", "--channel", "c", "--bind", "127.0.0.1:5555"],
            "--bind '127.0.0.1:5555' is not a ZeroMQ endpoint",
        ),
        (
            ["bridge", "--dsn", "host=127.0.0.1", "--channel", "c", "--bind", "tcp://h:99999"],
            "is not a ZeroMQ endpoint",
        ),
        (
            ["subscribe", "--connect", "tcp://127.0.0.1", "--channel", "c"],
            "--connect 'tcp://127.0.0.1' is not a ZeroMQ endpoint",
        ),
        (["subscribe", "--connect", "tcp://*:5555", "--channel", "c"], "is not a ZeroMQ endpoint"),
        (["bridge", "--dsn", "host=127.0.0.1"], "the following arguments are required: --channel"),
        (["subscribe", "--connect", "tcp://127.0.0.1:5555"], "required: --channel"),
        (["notify", "--dsn", "host=127.0.0.1", "--payload", "p"], "required: --channel"),
        (
            ["bridge", "--dsn", "host=127.0.0.1", "--channel", "c", "--chanel", "d"],
            "unrecognized arguments: --chanel",
        ),
        (
            ["notify", "--dsn", "host=127.0.0.1", "--channel", "c", "--payload", "x" * 8000],
            "--payload: NOTIFY payload is 8000 bytes",
        ),
        (
            ["notify", "--dsn", "host=127.0.0.1", "--channel", "", "--payload", "p"],
            "--channel: channel name must not be empty",
        ),
        (
            ["subscribe", "--connect", "tcp://127.0.0.1:5555", "--channel", "c", "--count", "0"],
            "must be > 0",
        ),
        (
            ["bridge", "--dsn", "host=127.0.0.1", "--channel", "c", "--heartbeat", "soon"],
            "not a number",
        ),
    ],
)
def test_bad_input_exits_2_with_a_one_line_reason(args: list[str], message: str) -> None:
    proc = _run(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"gdbpool {args[0]}: error:") or (
        proc.stderr.strip().splitlines()[-1].startswith("gdbpool: error:")
    )


@pytest.mark.parametrize("command", ["notify", "bridge"])
def test_an_unreachable_server_exits_1_naming_it_without_the_password(command: str) -> None:
    port = free_port()
    dsn = f"host=127.0.0.1 port={port} dbname=appdb user=u password=s3cr3t-pw"
    args = ["--payload", "p"] if command == "notify" else []
    proc = _run(command, "--dsn", dsn, "--channel", "c", *args)
    assert proc.returncode == 1
    assert f"cannot connect to 127.0.0.1:{port}/appdb" in proc.stderr
    assert "s3cr3t-pw" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("command", ["notify", "bridge"])
def test_a_wrong_password_exits_1_without_printing_any_password(dsn: str, command: str) -> None:
    real = parse_dsn(dsn)["password"]
    wrong = dsn.replace(f"password={real}", "password=not-the-pw-42")
    assert wrong != dsn
    args = ["--payload", "p"] if command == "notify" else []
    proc = _run(command, "--dsn", wrong, "--channel", "c", "--wait", "5", *args)
    assert proc.returncode == 1
    assert "password authentication failed" in proc.stderr  # fails at once despite --wait
    assert "not-the-pw-42" not in proc.stderr + proc.stdout
    assert real not in proc.stderr + proc.stdout


def test_notify_waits_for_a_server_that_comes_up() -> None:
    from gdbpool import EmbeddedPostgres

    port = free_port()
    server = EmbeddedPostgres(port=port, password="pw-wait")
    child = ChildProcess(
        [
            *GDBPOOL,
            "notify",
            "--dsn",
            server.dsn(),
            "--channel",
            "c",
            "--payload",
            "p",
            "--wait",
            "30",
        ]
    )
    try:
        server.start()
        assert child.proc.wait(timeout=30) == 0, child.transcript()
    finally:
        child.kill()
        server.stop()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port whose kernel completes TCP handshakes but nobody ever answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)  # never accept(): connections sit in the backlog, unanswered
        yield sock.getsockname()[1]


@pytest.mark.parametrize("command", ["notify", "bridge", "postgres"])
def test_wait_bounds_a_server_that_accepts_tcp_and_never_answers(
    command: str, silent_port: int
) -> None:
    dsn = f"host=127.0.0.1 port={silent_port} dbname=appdb user=u password=s3cr3t-pw"
    args = {
        "notify": ["notify", "--dsn", dsn, "--channel", "c", "--payload", "p"],
        "bridge": ["bridge", "--dsn", dsn, "--channel", "c"],
        "postgres": ["postgres", "--port", str(free_port()), "--replica-of", dsn],
    }[command]
    started = time.monotonic()
    proc = _run(*args, "--wait", "1", timeout=20)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    assert f"cannot connect to 127.0.0.1:{silent_port}/appdb: no answer within" in proc.stderr
    assert "s3cr3t-pw" not in proc.stderr + proc.stdout
    assert elapsed < 3.5, f"--wait 1 took {elapsed:.1f} s"


def test_one_attempt_without_wait_is_bounded_too(silent_port: int) -> None:
    dsn = f"host=127.0.0.1 port={silent_port} dbname=appdb user=u"
    started = time.monotonic()
    proc = _run("notify", "--dsn", dsn, "--channel", "c", "--payload", "p", timeout=20)
    assert proc.returncode == 1
    assert "no answer within 5 s (--wait SECONDS waits for it to come up)" in proc.stderr
    assert time.monotonic() - started < 8
