"""Property: a random password never shows in a log line, an exception's text or CLI output.

Passwords are drawn with quotes, backslashes, spaces, ``@``, ``=``, ``:``,
``/``, ``%`` and non-ASCII letters; every one holds ``Ǫ`` or ``Ƶ``, letters
no message of gdbpool, psycopg2 or libpq contains, so finding one (or the
percent-encoded form of the password) in the output is a leak, whatever
fragment of the password it belongs to.  DSNs are written in every form
users write: libpq key=value quoted as libpq wants, unquoted, in double
quotes (not libpq, but written), URIs percent-encoded and raw.  DSN parse
errors need no server; the servers named here do not listen.
"""

from __future__ import annotations

import io
import socket
import traceback
from urllib.parse import quote

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gdbpool import (
    DBConnectionPool,
    GDBPoolError,
    configure_logging,
    redact,
)
from gdbpool.cli.args import BadInput, check_dsn
from gdbpool.logging import describe_dsn, get_logger

MARKS = ("Ǫ", "Ƶ")
passwords = st.tuples(
    st.sampled_from(MARKS),
    st.text(
        alphabet=[
            *MARKS,
            "ß",
            "é",
            "a",
            "'",
            '"',
            "\\",
            " ",
            "@",
            "=",
            ":",
            "/",
            "%",
            "?",
            "&",
            "#",
        ],
        min_size=0,
        max_size=12,
    ),
).map(lambda t: t[1][: len(t[1]) // 2] + t[0] + t[1][len(t[1]) // 2 :])


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PORT = _port()


def dsns(password: str) -> list[str]:
    libpq_quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    return [
        f"host=127.0.0.1 port={PORT} user=app password='{libpq_quoted}' dbname=app",
        f"host=127.0.0.1 port={PORT} user=app password={password} dbname=app",
        f"host=127.0.0.1 port={PORT} user=app password = {password}",
        f'host=127.0.0.1 port={PORT} user=app password="{password}" dbname=app',
        f"postgresql://app:{quote(password, safe='')}@127.0.0.1:{PORT}/app",
        f"postgresql://app:{password}@127.0.0.1:{PORT}/app",
        f"postgresql://127.0.0.1:{PORT}/app?user=app&password={quote(password, safe='')}",
    ]


def assert_hidden(text: str, password: str) -> None:
    for mark in MARKS:
        assert mark not in text, (password, text)
        assert ascii(mark)[1:-1] not in text, (password, text)  # JSON's \\u01ea
    assert quote(password, safe="") not in text or len(quote(password, safe="")) < 3, text


def exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(password=passwords)
def test_redact_describe_and_the_pool_s_dsn_error_never_show_the_password(password: str) -> None:
    for dsn in dsns(password):
        assert_hidden(redact(dsn), password)
        assert_hidden(describe_dsn(dsn), password)
        try:
            pool = DBConnectionPool(dsn, 1, min_size=0)
        except GDBPoolError as exc:
            assert_hidden(exception_text(exc), password)
        else:
            pool.close()


@settings(max_examples=60, deadline=None)
@given(password=passwords)
def test_the_cli_s_dsn_check_never_shows_the_password(password: str) -> None:
    for dsn in dsns(password):
        try:
            check_dsn(dsn)
        except BadInput as exc:
            assert_hidden(f"gdbpool notify: error: {exc}", password)


@pytest.fixture
def log_stream() -> io.StringIO:
    stream = io.StringIO()
    yield stream
    structlog.reset_defaults()


@pytest.mark.parametrize("json", [False, True])
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(password=passwords)
def test_no_log_line_shows_the_password(log_stream: io.StringIO, json: bool, password: str) -> None:
    configure_logging(json=json, stream=log_stream)
    log = get_logger("gdbpool.test")
    for dsn in dsns(password):
        log.info("connecting", dsn=dsn, detail=[{"conninfo": dsn}])
        log.warning(f"failed to connect with {dsn}")
        try:
            raise ValueError(f"bad {dsn}")
        except ValueError:
            log.exception("boom")
    assert_hidden(log_stream.getvalue(), password)


@settings(max_examples=15, deadline=None)
@given(password=passwords)
def test_the_hub_s_dsn_and_connection_errors_never_show_the_password(password: str) -> None:
    from gdbpool import NotificationHub

    for dsn in dsns(password):
        try:
            NotificationHub(dsn, connect_timeout=1).close()
        except Exception as exc:  # the hub's start error wraps the libpq one
            assert_hidden(exception_text(exc), password)


@pytest.mark.slow
def test_the_cli_never_prints_the_password() -> None:
    password = 'x y="Ǫa"b c Ƶ\'\\ @=:/%x'

    import subprocess

    from _cli_process import GDBPOOL

    for dsn in dsns(password)[:6]:
        done = subprocess.run(
            [*GDBPOOL, "notify", "--dsn", dsn, "--wait", "1", "--channel", "c", "--payload", "p"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode != 0
        assert_hidden(done.stdout + done.stderr, password)
