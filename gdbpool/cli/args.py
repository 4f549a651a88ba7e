"""Checks of the ``gdbpool`` command's arguments: a bad value is exit code 2.

Each check returns the value when it can work and raises :class:`BadInput`
otherwise, with a message that says what was expected.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Callable, Sequence
from typing import Any

from gdbpool.errors import GDBPoolError

__all__ = [
    "BadInput",
    "check_channels",
    "check_dsn",
    "check_endpoint",
    "describe",
    "is_loopback",
    "positive",
    "tcp_port",
]

_TCP = re.compile(r"^tcp://(?P<host>\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(?P<port>\*|\d{1,5})$")


class BadInput(GDBPoolError):
    """A command-line value that cannot work: exit code 2."""


def check_dsn(dsn: str, option: str = "--dsn") -> str:
    """``dsn`` if libpq can parse it; :class:`BadInput` (exit 2) naming ``option`` otherwise."""
    from psycopg2 import ProgrammingError
    from psycopg2.extensions import parse_dsn

    from gdbpool.server.wait import one_line

    try:
        parse_dsn(dsn)
    except ProgrammingError as exc:
        raise BadInput(
            f"{option} is not a valid libpq connection string ({one_line(exc)}); expected e.g. "
            "'host=127.0.0.1 port=5432 dbname=app user=app' (password from PGPASSWORD) or "
            "'postgresql://app@127.0.0.1:5432/app'"
        ) from None
    return dsn


def tcp_port(text: str) -> int:
    """argparse type: a TCP port number, 1..65535 (argparse exits 2 naming the option)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a TCP port number, not {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1..65535)")
    return port


def describe(dsn: str) -> str:
    """``host:port/dbname`` of a (valid) DSN, for messages: never the password."""
    from gdbpool.logging import describe_dsn

    return describe_dsn(dsn)


def check_endpoint(endpoint: str, *, option: str, bind: bool) -> str:
    """A ZeroMQ ``tcp://host:port`` or ``ipc://path`` endpoint, or :class:`BadInput`."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return endpoint
    match = _TCP.match(endpoint)
    ok = match is not None
    if match is not None:
        port = match["port"]
        ok = bind if port == "*" else (0 if bind else 1) <= int(port) <= 65535
        if match["host"] == "*" and not bind:
            ok = False
    if not ok:
        example = "tcp://127.0.0.1:55555" + (" (port 0 or * picks a free port)" if bind else "")
        raise BadInput(f"{option} {endpoint!r} is not a ZeroMQ endpoint; expected e.g. {example}")
    return endpoint


def is_loopback(endpoint: str) -> bool:
    """True for ``ipc://`` and for TCP endpoints on a loopback address."""
    match = _TCP.match(endpoint)
    if match is None:
        return endpoint.startswith("ipc://")
    host = match["host"].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_channels(channels: Sequence[str]) -> list[str]:
    """The channel names, checked as LISTEN accepts them; :class:`BadInput` otherwise."""
    from gdbpool.notify.notification import check_channel

    try:
        return [check_channel(c) for c in channels]
    except GDBPoolError as exc:
        raise BadInput(f"--channel: {exc}") from None


def positive(kind: Callable[[str], Any], *, zero: bool = False) -> Callable[[str], Any]:
    """argparse type: a number > 0 (>= 0 with ``zero``); argparse exits 2 otherwise."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"must be {'>= 0' if zero else '> 0'}: {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse
