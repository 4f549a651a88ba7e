"""An EmbeddedPostgres its owner never stopped leaves nothing behind: no postmaster, no files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _waits import wait_for

from gdbpool.server.embedded import pid_alive

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = """
import os, sys
from gdbpool import EmbeddedPostgres
server = EmbeddedPostgres().start()
print(server.postmaster_pid(), server.data_dir, flush=True)
{end}
"""


def _start_child(end: str) -> tuple[subprocess.Popen[str], int, Path]:
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_SCRIPT.format(end=end))],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, child.communicate(timeout=30)
    pid, data_dir = line.split()
    return child, int(pid), Path(data_dir)


@pytest.mark.parametrize(
    "end",
    [
        "",  # falls off the end of the script: atexit
        "del server; import gc; gc.collect(); print('collected', flush=True); sys.stdin.read()",
        "sys.stdin.read()",  # killed below with SIGKILL: the guard notices
    ],
    ids=["exit", "collected", "sigkill"],
)
def test_a_server_never_stopped_leaves_no_postmaster_and_no_data_dir(end: str) -> None:
    child, pid, data_dir = _start_child(end)
    try:
        assert pid_alive(pid)
        if "collected" in end:
            assert child.stdout is not None
            assert child.stdout.readline() == "collected\n"
            # still running: the object is gone, not the process
            assert wait_for(lambda: not pid_alive(pid), 20)
            assert wait_for(lambda: not data_dir.exists(), 20)
            assert child.poll() is None
            assert child.stdin is not None
            child.stdin.close()
        elif "stdin" in end:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        assert wait_for(lambda: not pid_alive(pid), 20), "postmaster outlived its owner"
        assert wait_for(lambda: not data_dir.exists(), 20), f"{data_dir} left behind"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
