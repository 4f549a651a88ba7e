"""Logging for libraries: the standard ``logging`` loggers, or structlog when the app chose it.

A :class:`Logger` is what :func:`get_logger` returns: a bound logger (``bind``,
``debug`` ... ``exception``) that decides at each call where the event goes.

- When the application configured structlog (``structlog.is_configured()``),
  the event goes through the application's structlog pipeline, with the bound
  context, in the application's format.
- Otherwise the event becomes a record of the standard ``logging`` logger of
  the same name (``actors``, ``gdbpool.pool``...), at the event's level.  The
  ``actors`` logger (and ``gdbpool``'s) carries a :class:`logging.NullHandler`, so an
  application that configures nothing sees nothing (Python's last-resort
  handler would otherwise print warnings to stderr).  The record's message is
  the event rendered as ``event key=value ...``; ``record.msg`` is a dict of
  the event, so structlog's ``ProcessorFormatter`` renders it with its own
  processors, bound context included.

Before either path every event runs through the scrubbers registered with
:func:`add_scrubber` (gdbpool registers its password redaction), and an
``exc_info`` is formatted into an ``exception`` field first, so a traceback is
scrubbed like the rest.  Nothing here writes to a stream by itself.

Logging is never on a message path, so the per-call work (one
``is_configured()`` and an ``isEnabledFor``) does not matter; a disabled level
costs no formatting.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

__all__ = ["Logger", "add_scrubber", "get_logger"]

Scrubber = Callable[[Any, str, MutableMapping[str, Any]], MutableMapping[str, Any]]

_SCRUBBERS: list[Scrubber] = []

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
}

logging.getLogger("actors").addHandler(logging.NullHandler())


def add_scrubber(scrubber: Scrubber) -> None:
    """Run ``scrubber`` (a structlog processor) on every event of every :class:`Logger`.

    Registered once per process by the package that needs it (gdbpool's password
    redaction); registering the same function twice has no effect.
    """
    if scrubber not in _SCRUBBERS:
        _SCRUBBERS.append(scrubber)


class _Event(dict[str, Any]):
    """A structlog event dict that reads as ``event key=value ...`` to stdlib formatters."""

    def __str__(self) -> str:
        parts = [str(self.get("event", ""))]
        for key, value in self.items():
            if key in ("event", "exception"):
                continue
            text = value if isinstance(value, str) and value and " " not in value else repr(value)
            parts.append(f"{key}={text}")
        line = " ".join(parts)
        exception = self.get("exception")
        return f"{line}\n{exception}" if exception else line


def _format_exception(exc_info: Any) -> str | None:
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    elif not isinstance(exc_info, tuple):
        exc_info = sys.exc_info() if exc_info else None
    if not exc_info or exc_info[0] is None:
        return None
    return "".join(traceback.format_exception(*exc_info)).rstrip("\n")


class Logger:
    """A bound logger for library code: stdlib records, or the app's structlog.

    Methods take an event name (short snake_case verb) and key/value fields, like
    structlog's; ``exc_info=`` (an exception, a tuple or ``True``) attaches a
    traceback; ``exception()`` is ``error()`` with the current exception.
    """

    __slots__ = ("_context", "_name")

    def __init__(self, name: str, context: dict[str, Any] | None = None) -> None:
        self._name = name
        self._context = context or {}

    @property
    def name(self) -> str:
        """The name of the stdlib logger the events go to."""
        return self._name

    def bind(self, **context: Any) -> Logger:
        """A logger with ``context`` added to every event."""
        return Logger(self._name, {**self._context, **context})

    def debug(self, event: str, **fields: Any) -> None:
        """Log ``event`` at DEBUG."""
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        """Log ``event`` at INFO."""
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Log ``event`` at WARNING."""
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        """Log ``event`` at ERROR."""
        self._emit("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """Log ``event`` at ERROR with the exception being handled."""
        fields.setdefault("exc_info", True)
        self._emit("exception", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        """Log ``event`` at CRITICAL."""
        self._emit("critical", event, fields)

    def _emit(self, method: str, event: str, fields: dict[str, Any]) -> None:
        configured = structlog.is_configured()
        stdlib = logging.getLogger(self._name)
        if not configured and not stdlib.isEnabledFor(_LEVELS[method]):
            return
        event_dict: MutableMapping[str, Any] = {"event": event, **self._context, **fields}
        if "exc_info" in event_dict:
            formatted = _format_exception(event_dict.pop("exc_info"))
            if formatted:
                event_dict["exception"] = formatted
        for scrub in _SCRUBBERS:
            event_dict = scrub(stdlib, method, event_dict)
        if configured:
            target = structlog.get_logger(self._name)
            getattr(target, "error" if method == "exception" else method)(
                event_dict.pop("event"), **event_dict
            )
            return
        # _logger/_name are what structlog.stdlib.ProcessorFormatter looks for to take
        # record.msg as the event dict (see structlog's wrap_for_formatter).
        stdlib.log(
            _LEVELS[method],
            _Event(event_dict),
            extra={"_logger": stdlib, "_name": "error" if method == "exception" else method},
            stacklevel=3,
        )


def get_logger(name: str, **context: Any) -> Logger:
    """A :class:`Logger` for the stdlib logger ``name``, bound to ``context``."""
    return Logger(name, context)
