"""The README's "Using it" example runs as written and prints what its comments say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("<!-- using-start -->") : text.index("<!-- using-end -->")]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the README's Using it section"
    return match.group(1)


@pytest.mark.timeout(120)
def test_the_readme_example_runs_against_the_embedded_server_as_written(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _example()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "[(1, 'Ada'), (2, 'Grace')]",
        "1",
        "[[(2,)], [(2,)]]",
        "{'id': 2}",
    ]
