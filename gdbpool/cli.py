"""The ``gdbpool`` command.

Each subcommand lives in its own ``_cmd_*`` function and is registered in
:func:`build_parser`.  Exit codes: 0 success, 1 runtime failure (server down,
query failed), 2 bad usage or bad input (argparse's convention), 130 on Ctrl-C.

The foreground commands (``postgres``, ``bridge``, ``subscribe``) stop cleanly
on SIGTERM (exit 0: being asked to stop is normal under a process manager such
as honcho) and on SIGINT (exit 130).  Passwords never reach the output: DSNs
and driver messages go through :func:`gdbpool.logging.redact`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from gdbpool.errors import GDBPoolError

__all__ = ["build_parser", "main"]

#: Longest a ``--wait`` backoff step gets (seconds).
_WAIT_STEP_MAX = 2.0
#: Seconds a ``gdbpool postgres --replica-of`` waits for its primary by default.
_REPLICA_WAIT = 60.0
#: Seconds between checks of the stop flag while ``subscribe`` waits for events.
_SUBSCRIBE_TICK = 0.5
_TCP = re.compile(r"^tcp://(?P<host>\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(?P<port>\*|\d{1,5})$")
_PERMANENT = ("password authentication failed", "does not exist", "no pg_hba.conf entry",
              "authentication")


class _BadInput(GDBPoolError):
    """A command-line value that cannot work: exit code 2."""


class _Stopped(Exception):
    """A stop signal arrived while waiting; carries the exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _StopFlag:
    """SIGINT/SIGTERM → a flag plus the exit code (0 for SIGTERM, 130 for SIGINT).

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
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._handles.append(gevent.signal_handler(sig, self._on_signal, sig))
        else:
            self._event = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
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

    def cancel(self) -> None:
        """Uninstall the gevent signal handlers."""
        for handle in self._handles:
            handle.cancel()


# -- input checks --------------------------------------------------------------------


def _check_dsn(dsn: str) -> str:
    """``dsn`` if libpq can parse it; :class:`_BadInput` (exit 2) otherwise."""
    from psycopg2 import ProgrammingError
    from psycopg2.extensions import parse_dsn

    from gdbpool.logging import redact

    try:
        parse_dsn(dsn)
    except ProgrammingError as exc:
        detail = " ".join(redact(str(exc)).split())
        raise _BadInput(
            f"--dsn is not a valid libpq connection string ({detail}); expected e.g. "
            "'host=127.0.0.1 port=5432 dbname=app user=app password=...' or "
            "'postgresql://app@127.0.0.1:5432/app'"
        ) from None
    return dsn


def _describe(dsn: str) -> str:
    """``host:port/dbname`` of a (valid) DSN, for messages: never the password."""
    from gdbpool.listen_connection import describe_dsn

    return describe_dsn(dsn)


def _check_endpoint(endpoint: str, *, option: str, bind: bool) -> str:
    """A ZeroMQ ``tcp://host:port`` or ``ipc://path`` endpoint, or :class:`_BadInput`."""
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
        raise _BadInput(f"{option} {endpoint!r} is not a ZeroMQ endpoint; expected e.g. {example}")
    return endpoint


def _is_loopback(endpoint: str) -> bool:
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


def _check_channels(channels: Sequence[str]) -> list[str]:
    from gdbpool.notification import check_channel

    try:
        return [check_channel(c) for c in channels]
    except GDBPoolError as exc:
        raise _BadInput(f"--channel: {exc}") from None


def _positive(kind: Callable[[str], Any], *, zero: bool = False) -> Callable[[str], Any]:
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


