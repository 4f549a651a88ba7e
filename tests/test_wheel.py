"""The wheel carries every subpackage: installed into a fresh venv, the public API imports.

Built from this checkout, installed outside it (the dependencies come from the
package index), then used from a directory where the checkout is not on
``sys.path``, so nothing can be imported from the source tree by accident.
"""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import actors
import gdbpool

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("pool", "routing", "notify", "server", "cli")

CHECK = """
import sys, actors, gdbpool
assert {root!r} not in gdbpool.__file__, gdbpool.__file__
missing = [n for n in gdbpool.__all__ if not hasattr(gdbpool, n)]
missing += [n for n in actors.__all__ if not hasattr(actors, n)]
assert not missing, missing
print(len(gdbpool.__all__), len(actors.__all__))
"""


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wheel_installs_into_a_fresh_venv_and_serves_the_public_api(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("gdbpool-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("actors", "gdbpool", *(f"gdbpool/{s}" for s in SUBPACKAGES)):
        assert f"{package}/__init__.py" in names, package
    assert "gdbpool/py.typed" in names and "actors/py.typed" in names

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    bare = _run([*pip, str(wheel)], cwd=tmp_path)  # no extra: no driver
    assert bare.returncode == 0, bare.stderr
    no_driver = _run([str(python), "-c", "import gdbpool"], cwd=tmp_path, timeout=60)
    assert no_driver.returncode == 1
    assert "gdbpool[binary]" in no_driver.stderr and "gdbpool[source]" in no_driver.stderr
    installed = _run([*pip, f"gdbpool[binary] @ {wheel.as_uri()}"], cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr

    checked = _run([str(python), "-c", CHECK.format(root=str(ROOT))], cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.split() == [str(len(gdbpool.__all__)), str(len(actors.__all__))]

    helped = _run([str(env_dir / "bin" / "gdbpool"), "--help"], cwd=tmp_path, timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert "usage: gdbpool" in helped.stdout
    version = _run([str(env_dir / "bin" / "gdbpool"), "--version"], cwd=tmp_path, timeout=60)
    assert version.returncode == 0 and version.stdout == f"gdbpool {gdbpool.__version__}\n"
    module = _run([str(python), "-m", "gdbpool", "--help"], cwd=tmp_path, timeout=60)
    assert module.returncode == 0 and module.stdout == helped.stdout



def test_importing_gdbpool_without_a_driver_says_which_extra_to_install() -> None:
    script = (
        "import sys\n"
        "sys.modules['psycopg2'] = None  # as if neither psycopg2 nor psycopg2-binary were there\n"
        "import gdbpool\n"
    )
    out = _run([sys.executable, "-c", script], cwd=ROOT, timeout=60)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: gdbpool needs psycopg2"), out.stderr
    assert "gdbpool[binary]" in last and "gdbpool[source]" in last


def test_the_version_is_single_sourced() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text
    assert 'version = { attr = "gdbpool.__version__" }' in text
    assert "psycopg2" not in text.split("[project.optional-dependencies]")[0]
