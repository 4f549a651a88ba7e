"""``gdbpool bench``: list the repository's benchmarks, or run one in the foreground.

The benchmarks are the scripts of the repository's top-level ``bench/``
directory, which the installed package does not carry: they exist in a source
checkout only (an editable install finds them next to the package).  Running
one replaces the ``gdbpool`` process with ``python bench/NAME.py ARGS...``
(the same interpreter), so the benchmark receives Ctrl-C and SIGTERM itself,
can stop the PostgreSQL server it started, and its exit status is the
command's.  Problems found before that are :class:`BadInput` (exit 2): no
``bench/`` directory, an unknown name, the ``bench`` extra not installed.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from gdbpool.cli.args import BadInput

__all__ = ["BENCH_DIR", "EXTRA_MODULES", "cmd_bench", "find_benchmarks", "missing_modules"]

#: Where the benchmark scripts are: ``bench/`` next to the package, in a source checkout.
BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
#: Modules of the ``bench`` extra that a benchmark imports; checked before running it.
EXTRA_MODULES: Mapping[str, tuple[str, ...]] = {
    "peers": ("psycopg_pool", "asyncpg"),
}
_INSTALL_HINT = "pip install 'gdbpool[bench]' (or, in a source checkout, ./run bench {name})"


def cmd_bench(args: argparse.Namespace) -> int:
    """List the benchmarks (no NAME: exit 0) or run ``bench/NAME.py ARGS...`` in their place."""
    benchmarks = find_benchmarks(BENCH_DIR)
    if args.name is None:
        _print_list(BENCH_DIR, benchmarks)
        return 0
    script = benchmarks.get(args.name)
    if script is None:
        raise BadInput(
            f"no benchmark named {args.name!r}; known: {', '.join(benchmarks) or '(none)'}"
        )
    missing = missing_modules(args.name)
    if missing:
        raise BadInput(
            f"benchmark {args.name!r} needs the bench extra ({', '.join(missing)} not "
            f"installed): {_INSTALL_HINT.format(name=args.name)}"
        )
    _run_script(script, args.args)


def find_benchmarks(bench_dir: Path) -> dict[str, Path]:
    """Benchmark name → script, sorted by name: ``bench_dir/*.py`` not starting with ``_``.

    Raises :class:`BadInput` when ``bench_dir`` does not exist (an installed
    wheel has no benchmarks).
    """
    # bench/_common.py marks gDBPool's own bench/ (not another package's "bench").
    if not (bench_dir / "_common.py").is_file():
        raise BadInput(
            f"no benchmarks here: they come with a source checkout of gDBPool (its bench/ "
            f"directory; looked for {bench_dir}). Clone the repository, install it with "
            "pip install -e '.[bench]' (or use ./run bench NAME) and run gdbpool bench from there"
        )
    scripts = sorted(p for p in bench_dir.glob("*.py") if not p.name.startswith("_"))
    return {p.stem: p for p in scripts}


def missing_modules(name: str) -> list[str]:
    """Modules of the ``bench`` extra that benchmark ``name`` needs and this Python lacks.

    Looked up with :func:`importlib.util.find_spec`, without importing them.
    """
    return [m for m in EXTRA_MODULES.get(name, ()) if importlib.util.find_spec(m) is None]


def _summary(script: Path) -> str:
    """The first line of the script's docstring (read with :mod:`ast`, never imported)."""
    doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"), filename=str(script)))
    lines = (doc or "").strip().splitlines()
    return lines[0].strip() if lines else "(no description)"


def _print_list(bench_dir: Path, benchmarks: Mapping[str, Path]) -> None:
    print(f"benchmarks in {bench_dir} (run one: gdbpool bench NAME [ARGS...]; NAME --help):")
    width = max((len(name) for name in benchmarks), default=0)
    for name, script in benchmarks.items():
        line = f"  {name:<{width}}  {_summary(script)}"
        if missing_modules(name):
            line += "  [needs: pip install 'gdbpool[bench]']"
        print(line)


def _run_script(script: Path, argv: Sequence[str]) -> NoReturn:
    """Replace this process with ``sys.executable script argv...``."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, str(script), *argv])  # noqa: S606 - an argv list