def _wait_for_server(dsn: str, wait: float, stop: _StopFlag) -> None:
    """Return once the server at ``dsn`` accepts a connection.

    Retries with a doubling backoff (0.1 s up to 2 s) for at most ``wait``
    seconds (0: one attempt).  Authentication errors and a missing database
    fail at once: waiting will not fix them.  Raises :class:`GDBPoolError`
    (exit 1) naming host, port and database, or :class:`_Stopped`.
    """
    import psycopg2

    from gdbpool.logging import redact

    deadline = time.monotonic() + wait
    delay = 0.1
    while True:
        try:
            psycopg2.connect(dsn, connect_timeout=5, application_name="gdbpool-cli").close()
            return
        except psycopg2.OperationalError as exc:
            detail = " ".join(redact(str(exc)).split())
            permanent = any(word in detail for word in _PERMANENT)
            if permanent or time.monotonic() + delay > deadline:
                hint = "" if permanent or wait else " (--wait SECONDS waits for it to come up)"
                raise GDBPoolError(f"cannot connect to {_describe(dsn)}: {detail}{hint}") from None
        if stop.wait(delay):
            raise _Stopped(stop.code)
        delay = min(delay * 2, _WAIT_STEP_MAX)


# -- subcommands ---------------------------------------------------------------------


def _cmd_postgres(args: argparse.Namespace) -> int:
    """Run an embedded PostgreSQL server in the foreground until SIGINT/SIGTERM."""
    from gdbpool.embedded import EmbeddedPostgres
    from gdbpool.logging import redact

    stop = _StopFlag(green=False)
    if args.replica_of is not None:
        _check_dsn(args.replica_of)
        # Under a Procfile the primary starts at the same time: give it a while.
        wait = _REPLICA_WAIT if args.wait is None else args.wait
        _wait_for_server(args.replica_of, wait, stop)
    server = EmbeddedPostgres(
        data_dir=args.data,
        port=args.port,
        fast=args.fast,
        replica_of=args.replica_of,
        password=args.password,
    )
    try:
        server.start()
        if args.replica_of is None:
            _ensure_postgres_role(server)
        role = "replica" if args.replica_of is not None else "primary"
        print(f"gdbpool postgres: {role} ready on {server.host}:{server.port} "
              f"data={server.data_dir}", flush=True)
        print(f"gdbpool postgres: dsn: {redact(server.dsn())}", flush=True)
        while not stop.wait(0.5):
            if not server.is_running:
                print("gdbpool postgres: server exited unexpectedly", file=sys.stderr)
                return 1
    finally:
        server.stop()
        print("gdbpool postgres: stopped", flush=True)
    return stop.code


