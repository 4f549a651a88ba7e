"""Run a function in a forked child (gevent's fork: the hub is reinitialised there)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import traceback
from collections.abc import Callable
from typing import Any

import gevent
import gevent.os


class Child:
    """A forked child running ``work()``; :meth:`result` waits (bounded) for what it returned."""

    def __init__(self, work: Callable[[], Any]) -> None:
        read, write = os.pipe()
        pid = gevent.fork()
        if pid == 0:  # the child: never return into pytest
            os.close(read)
            code = 0
            try:
                out = {"ok": work()}
            except BaseException as exc:
                out = {"error": f"{type(exc).__name__}: {exc}", "tb": traceback.format_exc()}
                code = 1
            with os.fdopen(write, "w") as f:
                f.write(json.dumps(out, default=repr))
            os._exit(code)
        os.close(write)
        self.pid = pid
        self._read = read
        os.set_blocking(read, False)

    def result(self, timeout: float = 20.0) -> Any:
        """What ``work()`` returned; AssertionError with the child's traceback if it raised."""
        chunks = []
        try:
            with gevent.Timeout(timeout, AssertionError(f"child {self.pid} did not finish")):
                while True:
                    chunk = gevent.os.nb_read(self._read, 65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                _, status = gevent.os.waitpid(self.pid, 0)
        except BaseException:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)  # never leave a hung child behind
            raise
        finally:
            os.close(self._read)
        out = json.loads(b"".join(chunks) or b"{}")
        assert "error" not in out, f"child failed: {out.get('tb') or out}"
        assert os.waitstatus_to_exitcode(status) == 0, out
        return out["ok"]
