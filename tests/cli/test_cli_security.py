"""``gdbpool keys``, CURVE keys from files and the environment, ``bridge --metrics``."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import urllib.request
from pathlib import Path

import zmq
import zmq.auth
from _cli_process import GDBPOOL, ChildProcess
from prometheus_client.parser import text_string_to_metric_families

BRIDGE_LINE = r"^gdbpool bridge: endpoint (tcp://\S+) channels=\S+ source=(\w+)"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GDBPOOL, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def _keys(out: Path) -> str:
    proc = _run("keys", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_keys_writes_a_private_pair_and_a_public_file_and_never_overwrites(
    tmp_path: Path,
) -> None:
    public = _keys(tmp_path / "alice")
    secret_file, public_file = tmp_path / "alice.key_secret", tmp_path / "alice.key"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_file.stat().st_mode) == 0o644
    pub, sec = zmq.auth.load_certificate(secret_file)
    assert sec is not None and pub.decode() == public
    assert zmq.curve_public(sec) == pub
    assert zmq.auth.load_certificate(public_file) == (pub, None)
    assert sec.decode() not in public
    again = _run("keys", "--out", str(tmp_path / "alice"))
    assert again.returncode == 1
    assert "never overwritten" in again.stderr
    assert zmq.auth.load_certificate(secret_file) == (pub, sec)


def test_an_allowed_key_receives_and_an_unknown_key_receives_nothing(
    dsn: str, tmp_path: Path
) -> None:
    _keys(tmp_path / "bridge")
    allowed = tmp_path / "allowed_keys"
    allowed.write_text("# who may subscribe\n" + _keys(tmp_path / "alice") + "\n")
    _keys(tmp_path / "bob")  # a certificate pasted as it is counts too
    allowed.write_text(allowed.read_text() + (tmp_path / "bob.key").read_text())
    _keys(tmp_path / "mallory")
    mallory_secret = zmq.auth.load_certificate(tmp_path / "mallory.key_secret")[1]
    assert mallory_secret is not None

    bridge = ChildProcess(
        [
            *GDBPOOL,
            "bridge",
            "--dsn",
            dsn,
            "--channel",
            "sec_ev",
            "--heartbeat",
            "0.2",
            "--curve-secret-file",
            str(tmp_path / "bridge.key_secret"),
            "--allow-file",
            str(allowed),
        ]
    )
    alice = mallory = None
    try:
        endpoint = bridge.wait_for(BRIDGE_LINE, timeout=20, stream="out")[1]
        # Alice: key files; Mallory: keys from the environment (the server key is public).
        alice = ChildProcess(
            [
                *GDBPOOL,
                "subscribe",
                "--connect",
                endpoint,
                "--channel",
                "sec_ev",
                "--count",
                "1",
                "--timeout",
                "20",
                "--no-replay",
                "--curve-server-key-file",
                str(tmp_path / "bridge.key"),
                "--curve-secret-file",
                str(tmp_path / "alice.key_secret"),
            ]
        )
        server_public = (tmp_path / "bridge.key").read_text().split('"')[1]
        mallory = ChildProcess(
            [*GDBPOOL, "subscribe", "--connect", endpoint, "--channel", "sec_ev",
             "--timeout", "3", "--no-replay"],
            env={"GDBPOOL_CURVE_SECRET_KEY": mallory_secret.decode(),
                 "GDBPOOL_CURVE_SERVER_KEY": server_public},
        )  # fmt: skip
        alice.wait_for(r"connected to", timeout=15, stream="err")
        sent = _run("notify", "--dsn", dsn, "--channel", "sec_ev", "--payload", "for alice")
        assert sent.returncode == 0, sent.stderr
        assert alice.proc.wait(timeout=20) == 0, alice.transcript()
        assert any("for alice" in line for name, line in alice.drain() if name == "out")

        assert mallory.proc.wait(timeout=20) == 1, mallory.transcript()
        lines = mallory.drain()
        assert [line for name, line in lines if name == "out"] == []
        assert any("no notification within 3 s (0 received)" in line for _, line in lines)
        assert not any("connected to" in line for _, line in lines)
        bridge.wait_for(r"subscriber_refused", timeout=10, stream="err")
        # no secret in anything the bridge printed
        assert mallory_secret.decode() not in bridge.transcript()
    finally:
        for child in (alice, mallory, bridge):
            if child is not None:
                child.stop(signal.SIGTERM)
                child.kill()


def test_bad_key_sources_are_usage_errors_that_do_not_echo_the_key(
    dsn: str, tmp_path: Path
) -> None:
    _keys(tmp_path / "k")
    bogus = "x" * 39
    proc = _run("bridge", "--dsn", dsn, "--channel", "c", env={"GDBPOOL_CURVE_SECRET_KEY": bogus})
    assert proc.returncode == 2
    assert "$GDBPOOL_CURVE_SECRET_KEY does not hold a z85 CURVE key" in proc.stderr
    assert bogus not in proc.stderr
    proc = _run("bridge", "--dsn", dsn, "--channel", "c",
                "--curve-secret-file", str(tmp_path / "k.key"))  # fmt: skip
    assert proc.returncode == 2
    assert "holds no secret-key" in proc.stderr
    proc = _run("bridge", "--dsn", dsn, "--channel", "c", "--allow-file", str(tmp_path / "k.key"))
    assert proc.returncode == 2
    assert "--allow-file needs CURVE keys" in proc.stderr
    empty = tmp_path / "empty"
    empty.write_text("# nobody\n")
    proc = _run("bridge", "--dsn", dsn, "--channel", "c", "--allow-file", str(empty),
                "--curve-secret-file", str(tmp_path / "k.key_secret"))  # fmt: skip
    assert proc.returncode == 2
    assert "lists no key" in proc.stderr
    proc = _run("subscribe", "--connect", "tcp://127.0.0.1:1", "--channel", "c",
                "--curve-secret-file", str(tmp_path / "k.key_secret"))  # fmt: skip
    assert proc.returncode == 2
    assert "need the bridge's public key" in proc.stderr
    for command in ("bridge", "subscribe"):
        assert "--curve-secret " not in _run(command, "--help").stdout  # no key-valued flag


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(("gdbpool_bridge_published", "gdbpool_hub_received"))
    }


def test_bridge_serves_metrics_on_loopback(dsn: str) -> None:
    bridge = ChildProcess(
        [*GDBPOOL, "bridge", "--dsn", dsn, "--channel", "met_ev", "--metrics", "127.0.0.1:0"]
    )
    try:
        match = bridge.wait_for(BRIDGE_LINE + r".* metrics=(http://127\.0\.0\.1:\d+/metrics)$",
                                timeout=20, stream="out")  # fmt: skip
        url = match[3]
        before = _scrape(url)
        assert before == {"gdbpool_bridge_published_total": 0, "gdbpool_hub_received_total": 0}
        for payload in ("a", "b", "c"):
            assert _run("notify", "--dsn", dsn, "--channel", "met_ev", "--payload", payload)
        after = _scrape(url)
        for _ in range(100):  # bounded: the bridge publishes within milliseconds
            if after["gdbpool_bridge_published_total"] == 3:
                break
            after = _scrape(url)
        assert after == {"gdbpool_bridge_published_total": 3, "gdbpool_hub_received_total": 3}
        assert bridge.stop(signal.SIGTERM) == 0, bridge.transcript()
    finally:
        bridge.kill()


def test_bridge_metrics_address_is_checked() -> None:
    proc = _run("bridge", "--dsn", "dbname=x", "--channel", "c", "--metrics", "9187")
    assert proc.returncode == 2
    assert "HOST:PORT" in proc.stderr


def test_an_allow_file_takes_bare_keys_and_pasted_certificates(tmp_path: Path) -> None:
    from gdbpool.cli.keys import allowed_keys

    alice, bob = _keys(tmp_path / "alice"), _keys(tmp_path / "bob")
    listing = tmp_path / "allowed"
    listing.write_text(f"# team\n{alice}\n\n" + (tmp_path / "bob.key").read_text())
    assert allowed_keys(str(listing)) == [alice.encode(), bob.encode()]
    # a secret certificate pasted by mistake: its public key counts, its secret is never read
    listing.write_text((tmp_path / "alice.key_secret").read_text())
    assert allowed_keys(str(listing)) == [alice.encode()]
    # z85 has '#' and '=' in its alphabet: bare keys that hold them (or start with '#') count
    tricky = [zmq.curve_public(zmq.curve_keypair()[1]) for _ in range(200)]
    tricky = [k for k in tricky if k.startswith(b"#") or b"=" in k][:5]
    tricky.append(b"#" + tricky[0][1:])  # starts with '#'; may not decode: then a comment
    listing.write_text("\n".join(k.decode() for k in tricky) + "\n")
    got = allowed_keys(str(listing))
    assert got[:5] == tricky[:5]