def _ensure_postgres_role(server: Any) -> None:
    """Make ``postgres`` a login role with the cluster's password.

    A cluster made by a non-root user has that user as superuser; adding
    ``postgres`` lets one DSN (as in the Procfiles) work whoever runs it.
    """
    if server.user == "postgres":
        return
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(server.dsn())
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'postgres'")
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE ROLE postgres SUPERUSER LOGIN PASSWORD {}").format(
                    sql.Literal(server.password)))
    finally:
        conn.close()


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job end to end (see :mod:`gdbpool.demo`)."""
    from gdbpool.demo import run_demo

    return run_demo(dsn=args.dsn, json_logs=args.json_logs)


def _cmd_bridge(args: argparse.Namespace) -> int:
    """Publish NOTIFY events of ``--channel`` on a ZeroMQ PUB socket until SIGINT/SIGTERM.

    Prints ``gdbpool bridge: endpoint ENDPOINT channels=... source=...`` on
    stdout once publishing (the line Procfiles and tests read).
    """
    dsn = _check_dsn(args.dsn)
    channels = _check_channels(args.channel)
    bind = _check_endpoint(args.bind, option="--bind", bind=True)

    from gdbpool.channel_listener import NotificationHub
    from gdbpool.errors import ConfigurationError
    from gdbpool.logging import configure_logging
    from gdbpool.zmq_bridge import ZmqNotifyBridge

    configure_logging(json=args.json_logs, stream=sys.stderr)
    if not _is_loopback(bind):
        print(f"gdbpool bridge: warning: publishing on {bind}, beyond loopback, in plaintext: "
              "anyone who can reach it can read these notifications", file=sys.stderr, flush=True)
    stop = _StopFlag(green=True)
    try:
        _wait_for_server(dsn, args.wait, stop)
        # Typed Any: the hub's subscribe() takes a Literal overflow, the bridge's
        # NotificationSource protocol a str (reported to the bridge's author).
        hub: Any = NotificationHub(dsn, application_name="gdbpool-bridge")
        try:
            try:
                bridge = ZmqNotifyBridge(hub, channels, bind=bind, sndhwm=args.sndhwm,
                                         heartbeat_interval=args.heartbeat)
            except ConfigurationError as exc:  # the address is taken or not ours
                raise GDBPoolError(str(exc)) from None
            try:
                print(f"gdbpool bridge: endpoint {bridge.endpoint} channels={','.join(channels)} "
                      f"source={bridge.source_id}", flush=True)
                while not stop.wait(1.0):
                    if hub.closed:
                        print("gdbpool bridge: error: the listener gave up; see the log above",
                              file=sys.stderr, flush=True)
                        return 1
            finally:
                bridge.close()
        finally:
            hub.close()
    except _Stopped as stopped:
        return stopped.code
    finally:
        stop.cancel()
    print("gdbpool bridge: stopped", flush=True)
    return stop.code


def _event_record(event: Any) -> dict[str, Any]:
    """A subscriber event as a JSON-ready dict with a ``type`` field."""
    from gdbpool.notification import Notification, Reconnected
    from gdbpool.zmq_subscriber import BridgeRestarted, BridgeSilent, Gap

    if isinstance(event, Notification):
        return {"type": "notify", "channel": event.channel, "payload": event.payload,
                "seq": event.seq, "source": event.source, "pid": event.pid,
                "ts": event.received_at}
    if isinstance(event, Gap):
        return {"type": "gap", "channel": event.channel, "source": event.source,
                "expected": event.expected, "got": event.got, "missed": event.missed}
    if isinstance(event, Reconnected):
        return {"type": "reconnected", "channels": list(event.channels), "reason": event.reason,
                "ts": event.at}
    if isinstance(event, BridgeRestarted):
        return {"type": "bridge_restarted", "bridge": event.bridge,
                "old_source": event.old_source, "source": event.new_source}
    if isinstance(event, BridgeSilent):
        return {"type": "bridge_silent", "bridge": event.bridge, "source": event.source,
                "last_seen": event.last_seen}
    return {"type": "unknown", "repr": repr(event)}


def _event_line(record: dict[str, Any]) -> str:
    """A readable one-line rendering of :func:`_event_record`'s dict."""
    kind = record["type"]
    if kind == "notify":
        return (f"[{record['channel']}] #{record['seq']} pid={record['pid']} "
                f"src={record['source']}: {record['payload']}")
    if kind == "gap":
        return (f"[{record['channel']}] GAP: {record['missed']} missed "
                f"(seq {record['expected']}..{record['got'] - 1}) src={record['source']}")
    if kind == "reconnected":
        channels = ",".join(record["channels"])
        return f"[{channels}] RECONNECTED: {record['reason']} (some may be lost)"
    if kind == "bridge_restarted":
        return (f"BRIDGE RESTARTED: {record['bridge']} "
                f"src={record['old_source']}->{record['source']}")
    if kind == "bridge_silent":
        return f"BRIDGE SILENT: {record['bridge']} src={record['source']}"
    return repr(record)


