"""PostgreSQL server programs: finding them, running them (as ``postgres`` when root), ports.

PostgreSQL refuses to run as root.  When the current user is root, every
server program runs as the unprivileged ``postgres`` user (``runuser``) and
the files it needs are handed to that user.  Used by
:class:`~gdbpool.server.embedded.EmbeddedPostgres`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

from gdbpool.errors import EmbeddedPostgresError

__all__ = [
    "HOST",
    "SERVER_USER",
    "chown_to_server",
    "find_pg_bindir",
    "free_port",
    "pid_alive",
    "port_in_use",
    "run_program",
    "wait_gone",
]

#: The server user when running as root.
SERVER_USER = "postgres"
#: The only address embedded servers listen on.
HOST = "127.0.0.1"


def find_pg_bindir() -> Path:
    """Return the directory holding ``initdb``/``pg_ctl``/``postgres``.

    Looks at ``$GDBPOOL_PG_BINDIR``, then Debian's ``/usr/lib/postgresql/<v>/bin``
    (newest version first), then ``$PATH``.  Raises :class:`EmbeddedPostgresError`
    saying what to install when none is found.
    """
    candidates: list[Path] = []
    env = os.environ.get("GDBPOOL_PG_BINDIR")
    if env:
        candidates.append(Path(env))
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += [Path(p) for p in debian]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for cand in candidates:
        if all((cand / prog).is_file() for prog in ("initdb", "pg_ctl", "postgres")):
            return cand
    raise EmbeddedPostgresError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found. "
        "Install Debian's 'postgresql' package (apt-get install postgresql) "
        "or set GDBPOOL_PG_BINDIR to the directory that holds them."
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def chown_to_server(path: Path) -> None:
    """Hand ``path`` to the server user when running as root (no-op otherwise)."""
    if os.geteuid() == 0:
        ent = pwd.getpwnam(SERVER_USER)
        os.chown(path, ent.pw_uid, ent.pw_gid)


def run_program(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Run a server program (as the server user when root); return its stdout.

    Raises :class:`EmbeddedPostgresError` when it cannot run, times out (120 s)
    or exits non-zero (its stderr is in the message).
    """
    if os.geteuid() == 0:
        argv = ["runuser", "-u", SERVER_USER, "--", *argv]
    full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
    try:
        proc = subprocess.run(
            argv,
            env=full_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
        )
    except FileNotFoundError as exc:
        raise EmbeddedPostgresError(f"cannot run {argv[0]}: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedPostgresError(f"{Path(argv[0]).name} timed out") from exc
    if proc.returncode != 0:
        prog = Path(argv[4] if argv[0] == "runuser" else argv[0]).name
        raise EmbeddedPostgresError(
            f"{prog} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()}"
        )
    return proc.stdout


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists and is not a zombie.

    The postmaster is re-parented to pid 1, which in some containers never reaps
    it; a zombie has exited, so it counts as gone.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
