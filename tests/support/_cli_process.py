"""A child process whose stdout/stderr lines can be awaited with a bounded wait.

Reader threads move each line into a queue as it arrives, so a test can wait
for "the line that says X" with a deadline instead of sleeping, and still see
everything the process printed when it fails.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from gdbpool.server.embedded import pid_alive

REPO = Path(__file__).resolve().parents[2]
GDBPOOL = [sys.executable, "-m", "gdbpool"]


class ChildProcess:
    """``subprocess.Popen`` in its own session, with its output lines queued."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: int | None = subprocess.DEVNULL,
    ) -> None:
        self.proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=stdin,
            text=True,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self.seen: list[tuple[str, str]] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            threading.Thread(target=self._pump, args=(name, stream), daemon=True).start()

    def _pump(self, name: str, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put((name, line.rstrip("\n")))

    def wait_for(self, pattern: str, timeout: float, stream: str | None = None) -> re.Match[str]:
        """Return the first new line matching ``pattern``; AssertionError after ``timeout``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                name, line = self.lines.get(timeout=max(0.0, left))
            except queue.Empty:
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout}s; output so far:\n"
                    + self.transcript()
                ) from None
            self.seen.append((name, line))
            match = rx.search(line)
            if match and (stream is None or stream == name):
                return match

    def drain(self, timeout: float = 5.0) -> list[tuple[str, str]]:
        """Wait for the process to exit (bounded) and return every line not yet consumed."""
        self.proc.wait(timeout=timeout)
        out: list[tuple[str, str]] = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                out.append(self.lines.get(timeout=0.2))
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
        self.seen.extend(out)
        return out

    def transcript(self) -> str:
        """Everything seen so far (consumed and queued), for failure messages."""
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                break
        return "\n".join(f"{name}| {line}" for name, line in self.seen)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` and wait (bounded) for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """Last resort: SIGKILL the whole session."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def postgres_pids() -> set[int]:
    """Pids of live postgres processes on this host (from /proc)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if comm in ("postgres", "postmaster") and pid_alive(int(entry)):
                pids.add(int(entry))
    return pids


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait (bounded) until none of ``pids`` is alive; return those still alive."""
    deadline = time.monotonic() + timeout
    alive = {p for p in pids if pid_alive(p)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = {p for p in alive if pid_alive(p)}
    return alive
