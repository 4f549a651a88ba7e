"""``gdbpool bench``: the list of benchmarks, running one, and what stops it from running.

Only the actors benchmark is ever run (small and quick, no PostgreSQL); the
others are asked for ``--help`` at most, which their argparse answers before
they start anything.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _cli_process import GDBPOOL, REPO

from gdbpool.cli import bench as cli_bench
from gdbpool.cli import main
from gdbpool.cli.args import BadInput

#: The benchmark names, as the scripts in bench/ give them (sorted).
NAMES = sorted(p.stem for p in (REPO / "bench").glob("*.py") if not p.name.startswith("_"))
KNOWN = ", ".join(NAMES)
#: ``gdbpool`` in a Python where ``asyncpg`` cannot be found (find_spec sees None).
# Both modules of the bench extra hidden, whether or not this environment has them
# (CI installs only the dev extra), so the expectations below hold everywhere.
WITHOUT_BENCH_EXTRA = [
    sys.executable,
    "-c",
    "import sys; sys.modules['asyncpg'] = sys.modules['psycopg_pool'] = None; "
    "from gdbpool.cli import main; sys.exit(main(sys.argv[1:]))",
]


def _run(
    *args: str, argv0: list[str] = GDBPOOL, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*argv0, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def test_bench_without_a_name_lists_every_benchmark_with_its_docstring_summary() -> None:
    proc = _run("bench")
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert f"benchmarks in {REPO / 'bench'}" in header
    assert [row.split()[0] for row in rows] == NAMES
    assert {"actors", "peers", "interactions", "notify", "bridge"} <= set(NAMES)
    assert "_common" not in proc.stdout
    actors = next(row for row in rows if row.split()[0] == "actors")
    assert actors.endswith("Actor overhead against the floor of bare gevent queues.")


@pytest.mark.parametrize("name", ["nope", "_common", "../bench/actors"])
def test_an_unknown_benchmark_exits_2_naming_the_known_ones(name: str) -> None:
    proc = _run("bench", name)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"gdbpool bench: error: no benchmark named {name!r}; known: {KNOWN}"
    )


def test_arguments_after_the_name_reach_the_benchmark_untouched() -> None:
    proc = _run("bench", "actors", "--n", "1000", "--repeat", "1", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "n=1000, best of 1" in proc.stdout
    assert "ask round trip" in proc.stdout


def test_a_double_dash_before_the_arguments_is_optional() -> None:
    proc = _run("bench", "actors", "--", "--n", "1000", "--repeat", "1", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "n=1000, best of 1" in proc.stdout


def test_the_command_exits_with_the_benchmarks_own_exit_code() -> None:
    proc = _run("bench", "actors", "--bogus")
    assert proc.returncode == 2
    assert "actors.py: error: unrecognized arguments: --bogus" in proc.stderr


def test_help_after_the_name_is_the_benchmarks_own_help() -> None:
    proc = _run("bench", "actors", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: actors.py")
    assert "--repeat" in proc.stdout


def test_bench_help_explains_name_args_and_the_extra() -> None:
    proc = _run("bench", "--help")
    assert proc.returncode == 0
    assert "usage: gdbpool bench [-h] [NAME] ..." in proc.stdout
    assert "pip install 'gdbpool[bench]'" in proc.stdout


def test_a_benchmark_needing_the_bench_extra_exits_2_when_it_is_missing() -> None:
    # --help: were the check to let it through, the benchmark would only print its usage.
    proc = _run("bench", "peers", "--help", argv0=WITHOUT_BENCH_EXTRA)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (
        "gdbpool bench: error: benchmark 'peers' needs the bench extra (psycopg_pool, "
        "asyncpg not installed): pip install 'gdbpool[bench]' (or, in a source checkout, "
        "./run bench peers)"
    )
    assert "usage: peers.py" not in proc.stdout


def test_the_list_marks_benchmarks_whose_extra_is_missing() -> None:
    proc = _run("bench", argv0=WITHOUT_BENCH_EXTRA)
    assert proc.returncode == 0, proc.stderr
    marked = [row.split()[0] for row in proc.stdout.splitlines() if "[needs:" in row]
    assert marked == ["peers"]


def test_without_a_bench_directory_bench_exits_2_saying_they_come_with_a_source_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "bench"
    with pytest.raises(BadInput, match="come with a source checkout"):
        cli_bench.find_benchmarks(missing)
    monkeypatch.setattr(cli_bench, "BENCH_DIR", missing)
    for argv in (["bench"], ["bench", "actors"]):  # fails before anything would run
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("gdbpool bench: error: no benchmarks here: they come with a source")
        assert str(missing) in err


def test_only_python_scripts_not_starting_with_an_underscore_are_benchmarks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "zeta.py").write_text('"""Zeta: the last one.\n\nMore text.\n"""\n')
    (tmp_path / "alpha.py").write_text("print('no docstring')\n")
    (tmp_path / "_common.py").write_text('"""Helpers; it also marks the bench directory."""\n')
    (tmp_path / "notes.txt").write_text("not a script\n")
    assert list(cli_bench.find_benchmarks(tmp_path)) == ["alpha", "zeta"]
    monkeypatch.setattr(cli_bench, "BENCH_DIR", tmp_path)
    assert main(["bench"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert rows == ["  alpha  (no description)", "  zeta   Zeta: the last one."]
