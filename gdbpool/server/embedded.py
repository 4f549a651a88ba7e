"""Embedded PostgreSQL: throwaway (or kept) clusters started from the server binaries.

An :class:`EmbeddedPostgres` runs ``initdb`` into a data directory, starts the
server with ``pg_ctl`` on a loopback port and a private unix-socket directory,
and stops (and, for throwaway clusters, removes) it again.  The same class
serves the test fixtures, ``gdbpool demo`` and ``gdbpool postgres``.

Decisions worth knowing:

* PostgreSQL refuses to run as root.  When the current user is root, every
  server program runs as the unprivileged ``postgres`` user (``runuser``), and
  the directories it needs are handed to that user.  CI runs as root.
  Finding, running the server programs and picking ports live in
  :mod:`gdbpool.server.binaries` (``find_pg_bindir``, ``free_port`` and
  ``pid_alive`` are re-exported here).
* The superuser is ``postgres`` with a random password; TCP connections on
  loopback use ``scram-sha-256``, so DSNs carry a password (which is what
  real deployments look like, and what the log redaction is tested on).
* ``fast=True`` (the default for throwaway clusters) turns off ``fsync``,
  ``synchronous_commit`` and ``full_page_writes``: a crash may lose data,
  which is fine for tests and never the default of ``gdbpool postgres --data``.
* The server listens on ``127.0.0.1`` only.
* Changing roles (:meth:`EmbeddedPostgres.promote`,
  :meth:`EmbeddedPostgres.make_standby_of`): ``wal_log_hints`` is always on so
  that ``pg_rewind`` can bring an old primary whose history forked back as a
  standby; ``pg_rewind`` also needs ``full_page_writes``, which ``fast`` turns
  off, so a throwaway cluster that is to be rewound passes
  ``settings={"full_page_writes": "on"}``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg2
from psycopg2.extensions import parse_dsn

from gdbpool.errors import EmbeddedPostgresError
from gdbpool.server.binaries import HOST as _HOST
from gdbpool.server.binaries import SERVER_USER as _SERVER_USER
from gdbpool.server.binaries import (
    chown_to_server,
    find_pg_bindir,
    free_port,
    pid_alive,
    port_in_use,
    run_program,
    wait_gone,
)

__all__ = ["EmbeddedPostgres", "find_pg_bindir", "free_port", "pid_alive"]

_START_TIMEOUT = 60


# The parent-death guard: a tiny process that blocks reading a pipe only the owning
# process writes to.  When the owner exits in any way (SIGKILL included), the pipe
# reaches EOF with nothing written (stop() writes first) and the guard shuts the
# postmaster down and removes a throwaway cluster's files.  stdlib only, so it runs
# with nothing but the interpreter.
_GUARD = """
import os, shutil, signal, sys, time
pid, data_dir, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
try:
    told = sys.stdin.buffer.read()
except BaseException:
    told = b""
if told:  # the owner stopped the server itself and said so: nothing to do
    sys.exit(0)
def alive():
    try:
        first = open(os.path.join(data_dir, "postmaster.pid")).readline().strip()
    except OSError:
        return False
    if first != str(pid):
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
for sig, wait in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
    if not alive():
        break
    try:
        os.kill(pid, sig)
    except OSError:
        break
    deadline = time.monotonic() + wait
    while alive() and time.monotonic() < deadline:
        time.sleep(0.02)
if root:
    shutil.rmtree(root, ignore_errors=True)
"""


def _reap(guard: subprocess.Popen[bytes] | None, stand_down: bool = False) -> None:
    """Stop a postmaster its owner forgot and remove a throwaway cluster (exit or collection).

    Closing the guard's pipe is all it takes: the guard does the stopping.  With
    ``stand_down`` (the owner stopped it itself) the guard is told to do nothing.
    """
    if guard is None:
        return
    with contextlib.suppress(OSError):
        if guard.stdin is not None:
            if stand_down:
                guard.stdin.write(b"stopped")
            guard.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        guard.wait(timeout=30)


class EmbeddedPostgres:
    """One PostgreSQL cluster on loopback, started and stopped by this process.

    ``data_dir=None`` makes a throwaway cluster in a private temporary directory
    that :meth:`stop` removes (unless ``keep=True``).  A given ``data_dir`` is
    kept: it is initialised when empty or missing, reused when it already
    holds a cluster, and refused when it holds anything else.

    ``replica_of`` (another running :class:`EmbeddedPostgres`) makes this
    cluster a streaming replica, cloned with ``pg_basebackup -R``.

    ``ssl=True`` serves TLS with a certificate signed by a throwaway CA of its
    own (made with the ``openssl`` command: :mod:`gdbpool.server.tls`); its
    :meth:`dsn` then asks for ``sslmode=verify-full`` against that CA
    (:attr:`ssl_root_cert`). Plaintext stays possible with ``sslmode=disable``.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        port: int | None = None,
        *,
        fast: bool | None = None,
        replica_of: EmbeddedPostgres | str | None = None,
        settings: dict[str, str] | None = None,
        password: str | None = None,
        keep: bool | None = None,
        ssl: bool = False,
    ) -> None:
        self.bindir = find_pg_bindir()
        self._throwaway = data_dir is None
        self.fast = self._throwaway if fast is None else fast
        self.keep = (not self._throwaway) if keep is None else keep
        self.replica_of = replica_of
        self.settings = dict(settings or {})
        self.password: str
        if isinstance(replica_of, EmbeddedPostgres):
            self.password = replica_of.password
        elif isinstance(replica_of, str):
            self.password = parse_dsn(replica_of).get("password") or password or ""
        else:
            self.password = password or secrets.token_urlsafe(12)
        self.user = _SERVER_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        if port is not None and not 0 < port < 65536:
            raise EmbeddedPostgresError(f"port {port} is not a valid TCP port")
        self._port_chosen = port is None
        self.port = port if port is not None else free_port()
        self._root: Path | None = None
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self.socket_dir: Path | None = None
        self._running = False
        self.ssl = ssl
        #: With ``ssl=True``, once started: the CA certificate clients verify the server
        #: with (``sslrootcert``; :meth:`dsn` adds it).
        self.ssl_root_cert: Path | None = None
        self._guard: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., EmbeddedPostgres] | None = None

    # -- public API -------------------------------------------------------------

    @property
    def host(self) -> str:
        """The loopback address the server listens on."""
        return _HOST

    def dsn(self, dbname: str = "postgres", **extra: str) -> str:
        """A libpq DSN for this server over TCP (it carries the password)."""
        parts = {
            "host": _HOST,
            "port": str(self.port),
            "user": self.user if os.geteuid() != 0 else _SERVER_USER,
            "password": self.password,
            "dbname": dbname,
        }
        if self.ssl and self.ssl_root_cert is not None:
            parts |= {"sslmode": "verify-full", "sslrootcert": str(self.ssl_root_cert)}
        parts.update(extra)
        return " ".join(f"{k}={_quote(v)}" for k, v in parts.items())

    @property
    def is_running(self) -> bool:
        """True while the postmaster of this cluster is alive."""
        pid = self.postmaster_pid()
        return pid is not None and pid_alive(pid)

    def postmaster_pid(self) -> int | None:
        """The postmaster's pid from ``postmaster.pid``, or None when not running."""
        if self.data_dir is None:
            return None
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        return int(first) if first.strip().isdigit() else None

    def start(self) -> Self:
        """Initialise the cluster if needed and start the server; wait until it accepts.

        Raises :class:`EmbeddedPostgresError` when the port is taken, the data
        directory holds something that is not a cluster, or the server fails to
        start (the server log's tail is in the message).  A failed start leaves
        nothing behind: no server process, and no files of a throwaway cluster.
        A port this object picked itself that another process grabs before the
        server binds it is replaced by a fresh one (up to three tries).
        """
        if self._running and self.is_running:
            return self
        if port_in_use(self.port):
            if not self._port_chosen:
                raise EmbeddedPostgresError(
                    f"port {self.port} on {_HOST} is already in use; choose another port"
                )
            self.port = free_port()
        try:
            self._prepare_dirs()
            assert self.data_dir is not None
            if not (self.data_dir / "PG_VERSION").exists():
                if self.replica_of is not None:
                    self._basebackup()
                else:
                    self._initdb()
            if self.ssl:
                from gdbpool.server.tls import make_certificates

                self.ssl_root_cert = make_certificates(self.data_dir)
            for attempt in range(3):
                self._write_config()
                try:
                    self._pg_ctl("start", "-w", "-t", str(_START_TIMEOUT), "-l", str(self._logfile))
                    break
                except EmbeddedPostgresError as exc:
                    if not (self._port_chosen and "already in use" in str(exc)) or attempt == 2:
                        raise
                    self.port = free_port()
        except BaseException:
            self._running = True  # so stop() also kills a postmaster a timed-out start left
            self.stop(mode="immediate")
            raise
        self._running = True
        self._watch()
        return self

    def _watch(self) -> None:
        """Make sure the server dies with this process or object (see docs/design/embedded.md)."""
        pid = self.postmaster_pid()
        if pid is None or self.data_dir is None:
            return
        root = "" if self.keep or self._root is None else str(self._root)
        self._guard = subprocess.Popen(
            [sys.executable, "-I", "-c", _GUARD, str(pid), str(self.data_dir), root],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the owner's group must not fire it early
        )
        self._finalizer = weakref.finalize(self, _reap, self._guard)

    def _unwatch(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        guard, self._guard = self._guard, None
        if guard is not None:
            _reap(guard, stand_down=True)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``, ``smart`` or ``immediate``); remove a throwaway cluster.

        Safe to call twice and on a server that was never started.
        """
        if self.data_dir is not None and self.is_running:
            try:
                self._pg_ctl("stop", "-w", "-t", "60", "-m", mode)
            except EmbeddedPostgresError:
                pid = self.postmaster_pid()
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    wait_gone(pid, 10)
        self._running = False
        self._unwatch()
        if not self.keep and self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def halt(self, mode: str = "fast") -> None:
        """Stop the server but keep its files, so :meth:`start` brings it back (restart tests).

        ``mode="immediate"`` is a crash as far as the server can tell.
        """
        keep, self.keep = self.keep, True
        try:
            self.stop(mode)
        finally:
            self.keep = keep

    def restart(self) -> None:
        """Stop and start the server, keeping its data."""
        self.halt()
        self.start()

    def create_replica(self, port: int | None = None) -> EmbeddedPostgres:
        """Start a throwaway streaming replica of this (running) cluster."""
        if not self.is_running:
            raise EmbeddedPostgresError("cannot create a replica of a server that is not running")
        return EmbeddedPostgres(port=port, replica_of=self, fast=self.fast).start()

    def promote(self, timeout: float = 30.0) -> None:
        """Promote this standby (``pg_ctl promote``); return once it accepts writes.

        Raises :class:`EmbeddedPostgresError` when the server is not running,
        is not a standby, or is still read-only after ``timeout`` seconds.
        """
        if not self.is_running:
            raise EmbeddedPostgresError("cannot promote a server that is not running")
        if self.psql("SELECT pg_is_in_recovery()") != "t":
            raise EmbeddedPostgresError(f"{self!r} is not a standby: nothing to promote")
        self._pg_ctl("promote", "-w", "-t", str(max(1, int(timeout))))
        deadline = time.monotonic() + timeout
        while self.psql("SELECT pg_is_in_recovery()") != "f":
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(f"{self!r} still in recovery {timeout} s after promote")
            time.sleep(0.01)
        self.replica_of = None
        self._standby_signal().unlink(missing_ok=True)

    def make_standby_of(
        self, primary: EmbeddedPostgres, *, rewind: bool | None = None, start: bool = True
    ) -> Self:
        """Turn this cluster (an old primary, say) into a streaming standby of ``primary``.

        A clean stop (``fast``; a server that crashed is recovered by
        ``pg_rewind``), then ``pg_rewind`` from ``primary`` when its history
        may have forked, then ``standby.signal`` and ``primary_conninfo``, then
        (``start=True``) a start.  ``rewind=None`` rewinds when ``primary`` has
        ``full_page_writes`` on (pg_rewind refuses otherwise; a switchover
        after a clean stop needs no rewind), ``True`` always, ``False`` never.
        The files are kept: a throwaway cluster stays throwaway.
        """
        if self.data_dir is None or not (self.data_dir / "PG_VERSION").exists():
            raise EmbeddedPostgresError(f"{self!r} holds no cluster to turn into a standby")
        if not primary.is_running:
            raise EmbeddedPostgresError("the new primary is not running")
        self.halt()
        if rewind is None:
            rewind = primary.psql("SHOW full_page_writes") == "on"
        if rewind:
            self._rewind(primary)
        self.replica_of = primary
        self.password = primary.password
        params = parse_dsn(primary.dsn())
        keys = ("host", "port", "user", "password")
        conninfo = " ".join(f"{k}={_quote(params[k])}" for k in keys)
        self.settings["primary_conninfo"] = _conf_string(conninfo)
        signal_file = self._standby_signal()
        signal_file.touch()
        chown_to_server(signal_file)
        if start:
            self.start()
        return self

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run one SQL command through ``psql`` on the unix socket; return its output."""
        assert self.socket_dir is not None
        out = run_program(
            [
                str(self.bindir / "psql"),
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                _SERVER_USER if os.geteuid() == 0 else self.user,
                "-d",
                dbname,
                "-c",
                sql,
            ]
        )
        return out.strip()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        role = "replica" if self.replica_of is not None else "primary"
        return f"<EmbeddedPostgres {role} {_HOST}:{self.port} data={self.data_dir}>"

    # -- internals --------------------------------------------------------------

    def _standby_signal(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / "standby.signal"

    def _rewind(self, source: EmbeddedPostgres) -> None:
        assert self.data_dir is not None
        # A freshly promoted server records its new timeline in pg_control only at
        # its next checkpoint; pg_rewind reads it from there ("same timeline").
        source.psql("CHECKPOINT")
        params = parse_dsn(source.dsn())
        conninfo = " ".join(f"{k}={_quote(params[k])}" for k in ("host", "port", "user", "dbname"))
        # The password goes through the environment, never the command line.
        run_program(
            [str(self.bindir / "pg_rewind"), "-D", str(self.data_dir), "--source-server", conninfo],
            env={"PGPASSWORD": source.password},
        )

    @property
    def _logfile(self) -> Path:
        assert self._root is not None
        return self._root / "server.log"

    def _prepare_dirs(self) -> None:
        if self._root is None:
            if self.data_dir is None:
                self._root = Path(tempfile.mkdtemp(prefix="gdbpool-pg-"))
                self.data_dir = self._root / "data"
            else:
                self._root = self.data_dir.parent / f".{self.data_dir.name}.run"
                has_files = self.data_dir.exists() and any(self.data_dir.iterdir())
                if has_files and not (self.data_dir / "PG_VERSION").exists():
                    raise EmbeddedPostgresError(
                        f"data directory {self.data_dir} is not empty and holds no "
                        "PostgreSQL cluster; give an empty or missing directory"
                    )
            self.socket_dir = self._root / "sock"
            self._root.mkdir(parents=True, exist_ok=True)
            self.socket_dir.mkdir(exist_ok=True)
            if self._throwaway:
                os.chmod(self._root, 0o700)
            if os.geteuid() == 0:
                ent = pwd.getpwnam(_SERVER_USER)
                for path in (self._root, self.socket_dir):
                    os.chown(path, ent.pw_uid, ent.pw_gid)
                if self.data_dir.exists():
                    os.chown(self.data_dir, ent.pw_uid, ent.pw_gid)
                elif not self._throwaway:
                    self.data_dir.mkdir(parents=True)
                    os.chown(self.data_dir, ent.pw_uid, ent.pw_gid)

    def _initdb(self) -> None:
        assert self._root is not None and self.data_dir is not None
        pwfile = self._root / "pwfile"
        pwfile.write_text(self.password + "\n")
        chown_to_server(pwfile)
        try:
            run_program(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    _SERVER_USER if os.geteuid() == 0 else self.user,
                    "--pwfile",
                    str(pwfile),
                    "-A",
                    "scram-sha-256",
                    "--auth-local=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-instructions",
                    *(["--no-sync"] if self.fast else []),
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(
            "local all all trust\n"
            "local replication all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host replication all 127.0.0.1/32 scram-sha-256\n"
        )
        chown_to_server(hba)

    def _basebackup(self) -> None:
        assert self.replica_of is not None and self.data_dir is not None
        if isinstance(self.replica_of, EmbeddedPostgres):
            src = parse_dsn(self.replica_of.dsn())
        else:
            try:
                src = parse_dsn(self.replica_of)
            except psycopg2.ProgrammingError as exc:
                raise EmbeddedPostgresError(f"--replica-of is not a valid DSN: {exc}") from exc
        env = {"PGPASSWORD": src.get("password", "")}
        run_program(
            [
                str(self.bindir / "pg_basebackup"),
                "-D",
                str(self.data_dir),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-h",
                src.get("host", _HOST),
                "-p",
                src.get("port", "5432"),
                "-U",
                src.get("user", _SERVER_USER),
                *(["--no-sync"] if self.fast else []),
            ],
            env=env,
        )

    def _write_config(self) -> None:
        assert self.data_dir is not None and self.socket_dir is not None
        conf = {
            "listen_addresses": f"'{_HOST}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": "300",
            "wal_level": "replica",
            "max_wal_senders": "10",
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "wal_log_hints": "on",
            "logging_collector": "off",
        }
        if self.ssl:
            from gdbpool.server.tls import CERT_FILE, KEY_FILE

            conf |= {
                "ssl": "on",
                "ssl_cert_file": f"'{CERT_FILE}'",
                "ssl_key_file": f"'{KEY_FILE}'",
            }
        if self.fast:
            conf |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        conf |= self.settings
        auto = self.data_dir / "postgresql.auto.conf"
        keep = []
        if auto.exists():
            # pg_basebackup -R writes primary_conninfo here; keep it, override the rest.
            keep = [
                line
                for line in auto.read_text().splitlines()
                if line.split("=", 1)[0].strip() not in conf
            ]
        auto.write_text("\n".join([*keep, *(f"{k} = {v}" for k, v in conf.items())]) + "\n")
        chown_to_server(auto)

    def _pg_ctl(self, *args: str) -> str:
        assert self.data_dir is not None
        try:
            return run_program([str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), *args])
        except EmbeddedPostgresError as exc:
            tail = ""
            with contextlib.suppress(OSError):
                tail = "\n".join(self._logfile.read_text().splitlines()[-15:])
            raise EmbeddedPostgresError(f"{exc}\nserver log tail:\n{tail}") from exc


def _conf_string(value: str) -> str:
    """``value`` as a quoted postgresql.conf string."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _quote(value: str) -> str:
    if value and all(c.isalnum() or c in "._-/" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
