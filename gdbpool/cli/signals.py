"""How the ``gdbpool`` foreground commands stop: SIGTERM exits 0, SIGINT 130.

Being asked to stop is normal under a process manager such as honcho, so
SIGTERM is a success; Ctrl-C keeps the shell's convention.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["StopFlag", "Stopped"]


class Stopped(Exception):
    """A stop signal arrived while waiting; carries the exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class StopFlag:
    """SIGINT/SIGTERM/SIGHUP → a flag plus the exit code (130 for SIGINT, else 0).

    SIGHUP (the terminal of ``honcho start`` closed) is handled like SIGTERM, so
    a foreground server or bridge stops cleanly instead of leaking.

    ``green=True`` installs the handlers through ``gevent.signal_handler`` so a
    greenlet waiting on :meth:`wait` wakes up at once; otherwise plain
    ``signal.signal`` and a ``threading.Event``.
    """

    def __init__(self, *, green: bool) -> None:
        self.code = 0
        self._handles: list[Any] = []
        self._event: Any
        if green:
            import gevent
            from gevent.event import Event

            self._event = Event()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self._handles.append(gevent.signal_handler(sig, self._on_signal, sig))
        else:
            self._event = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, lambda signum, _frame: self._on_signal(signum))

    def _on_signal(self, signum: int) -> None:
        if not self._event.is_set():
            self.code = 130 if signum == signal.SIGINT else 0
            self._event.set()

    def is_set(self) -> bool:
        """True once a stop signal arrived."""
        return bool(self._event.is_set())

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a stop signal; True when one arrived."""
        return bool(self._event.wait(timeout))

    def pause(self, seconds: float) -> None:
        """Wait ``seconds``; raise :class:`Stopped` at once if a stop signal arrives."""
        if self.wait(seconds):
            raise Stopped(self.code)

    def cancel(self) -> None:
        """Uninstall the gevent signal handlers."""
        for handle in self._handles:
            handle.cancel()
