"""structlog set-up for gdbpool, and the processor that keeps passwords out of logs.

gdbpool never configures logging behind the application's back: it logs through
the standard ``logging`` loggers ``gdbpool`` (``gdbpool.pool``...) and
``actors``, or through the application's structlog pipeline when it configured
structlog, and is silent when the application configured neither.
:func:`configure_logging` is the one-call set-up used by ``do_log=True``, the
``gdbpool`` command and the examples: readable console output on stderr by
default, one JSON object per line with ``json=True``.  Every event runs
through :func:`redact_secrets` before it leaves gdbpool, so a DSN or connection
string that reaches an event (in a message, a field, a nested structure or a
formatted traceback) is shown with its password replaced by ``***``.
The decisions are in docs/design/logging.md.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO
from urllib.parse import urlsplit

import psycopg2
import structlog
from psycopg2.extensions import parse_dsn

from actors.log import Logger, add_scrubber
from actors.log import get_logger as _get_logger
from gdbpool.errors import ConfigurationError

__all__ = ["configure_logging", "describe_dsn", "get_logger", "redact", "redact_secrets"]

_MASK = "***"
_SECRET_KEYS = frozenset({"password", "passwd", "pwd", "secret", "passfile_contents"})
# libpq's connection keywords: an unquoted password runs up to the next of them.
_KEYWORDS = (
    "host|hostaddr|port|dbname|user|passfile|channel_binding|connect_timeout|"
    "client_encoding|options|application_name|fallback_application_name|keepalives|"
    "keepalives_idle|keepalives_interval|keepalives_count|tcp_user_timeout|replication|"
    "gssencmode|sslmode|requiressl|sslcompression|sslcert|sslkey|sslpassword|sslrootcert|"
    "sslcrl|sslcrldir|sslsni|requirepeer|ssl_min_protocol_version|ssl_max_protocol_version|"
    "krbsrvname|gsslib|gssdelegation|service|target_session_attrs|load_balance_hosts|"
    "password|passwd"
)
# key=value form: password='a b\'c' (libpq quoting) is masked exactly; anything else
# (unquoted, "double quoted" as users write it, a quote left open, spaces in it) up to
# the next libpq keyword or the end of the line, so no fragment of it is left.
_KV = re.compile(
    r"(?i)(?<![?&\w])(sslpassword|password|passwd)(\s*=\s*)"
    r"(?:'(?:[^'\\]|\\.)*'(?=\s|$)"
    rf"|.*?(?=\s+(?:{_KEYWORDS})\s*=|[\r\n]|$))"
)
# URI form: postgresql://user:secret@host, also any scheme://user:secret@; the secret
# runs to the last "@" of the line, so "@", "/", ":" and spaces in it are masked too.
_URI = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^:/@\s]*):([^\r\n]*)@")
# URI query form: ?password=abc&...
_QUERY = re.compile(r"(?i)([?&](?:password|passwd)=)[^&\s]*")
# libpq's DSN parse errors quote the fragment they choke on, which may be part of a
# password: 'missing "=" after "b c" in connection info string'; so does the host
# lookup error when a raw "@" in a URI's password made the rest of it the host name.
_PARSE_ERROR = re.compile(
    r"(?i)connection info string|connection option|percent-encoded|in URI|URI query|"
    r"invalid integer value|invalid dsn|translate host name"
)
_QUOTED = re.compile(r'"[^\r\n]*"')  # first to last quote: a fragment may hold quotes


def redact(text: str) -> str:
    """Return ``text`` with every password in a DSN, URI or query string masked.

    Every libpq quoting form is covered (and ``password="..."``, which libpq
    does not know but users write), URIs with ``@``, ``:`` or ``%``-escapes in
    the password, and libpq's DSN parse errors, whose quoted fragments are
    masked (they may be part of a password).  What follows an unquoted
    password up to the next connection keyword is masked too: too much
    rather than a fragment.
    """
    low = text.lower()
    if "pass" not in low and "://" not in text and '"' not in text:
        return text
    text = _KV.sub(lambda m: f"{m.group(1)}{m.group(2)}{_MASK}", text)
    text = _URI.sub(lambda m: f"{m.group(1)}:{_MASK}@", text)
    text = _QUERY.sub(lambda m: f"{m.group(1)}{_MASK}", text)
    if '"' in text and _PARSE_ERROR.search(text):
        text = _QUOTED.sub(f'"{_MASK}"', text)
    return text


def describe_dsn(dsn: str | Mapping[str, str]) -> str:
    """``host:port/dbname`` of a DSN (or its parsed parameters) for messages; never the password.

    An unparsable DSN is described from what can be read of it safely.
    """
    if isinstance(dsn, str):
        # Read the masked text only: libpq reads a raw "/" in a URI's password as the
        # end of the host part, and the password would become the port.
        dsn = redact(dsn)
        try:
            params: Mapping[str, str] = parse_dsn(dsn)
        except psycopg2.Error:
            found = {
                key: m.group(1)
                for key in ("host", "port", "dbname")
                if (m := re.search(rf"\b{key}\s*=\s*([^\s']+)", dsn))
            }
            if "://" in dsn:
                try:
                    url = urlsplit(dsn)
                    found = {
                        "host": url.hostname or "",
                        "port": str(url.port or ""),
                        "dbname": url.path.lstrip("/"),
                    }
                except ValueError:
                    return "unknown host"
            if found:
                return describe_dsn(found)
            return "unknown host"
    else:
        params = dsn
    host = params.get("host") or params.get("hostaddr") or "localhost"
    database = params.get("dbname") or params.get("user") or ""
    return f"{host}:{params.get('port') or 5432}/{database}"


def _scrub(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact(value)
    if depth > 5:
        return value
    if isinstance(value, dict):
        return {
            k: (_MASK if isinstance(k, str) and k.lower() in _SECRET_KEYS else _scrub(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return type(value)(_scrub(v, depth + 1) for v in value)
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value


def redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask passwords wherever they appear in the event."""
    for key, value in list(event_dict.items()):
        if key.lower() in _SECRET_KEYS:
            event_dict[key] = _MASK
        else:
            event_dict[key] = _scrub(value)
    return event_dict


