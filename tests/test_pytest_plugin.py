"""The pytest plugin shipped with gdbpool, used from a throwaway project through pytester."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

USER_TESTS = '''
import psycopg2

def test_a_fresh_database_per_test(gdbpool_dsn):
    conn = psycopg2.connect(gdbpool_dsn)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (x int)")  # would fail in a shared database
    conn.close()

def test_again_a_fresh_database(gdbpool_dsn):
    conn = psycopg2.connect(gdbpool_dsn)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (x int)")
    conn.close()

def test_an_interaction_pool(gdbpool_ipool):
    assert gdbpool_ipool.run("SELECT 40 + 2").get(timeout=10) == [(42,)]

def test_a_streaming_replica(gdbpool_primary, gdbpool_replica):
    assert gdbpool_replica.psql("SELECT pg_is_in_recovery()") == "t"
    assert gdbpool_primary.psql("SELECT pg_is_in_recovery()") == "f"
'''


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["pytest11"] == {"gdbpool": "gdbpool.pytest_plugin"}


@pytest.mark.timeout(120)
def test_a_users_project_gets_servers_databases_and_pools(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # this checkout's gdbpool, not another install
    pytester.makepyfile(test_user=USER_TESTS)
    # Loaded through its pytest11 entry point, as a user's pytest would (an
    # explicit -p as well would register it twice).
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(passed=4)