def _cmd_subscribe(args: argparse.Namespace) -> int:
    """Print events from one or more bridges, one line each, until --count/--timeout/a signal.

    Notifications count towards ``--count``; loss events (gap, reconnected,
    bridge restarted or silent) are printed too but not counted.  Once a
    bridge is heard from, ``connected to ...`` goes to stderr.
    """
    connects = [_check_endpoint(c, option="--connect", bind=False) for c in args.connect]
    channels = _check_channels(args.channel)

    from gdbpool.logging import configure_logging
    from gdbpool.notification import Notification
    from gdbpool.zmq_subscriber import NotifySubscriber

    configure_logging(json=args.json_logs, stream=sys.stderr, level="WARNING")
    out: TextIO = sys.stdout
    stop = _StopFlag(green=True)
    seen = 0
    announced: set[str] = set()
    try:
        with NotifySubscriber(connects, channels, green=True,
                              heartbeat_timeout=args.heartbeat_timeout) as sub:
            idle_since = time.monotonic()
            while not stop.is_set():
                try:
                    event = sub.get(timeout=_SUBSCRIBE_TICK)
                except TimeoutError:
                    event = None
                for src, bridge in sub.sources.items():
                    if src not in announced:
                        announced.add(src)
                        print(f"gdbpool subscribe: connected to {bridge} (source {src})",
                              file=sys.stderr, flush=True)
                if event is not None:
                    record = _event_record(event)
                    out.write((json.dumps(record) if args.json else _event_line(record)) + "\n")
                    out.flush()
                    if isinstance(event, Notification):
                        seen += 1
                        idle_since = time.monotonic()
                        if args.count is not None and seen >= args.count:
                            return 0
                elif args.timeout is not None and time.monotonic() - idle_since >= args.timeout:
                    print(f"gdbpool subscribe: error: no notification within {args.timeout:g} s "
                          f"({seen} received)", file=sys.stderr, flush=True)
                    return 1
    except BrokenPipeError:  # e.g. piped into `head`: the reader is done
        return 0
    finally:
        stop.cancel()
    return stop.code


def _cmd_notify(args: argparse.Namespace) -> int:
    """Send one NOTIFY (``SELECT pg_notify(%s, %s)``, parameters) and exit."""
    from gdbpool.notification import check_payload

    dsn = _check_dsn(args.dsn)
    (channel,) = _check_channels([args.channel])
    payload = sys.stdin.read().rstrip("\n") if args.payload == "-" else args.payload
    try:
        check_payload(payload)
    except GDBPoolError as exc:
        raise _BadInput(f"--payload: {exc}") from None

    import psycopg2

    from gdbpool.logging import redact

    stop = _StopFlag(green=False)
    try:
        _wait_for_server(dsn, args.wait, stop)
        try:
            conn = psycopg2.connect(dsn, connect_timeout=10, application_name="gdbpool-notify")
        except psycopg2.OperationalError as exc:
            detail = " ".join(redact(str(exc)).split())
            raise GDBPoolError(f"cannot connect to {_describe(dsn)}: {detail}") from None
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT pg_notify(%s, %s)", (channel, payload))
        except psycopg2.Error as exc:
            detail = " ".join(redact(str(exc)).split())
            raise GDBPoolError(f"NOTIFY on {_describe(dsn)} failed: {detail}") from None
        finally:
            conn.close()
    except _Stopped as stopped:
        return stopped.code
    print(f"gdbpool notify: sent {len(payload.encode())} bytes on {channel!r}", flush=True)
    return 0


