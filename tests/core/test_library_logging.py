"""Silent by default: gdbpool logs through the stdlib loggers ``gdbpool`` and ``actors``.

An application that configures nothing sees nothing (stdout and stderr of a
child process stay empty); one that configures ``logging`` gets gdbpool's
records at the level it chose; ``configure_logging()`` shows them on stderr
without touching the application's structlog configuration.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap

import pytest
import structlog
from structlog.testing import capture_logs

from gdbpool import DBInteractionPool, configure_logging
from gdbpool.logging import get_logger

SECRET = "s3cr3t-Pa55"

_PLAIN_SCRIPT = """
import sys
from gdbpool import DBInteractionPool
ipool = DBInteractionPool(sys.argv[1], pool_size=2, pool_name="quiet")
assert ipool.run("SELECT 1").get(timeout=10) == [(1,)]
ipool.close()
"""


@pytest.fixture
def clean_logging():
    """Undo what a test configured: structlog defaults, gdbpool's handlers and levels."""
    yield
    structlog.reset_defaults()
    for name in ("gdbpool", "actors"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if not isinstance(handler, logging.NullHandler):
                logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_script_that_configures_no_logging_prints_nothing(dsn: str) -> None:
    child = _run(_PLAIN_SCRIPT, dsn)
    assert child.returncode == 0, child.stderr
    assert (child.stdout, child.stderr) == ("", "")


def test_a_script_that_configures_no_logging_prints_nothing_even_for_warnings() -> None:
    # A pool that cannot reach its server logs reconnect_failed warnings; Python's
    # last-resort handler would print them to stderr without gdbpool's NullHandler.
    script = """
    from gdbpool import DBConnectionPool, PoolTimeout
    pool = DBConnectionPool("host=127.0.0.1 port=1 dbname=x", 1, min_size=0, reconnect_initial=0.02)
    try:
        pool.get(timeout=0.3)
    except PoolTimeout:
        pass
    pool.close()
    """
    child = _run(script)
    assert child.returncode == 0, child.stderr
    assert (child.stdout, child.stderr) == ("", "")


def test_a_stdlib_configured_app_gets_records_at_its_chosen_level(dsn: str) -> None:
    script = """
    import logging, sys
    fmt = "%(name)s|%(levelname)s|%(message)s"
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format=fmt)
    logging.getLogger("gdbpool").setLevel(logging.DEBUG)
    from gdbpool import DBInteractionPool
    ipool = DBInteractionPool(sys.argv[1], pool_size=1, pool_name="chatty")
    ipool.run("SELECT 1").get(timeout=10)
    ipool.close()
    """
    child = _run(script, dsn)
    assert child.returncode == 0, child.stderr
    assert child.stdout == ""
    lines = child.stderr.splitlines()
    assert lines, "DEBUG was asked for on the gdbpool logger"
    assert all(line.startswith("gdbpool") for line in lines), lines  # actors stays at WARNING
    assert any("|DEBUG|" in line or "|INFO|" in line for line in lines), lines
    assert any("pool=chatty" in line for line in lines), lines


def test_basic_config_at_warning_quiets_the_debug_and_info_events(dsn: str) -> None:
    script = """
    import logging, sys
    logging.basicConfig(level=logging.WARNING)
    from gdbpool import DBInteractionPool
    ipool = DBInteractionPool(sys.argv[1], pool_size=1)
    ipool.run("SELECT 1").get(timeout=10)
    ipool.close()
    """
    child = _run(script, dsn)
    assert child.returncode == 0, child.stderr
    assert (child.stdout, child.stderr) == ("", "")


def test_do_log_writes_to_stderr_and_never_to_stdout(dsn: str) -> None:
    script = """
    import sys
    from gdbpool import DBInteractionPool
    ipool = DBInteractionPool(sys.argv[1], pool_size=1, do_log=True)
    ipool.run("SELECT 1").get(timeout=10)
    ipool.close()
    """
    child = _run(script, dsn)
    assert child.returncode == 0, child.stderr
    assert child.stdout == ""
    assert "pool_opened" in child.stderr or "pool=" in child.stderr, child.stderr


def test_records_carry_the_bound_context_and_redact_passwords(
    clean_logging: None, caplog: pytest.LogCaptureFixture
) -> None:
    structlog.reset_defaults()  # an earlier capture_logs leaves structlog "configured"
    caplog.set_level(logging.INFO, logger="gdbpool")
    get_logger("gdbpool.test", pool="p1").warning(
        "connect_failed",
        dsn=f"host=h password={SECRET}",
        exc_info=RuntimeError(f"password={SECRET}"),
    )
    (record,) = [r for r in caplog.records if r.name == "gdbpool.test"]
    assert record.levelno == logging.WARNING
    text = record.getMessage()
    assert text.startswith("connect_failed ")
    assert "pool=p1" in text
    assert "RuntimeError" in text
    assert SECRET not in text
    assert record.exc_info is None  # a raw traceback would bypass the redaction


def test_configure_logging_keeps_the_apps_structlog_configuration(clean_logging: None) -> None:
    app_processors = [structlog.processors.KeyValueRenderer()]
    structlog.configure(processors=app_processors)
    configure_logging(json=True, stream=io.StringIO())
    assert structlog.get_config()["processors"] == app_processors


def test_an_app_using_structlog_gets_gdbpool_events_through_its_pipeline(
    clean_logging: None,
) -> None:
    with capture_logs() as logs:
        get_logger("gdbpool.test", pool="p2").info("pool_opened", dsn=f"password={SECRET}")
    assert logs == [
        {"event": "pool_opened", "pool": "p2", "dsn": "password=***", "log_level": "info"}
    ]


def test_configure_logging_renders_stdlib_records_through_structlog(clean_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(json=True, level="DEBUG", stream=stream)
    configure_logging(json=True, level="DEBUG", stream=stream)  # replaces, never doubles
    get_logger("gdbpool.test", channel="c").debug("listen_resumed", password=SECRET)
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert event["event"] == "listen_resumed"
    assert event["channel"] == "c"
    assert event["password"] == "***"
    assert event["level"] == "debug"
    assert event["logger"] == "gdbpool.test"


def test_pool_with_do_log_does_not_replace_an_apps_structlog(clean_logging: None, dsn: str) -> None:
    app_processors = [structlog.processors.KeyValueRenderer()]
    structlog.configure(processors=app_processors)
    ipool = DBInteractionPool(dsn, pool_size=1, do_log=True)
    ipool.close()
    assert structlog.get_config()["processors"] == app_processors
