"""configure_logging: readable or JSON output, and passwords never reach a log line."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from gdbpool import configure_logging, redact
from gdbpool.logging import get_logger

SECRET = "s3cr3t-Pa55"


@pytest.fixture
def log_stream() -> io.StringIO:
    stream = io.StringIO()
    yield stream
    structlog.reset_defaults()
    for name in ("gdbpool", "actors"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if not isinstance(h, logging.NullHandler)]:
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"host=db password={SECRET} dbname=x", "host=db password=*** dbname=x"),
        (f"host=db password='{SECRET} with space' dbname=x", "host=db password=*** dbname=x"),
        (f"host=db PASSWORD = {SECRET}", "host=db PASSWORD = ***"),
        (f"postgresql://app:{SECRET}@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("postgresql://app:p@ss@db/x", "postgresql://app:***@db/x"),
        (
            f"postgres://db/x?user=a&password={SECRET}&sslmode=off",
            "postgres://db/x?user=a&password=***&sslmode=off",
        ),
        ("host=db user=app dbname=x", "host=db user=app dbname=x"),
    ],
)
def test_redact_masks_passwords_in_every_dsn_form(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_console_output_redacts_messages_fields_and_nested_values(log_stream: io.StringIO) -> None:
    configure_logging(stream=log_stream)
    log = get_logger("gdbpool.test", pool="default")
    log.info(
        f"connecting to host=db password={SECRET}",
        dsn=f"postgresql://u:{SECRET}@h/db",
        nested={"conninfo": [f"password={SECRET}"], "password": SECRET},
    )
    out = log_stream.getvalue()
    assert SECRET not in out
    assert "pool=default" in out
    assert "password=***" in out


def test_json_output_is_one_object_per_line_and_redacted(log_stream: io.StringIO) -> None:
    configure_logging(json=True, stream=log_stream)
    log = get_logger("gdbpool.test")
    log.warning("connection_lost", dsn=f"host=h password={SECRET}", password=SECRET)
    (line,) = log_stream.getvalue().splitlines()
    event = json.loads(line)
    assert event["event"] == "connection_lost"
    assert event["dsn"] == "host=h password=***"
    assert event["password"] == "***"
    assert event["level"] == "warning"


def test_tracebacks_are_redacted(log_stream: io.StringIO) -> None:
    configure_logging(json=True, stream=log_stream)
    try:
        raise RuntimeError(f"could not connect: host=h password={SECRET}")
    except RuntimeError:
        get_logger("gdbpool.test").exception("connect_failed")
    out = log_stream.getvalue()
    assert "RuntimeError" in out
    assert SECRET not in out


def test_level_filters_below_threshold(log_stream: io.StringIO) -> None:
    configure_logging(level="WARNING", stream=log_stream)
    get_logger("gdbpool.test").info("quiet")
    get_logger("gdbpool.test").error("loud")
    out = log_stream.getvalue()
    assert "loud" in out
    assert "quiet" not in out


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (f"host=db port=6432 dbname=app user=u password={SECRET}", "db:6432/app"),
        (f"postgresql://u:{SECRET}@db:5433/app", "db:5433/app"),
        ({"hostaddr": "10.0.0.1", "user": "u"}, "10.0.0.1:5432/u"),
        (f"host=db dbname=app password='{SECRET} unterminated", "db:5432/app"),
        (f"postgresql://u:{SECRET}@db/app?sslmode=nonsense&x=%zz", "db:5432/app"),
    ],
)
def test_describe_dsn_names_the_server_and_never_the_password(
    dsn: str | dict[str, str], expected: str
) -> None:
    from gdbpool.logging import describe_dsn

    text = describe_dsn(dsn)
    assert SECRET not in text
    assert text == expected