#: Marks the handler :func:`configure_logging` installed, so a second call replaces it.
_HANDLER_MARK = "_gdbpool_configure_logging"
#: The stdlib loggers gdbpool's events go to (``gdbpool.pool``... are children).
LOGGER_NAMES = ("gdbpool", "actors")


def configure_logging(
    *, json: bool = False, level: int | str = logging.INFO, stream: TextIO | None = None
) -> None:
    """Show gdbpool's (and the actor kit's) events on stderr, readable or as JSON.

    A convenience for applications and commands that configure no logging of
    their own (``do_log=True`` calls it): it attaches one handler to the
    stdlib loggers ``gdbpool`` and ``actors`` and sets their level, nothing
    else.  The application's structlog configuration and its other loggers are
    left alone; calling it again replaces the handler it installed.
    ``json=True`` renders one JSON object per line; otherwise a readable
    console format.  Passwords are redacted on both (see docs/design/logging.md).
    """
    lvl = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(lvl, int):
        raise ConfigurationError(f"configure_logging: unknown level {level!r}")
    out = stream if stream is not None else sys.stderr
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=bool(getattr(out, "isatty", lambda: False)()),
            exception_formatter=structlog.dev.plain_traceback,
        )
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        foreign_pre_chain=[structlog.processors.format_exc_info],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    for name in LOGGER_NAMES:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(lvl)


def get_logger(name: str = "gdbpool", **context: Any) -> Logger:
    """A logger for the stdlib logger ``name`` bound to ``context`` (``pool=``, ``channel=``...).

    Events go to the standard ``logging`` logger ``name`` (silent unless the
    application configured logging), or through structlog when the application
    configured structlog; see :mod:`actors.log` and docs/design/logging.md.
    """
    return _get_logger(name, **context)


logging.getLogger("gdbpool").addHandler(logging.NullHandler())
add_scrubber(redact_secrets)
