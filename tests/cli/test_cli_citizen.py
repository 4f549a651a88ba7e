"""The command as a well-behaved tool: --version, python -m, exit 2 naming the right option."""

from __future__ import annotations

import subprocess
import sys

import pytest
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