# -- the parser ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``gdbpool`` command, with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="gdbpool",
        description=(
            "PostgreSQL pooling for gevent, as an actor system, with a ZeroMQ NOTIFY bridge."
        ),
        epilog="exit codes: 0 ok, 1 runtime failure, 2 bad usage or input, 130 Ctrl-C",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser("demo", help="run the end-to-end tour (embedded PostgreSQL unless --dsn)")
    demo.add_argument("--dsn", help="use this server instead of starting an embedded one")
    demo.add_argument("--json-logs", action="store_true", help="log as JSON lines")
    demo.set_defaults(func=_cmd_demo)

    pg = sub.add_parser("postgres", help="run an embedded PostgreSQL server in the foreground")
    pg.add_argument("--data", type=Path, default=None,
                    help="data directory (kept; initialised when empty). Default: throwaway")
    pg.add_argument("--port", type=int, default=5432, help="TCP port on 127.0.0.1 (default 5432)")
    pg.add_argument("--password", default=None,
                    help="superuser password for a new cluster (default: random, printed masked)")
    pg.add_argument("--replica-of", metavar="DSN", default=None,
                    help="start as a streaming replica of the primary at DSN")
    pg.add_argument("--wait", type=_positive(float, zero=True), default=None, metavar="SECONDS",
                    help=f"with --replica-of: wait up to SECONDS for the primary to accept "
                         f"connections (default {_REPLICA_WAIT:g})")
    pg.add_argument("--fast", action="store_true",
                    help="fsync off etc. (unsafe; for tests and demos only)")
    pg.set_defaults(func=_cmd_postgres)

    wait_help = ("wait up to SECONDS for the server to accept connections, retrying with a "
                 "bounded backoff (default 0: fail at once)")
    br = sub.add_parser("bridge", help="publish NOTIFY events on a ZeroMQ PUB socket")
    br.add_argument("--dsn", required=True, help="the primary (LISTEN needs it)")
    br.add_argument("--channel", action="append", required=True, metavar="C",
                    help="a channel to LISTEN on and publish (repeat for more)")
    br.add_argument("--bind", default="tcp://127.0.0.1:0", metavar="ENDPOINT",
                    help="where to publish (default tcp://127.0.0.1:0: loopback, a free port; "
                         "any other address only when given here)")
    br.add_argument("--sndhwm", type=_positive(int, zero=True), default=10_000, metavar="N",
                    help="messages queued per subscriber before ZeroMQ drops (default 10000)")
    br.add_argument("--heartbeat", type=_positive(float), default=1.0, metavar="SECONDS",
                    help="heartbeat interval (default 1.0)")
    br.add_argument("--wait", type=_positive(float, zero=True), default=0.0, metavar="SECONDS",
                    help=wait_help)
    br.add_argument("--json-logs", action="store_true", help="log to stderr as JSON lines")
    br.set_defaults(func=_cmd_bridge)

    su = sub.add_parser("subscribe", help="print events from one or more bridges")
    su.add_argument("--connect", action="append", required=True, metavar="ENDPOINT",
                    help="a bridge endpoint, e.g. tcp://127.0.0.1:55555 (repeat for more)")
    su.add_argument("--channel", action="append", required=True, metavar="C",
                    help="a channel name prefix to follow (repeat for more)")
    su.add_argument("--json", action="store_true",
                    help="one JSON object per line (type, channel, payload, seq, source, pid...)")
    su.add_argument("--count", type=_positive(int), default=None, metavar="N",
                    help="exit 0 after N notifications")
    su.add_argument("--timeout", type=_positive(float), default=None, metavar="SECONDS",
                    help="exit 1 when no notification arrives for SECONDS")
    su.add_argument("--heartbeat-timeout", type=_positive(float), default=3.0, metavar="SECONDS",
                    help="report a bridge silent after SECONDS without a message (default 3)")
    su.add_argument("--json-logs", action="store_true", help="log to stderr as JSON lines")
    su.set_defaults(func=_cmd_subscribe)

    no = sub.add_parser("notify", help="send one NOTIFY")
    no.add_argument("--dsn", required=True)
    no.add_argument("--channel", required=True, metavar="C")
    no.add_argument("--payload", required=True, metavar="P",
                    help="the payload (at most 7999 bytes of UTF-8); '-' reads it from stdin "
                         "(trailing newlines removed)")
    no.add_argument("--wait", type=_positive(float, zero=True), default=0.0, metavar="SECONDS",
                    help=wait_help)
    no.set_defaults(func=_cmd_notify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gdbpool`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except _BadInput as exc:
        print(f"gdbpool {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except GDBPoolError as exc:
        from gdbpool.logging import redact

        print(f"gdbpool {args.command}: error: {redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
