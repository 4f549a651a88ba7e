"""Text that is not UTF-8 on the command line or stdin: one line on stderr, exit 2, no connect."""

from __future__ import annotations

import subprocess

import pytest
from _cli_process import GDBPOOL

# Nobody listens on port 1: a connection attempt would fail (exit 1), not exit 2.
NOWHERE = "host=127.0.0.1 port=1 dbname=x user=x connect_timeout=1"


def _run(args: list[bytes], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    command = [arg.encode() for arg in GDBPOOL] + args
    return subprocess.run(command, input=stdin, capture_output=True, timeout=30)


@pytest.mark.parametrize(
    ("args", "stdin", "what"),
    [
        ([b"--channel", b"c", b"--payload", b"caf\xe9"], b"", b"--payload: NOTIFY payload"),
        ([b"--channel", b"caf\xe9", b"--payload", b"p"], b"", b"--channel: channel name"),
        ([b"--channel", b"c", b"--payload", b"-"], b"caf\xe9\n", b"--payload: stdin"),
    ],
)
def test_a_latin1_byte_is_one_line_and_exit_2_before_connecting(
    args: list[bytes], stdin: bytes, what: bytes
) -> None:
    done = _run([b"notify", b"--dsn", NOWHERE.encode(), b"--wait", b"1", *args], stdin)
    assert done.returncode == 2, done.stderr
    assert done.stdout == b""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and what in lines[0] and b"UTF-8" in lines[0], lines
