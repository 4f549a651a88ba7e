"""The Procfile topologies under honcho: accepted, running end to end, stopped without leftovers."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from _cli_process import REPO, ChildProcess, wait_gone

from gdbpool.server.embedded import free_port, pid_alive

HONCHO = str(Path(sys.executable).parent / "honcho")
PROCFILES = ["Procfile", "examples/Procfile.replica", "examples/Procfile.two-bridges"]


@pytest.mark.parametrize("procfile", PROCFILES)
def test_honcho_check_accepts_the_procfile(procfile: str) -> None:
    proc = ChildProcess([HONCHO, "-f", procfile, "check"])
    assert proc.proc.wait(timeout=20) == 0, proc.transcript()
    assert "Valid procfile detected" in proc.transcript()


def _cluster_pids(data_dir: Path) -> set[int]:
    """The postmaster of ``data_dir`` and its children (from /proc), while it runs."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    pids = {postmaster}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line
            )
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(postmaster):
            pids.add(int(status.parent.name))
    return pids


def _cmdlines_containing(secret: str) -> list[str]:
    """Command lines of live processes on this host that contain ``secret`` (from /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = entry.read_bytes().split(b"\0")
        except OSError:
            continue
        if int(entry.parent.name) != os.getpid() and any(secret.encode() in a for a in argv):
            found.append(b" ".join(argv).decode(errors="replace"))
    return found


PASSWORD = "pw-procfile"


class Topology:
    """``honcho start`` of one Procfile on free ports; stops it and checks for leftovers."""

    def __init__(self, procfile: str, **ports: int) -> None:
        env = {name: str(port) for name, port in ports.items()}
        env["GDBPOOL_PG_PASSWORD"] = PASSWORD
        self.honcho = ChildProcess([HONCHO, "-f", procfile, "start", "--no-colour"], env=env)
        self.clusters: set[int] = set()
        self.data_dirs: list[Path] = []

    def wait_for(self, pattern: str, timeout: float = 45) -> str:
        """The first honcho line matching ``pattern`` (regex), within ``timeout``."""
        match = self.honcho.wait_for(pattern, timeout)
        line: str = match.string
        return line

    def note_server(self, timeout: float = 45) -> None:
        """Wait for the next 'gdbpool postgres: ... ready' line and remember its processes."""
        line = self.wait_for(r"gdbpool postgres: \w+ ready on .* data=(\S+)", timeout)
        data_dir = Path(line.rsplit("data=", 1)[1])
        self.data_dirs.append(data_dir)
        self.clusters |= _cluster_pids(data_dir)

    def assert_password_not_in_any_command_line(self) -> None:
        """No process (honcho's children included) shows the password in ``ps``."""
        assert not _cmdlines_containing(PASSWORD), "the password is visible in ps"

    def stop_cleanly(self) -> None:
        """SIGTERM to honcho, as Ctrl-C would; everything stops, nothing is left behind."""
        assert self.honcho.stop(signal.SIGTERM, timeout=30) in (0, -signal.SIGTERM, 143)
        transcript = self.honcho.transcript()
        assert "SIGKILL" not in transcript, transcript  # nobody needed honcho's kill timeout
        for line in transcript.splitlines():
            if "stopped (rc=" in line:
                assert "stopped (rc=0)" in line, transcript
        assert not wait_gone(self.clusters, 10), "postgres processes left behind"
        for data_dir in self.data_dirs:
            assert not data_dir.exists(), f"throwaway cluster {data_dir} left behind"

    def kill(self) -> None:
        """Cleanup after a failed test: terminate honcho's children, then honcho."""
        if self.honcho.proc.poll() is None:
            self.honcho.proc.send_signal(signal.SIGTERM)
            try:
                self.honcho.proc.wait(timeout=20)
            finally:
                self.honcho.kill()
        assert all(not pid_alive(p) for p in wait_gone(self.clusters, 10))


@pytest.mark.timeout(90)
def test_the_procfile_topology_carries_events_to_both_subscribers_and_stops_cleanly() -> None:
    top = Topology("Procfile", GDBPOOL_PG_PORT=free_port(), GDBPOOL_BRIDGE_PORT=free_port())
    try:
        top.note_server()
        top.wait_for(r"bridge\.1 +\| gdbpool bridge: endpoint tcp://127\.0\.0\.1:\d+")
        top.wait_for(r"subscriber\.1 +\| \[events\] #\d+ pid=\d+ src=\w+: \{\"id\"")
        top.wait_for(r"pyzmq\.1 +\| \[events\] #\d+ pid=\d+ src=\w+: \{\"id\"")
        top.assert_password_not_in_any_command_line()
        top.stop_cleanly()
    finally:
        top.kill()


@pytest.mark.timeout(90)
def test_the_two_bridges_topology_lets_one_subscriber_follow_both() -> None:
    top = Topology(
        "examples/Procfile.two-bridges",
        GDBPOOL_PG_PORT=free_port(),
        GDBPOOL_BRIDGE_PORT=free_port(),
        GDBPOOL_BRIDGE2_PORT=free_port(),
    )
    try:
        top.note_server()
        sources: dict[str, str] = {}
        while len(sources) < 2:
            line = top.wait_for(r"follower\.1 +\| \{")
            record = json.loads(line.split("| ", 1)[1])
            if record["type"] == "notify":
                sources[record["channel"]] = record["source"]
        assert set(sources) == {"orders", "audit"}
        assert sources["orders"] != sources["audit"]  # two bridges, two sources
        top.assert_password_not_in_any_command_line()
        top.stop_cleanly()
    finally:
        top.kill()


@pytest.mark.timeout(120)
def test_the_replica_topology_serves_reads_from_the_replica() -> None:
    app_port = free_port()
    top = Topology(
        "examples/Procfile.replica",
        GDBPOOL_PG_PORT=free_port(),
        GDBPOOL_REPLICA_PORT=free_port(),
        GDBPOOL_APP_PORT=app_port,
    )
    try:
        top.note_server()  # the primary
        top.note_server(60)  # the replica (pg_basebackup of the primary)
        top.wait_for(rf"app\.1 +\| wsgi_app: listening on http://127\.0\.0\.1:{app_port}", 60)
        url = f"http://127.0.0.1:{app_port}/events"
        page: dict[str, object] = {}
        for _ in range(15):  # paced by the writer's rows, not by sleeping
            top.wait_for(r"writer\.1 +\| writer: row \d+")
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    page = json.loads(response.read())
            except urllib.error.HTTPError:  # 503 while the replica has not replayed the table
                continue
            if page["rows"]:
                break
        assert page.get("served_by") == "replica", page
        top.assert_password_not_in_any_command_line()
        top.stop_cleanly()
    finally:
        top.kill()


def test_procfiles_use_fixed_loopback_ports_that_the_environment_can_override() -> None:
    for procfile in PROCFILES:
        text = (REPO / procfile).read_text()
        assert "${GDBPOOL_PG_PORT:-55432}" in text
        assert "0.0.0.0" not in text and "tcp://*" not in text
        for line in text.splitlines():
            if line and not line.startswith("#"):
                # exec: SIGTERM reaches the process itself; only variable assignments before it
                assert re.match(r'^\w+: (?:\w+="[^"]*" )?exec \.venv/bin/', line), line


def test_procfiles_keep_the_password_off_command_lines() -> None:
    for procfile in PROCFILES:
        for line in (REPO / procfile).read_text().splitlines():
            if line and not line.startswith("#"):
                command = line.split(" exec ", 1)[1]
                assert "password" not in command.lower(), line
