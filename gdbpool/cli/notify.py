"""``gdbpool bridge``, ``subscribe`` and ``notify``: NOTIFY events across ZeroMQ.

``bridge`` publishes a server's NOTIFY events on a ZeroMQ PUB socket,
``subscribe`` prints what one or more bridges publish, ``notify`` sends one
NOTIFY.  Each returns its exit code; errors are raised as
:class:`~gdbpool.errors.GDBPoolError` (exit 1) or
:class:`~gdbpool.cli.args.BadInput` (exit 2) for :func:`gdbpool.cli.main`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import gevent

from gdbpool.cli.args import (
    BadInput,
    check_channels,
    check_dsn,
    check_endpoint,
    describe,
    is_loopback,
)
from gdbpool.cli.keys import SECRET_ENV, SERVER_ENV, allowed_keys, own_key_pair, server_key
from gdbpool.cli.signals import StopFlag, Stopped
from gdbpool.errors import GDBPoolError
from gdbpool.server.wait import ATTEMPT_TIMEOUT, connect_when_ready, one_line, wait_for_server

__all__ = ["NOTIFY_TIMEOUT", "SUBSCRIBE_TICK", "cmd_bridge", "cmd_notify", "cmd_subscribe"]

#: Seconds between checks of the stop flag while ``subscribe`` waits for events.
SUBSCRIBE_TICK = 0.5
#: Seconds ``notify`` gives the server to run ``SELECT pg_notify(...)`` once connected.
NOTIFY_TIMEOUT = 10.0


def cmd_bridge(args: argparse.Namespace) -> int:
    """Publish NOTIFY events of ``--channel`` on a ZeroMQ PUB socket until SIGINT/SIGTERM.

    Prints ``gdbpool bridge: endpoint ENDPOINT channels=... source=...`` on
    stdout once publishing (the line Procfiles and tests read).
    """
    dsn = check_dsn(args.dsn)
    channels = check_channels(args.channel)
    bind = check_endpoint(args.bind, option="--bind", bind=True)
    replay_bind = check_endpoint(args.replay_bind, option="--replay-bind", bind=True)
    metrics = _metrics_address(args.metrics) if args.metrics else None
    keys = own_key_pair(args)
    if args.allow_file is not None and keys is None:
        raise BadInput(f"--allow-file needs CURVE keys: --curve-secret-file or ${SECRET_ENV}")
    allowed = allowed_keys(args.allow_file)

    from gdbpool.errors import ConfigurationError
    from gdbpool.logging import configure_logging
    from gdbpool.notify.bridge import ZmqNotifyBridge
    from gdbpool.notify.hub import NotificationHub

    configure_logging(json=args.json_logs, stream=sys.stderr)
    for endpoint in (bind, replay_bind) if args.replay_size else (bind,):
        if not is_loopback(endpoint) and keys is None:
            print(
                f"gdbpool bridge: warning: publishing on {endpoint}, beyond loopback, in "
                "plaintext: anyone who can reach it can read these notifications",
                file=sys.stderr,
                flush=True,
            )
    stop = StopFlag(green=True)
    try:
        wait_for_server(dsn, args.wait, application_name="gdbpool-cli", pause=stop.pause)
        # Typed Any: the hub's subscribe() takes a Literal overflow, the bridge's
        # NotificationSource protocol a str (reported to the bridge's author).
        hub: Any = NotificationHub(dsn, application_name="gdbpool-bridge")
        try:
            try:
                bridge = ZmqNotifyBridge(
                    hub,
                    channels,
                    bind=bind,
                    sndhwm=args.sndhwm,
                    heartbeat_interval=args.heartbeat,
                    replay_size=args.replay_size,
                    replay_bind=replay_bind,
                    curve_public_key=None if keys is None else keys[0],
                    curve_secret_key=None if keys is None else keys[1],
                    allowed_client_keys=allowed,
                )
            except ConfigurationError as exc:  # the address is taken or not ours
                raise GDBPoolError(str(exc)) from None
            server = None
            try:
                replay = f" replay={bridge.replay_endpoint}" if bridge.replay_endpoint else ""
                served = ""
                if metrics is not None:
                    server, url = _serve_metrics(metrics, hub, bridge)
                    served = f" metrics={url}"
                print(
                    f"gdbpool bridge: endpoint {bridge.endpoint} channels={','.join(channels)} "
                    f"source={bridge.source_id}{replay}{served}",
                    flush=True,
                )
                while not stop.wait(1.0):
                    if hub.closed:
                        print(
                            "gdbpool bridge: error: the listener gave up; see the log above",
                            file=sys.stderr,
                            flush=True,
                        )
                        return 1
            finally:
                if server is not None:
                    server.stop(timeout=1.0)
                bridge.close()
        finally:
            hub.close()
    except Stopped as stopped:
        return stopped.code
    finally:
        stop.cancel()
    print("gdbpool bridge: stopped", flush=True)
    return stop.code


def _metrics_address(address: str) -> str:
    """``--metrics HOST:PORT`` checked (BadInput), with the extra it needs installed."""
    try:
        from gdbpool.metrics.collector import parse_address
    except ImportError as exc:
        raise BadInput(f"--metrics: {exc}") from None
    from gdbpool.errors import ConfigurationError

    try:
        host, port = parse_address(address)
    except ConfigurationError as exc:
        raise BadInput(f"--metrics: {exc}") from None
    if not is_loopback(f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"):
        print(
            f"gdbpool bridge: warning: serving metrics on {address}, beyond loopback: "
            "anyone who can reach it can read channel names and counters",
            file=sys.stderr,
            flush=True,
        )
    return address


def _serve_metrics(address: str, hub: Any, bridge: Any) -> tuple[Any, str]:
    """Serve GET /metrics over the bridge and its hub: (server, url); GDBPoolError if taken."""
    from gdbpool.metrics import GDBPoolCollector, serve

    try:
        server = serve(address, GDBPoolCollector(hub, bridge))
    except OSError as exc:
        raise GDBPoolError(f"--metrics {address}: cannot listen: {exc.strerror}") from None
    host = address.rpartition(":")[0]
    return server, f"http://{host}:{server.server_port}/metrics"


def _event_record(event: Any) -> dict[str, Any]:
    """A subscriber event as a JSON-ready dict with a ``type`` field."""
    from gdbpool.notify.notification import Notification, Reconnected
    from gdbpool.notify.subscriber import BridgeRestarted, BridgeSilent, Gap, Lagging

    if isinstance(event, Notification):
        return {
            "type": "notify",
            "channel": event.channel,
            "payload": event.payload,
            "seq": event.seq,
            "source": event.source,
            "pid": event.pid,
            "ts": event.received_at,
            "replayed": event.replayed,
        }
    if isinstance(event, Lagging):
        return {"type": "lagging", "by": event.by, "since": event.since}
    if isinstance(event, Gap):
        return {
            "type": "gap",
            "channel": event.channel,
            "source": event.source,
            "expected": event.expected,
            "got": event.got,
            "missed": event.missed,
        }
    if isinstance(event, Reconnected):
        return {
            "type": "reconnected",
            "channels": list(event.channels),
            "reason": event.reason,
            "ts": event.at,
        }
    if isinstance(event, BridgeRestarted):
        return {
            "type": "bridge_restarted",
            "bridge": event.bridge,
            "old_source": event.old_source,
            "source": event.new_source,
        }
    if isinstance(event, BridgeSilent):
        return {
            "type": "bridge_silent",
            "bridge": event.bridge,
            "source": event.source,
            "last_seen": event.last_seen,
        }
    return {"type": "unknown", "repr": repr(event)}


def _event_line(record: dict[str, Any]) -> str:
    """A readable one-line rendering of :func:`_event_record`'s dict."""
    kind = record["type"]
    if kind == "notify":
        replayed = " (replayed)" if record["replayed"] else ""
        return (
            f"[{record['channel']}] #{record['seq']} pid={record['pid']} "
            f"src={record['source']}{replayed}: {record['payload']}"
        )
    if kind == "lagging":
        return f"LAGGING: {record['by']:.3f} s behind"
    if kind == "gap":
        return (
            f"[{record['channel']}] GAP: {record['missed']} missed "
            f"(seq {record['expected']}..{record['got'] - 1}) src={record['source']}"
        )
    if kind == "reconnected":
        channels = ",".join(record["channels"])
        return f"[{channels}] RECONNECTED: {record['reason']} (some may be lost)"
    if kind == "bridge_restarted":
        return (
            f"BRIDGE RESTARTED: {record['bridge']} src={record['old_source']}->{record['source']}"
        )
    if kind == "bridge_silent":
        return f"BRIDGE SILENT: {record['bridge']} src={record['source']}"
    return repr(record)


def _read_resume_file(path: Path) -> dict[str, Any] | None:
    """The position saved in ``path``; None when there is no file yet; BadInput when unreadable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadInput(f"--resume-file {str(path)!r}: cannot read it: {exc.strerror}") from None
    try:
        saved = json.loads(text)
    except ValueError:
        saved = None
    if (
        not isinstance(saved, dict)
        or saved.get("v") != 1
        or not isinstance(saved.get("position"), dict)
    ):
        raise BadInput(
            f"--resume-file {str(path)!r} is not a gdbpool subscribe position file; "
            "remove it to start afresh"
        )
    position: dict[str, Any] = saved["position"]
    return position


def _write_resume_file(path: Path, position: dict[str, Any]) -> None:
    """Replace ``path`` atomically (write a sibling temporary file, then rename it)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"v": 1, "position": position}, f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cmd_subscribe(args: argparse.Namespace) -> int:
    """Print events from one or more bridges, one line each, until --count/--timeout/a signal.

    Notifications count towards ``--count``; loss events (gap, reconnected,
    bridge restarted or silent) are printed too but not counted.  Once a
    bridge is heard from, ``connected to ...`` goes to stderr.  With
    ``--resume-file``, the position is saved after every event printed (so a
    killed run repeats at most the one event it was printing) and a later run
    resumes from it, the bridges replaying what they still hold.
    """
    connects = [check_endpoint(c, option="--connect", bind=False) for c in args.connect]
    channels = check_channels(args.channel)
    resume_file = Path(args.resume_file) if args.resume_file else None
    resume = _read_resume_file(resume_file) if resume_file is not None else None
    bridge_key = server_key(args)
    keys = own_key_pair(args)
    if keys is not None and bridge_key is None:
        raise BadInput(
            f"CURVE keys need the bridge's public key: --curve-server-key-file or ${SERVER_ENV}"
        )

    from gdbpool.logging import configure_logging
    from gdbpool.notify.notification import Notification
    from gdbpool.notify.subscriber import NotifySubscriber

    configure_logging(json=args.json_logs, stream=sys.stderr, level="WARNING")
    out: TextIO = sys.stdout
    stop = StopFlag(green=True)
    seen = 0
    announced: set[str] = set()
    try:
        with NotifySubscriber(
            connects,
            channels,
            green=True,
            heartbeat_timeout=args.heartbeat_timeout,
            replay=not args.no_replay,
            resume=resume,
            max_lateness=args.max_lateness,
            curve_server_key=bridge_key,
            curve_public_key=None if keys is None else keys[0],
            curve_secret_key=None if keys is None else keys[1],
        ) as sub:
            idle_since = time.monotonic()
            while not stop.is_set():
                try:
                    event = sub.get(timeout=SUBSCRIBE_TICK)
                except TimeoutError:
                    event = None
                for src, bridge in sub.sources.items():
                    if src not in announced:
                        announced.add(src)
                        print(
                            f"gdbpool subscribe: connected to {bridge} (source {src})",
                            file=sys.stderr,
                            flush=True,
                        )
                if event is not None:
                    record = _event_record(event)
                    out.write((json.dumps(record) if args.json else _event_line(record)) + "\n")
                    out.flush()
                    if resume_file is not None:
                        _write_resume_file(resume_file, sub.position())
                    if isinstance(event, Notification):
                        seen += 1
                        idle_since = time.monotonic()
                        if args.count is not None and seen >= args.count:
                            return 0
                elif args.timeout is not None and time.monotonic() - idle_since >= args.timeout:
                    print(
                        f"gdbpool subscribe: error: no notification within {args.timeout:g} s "
                        f"({seen} received)",
                        file=sys.stderr,
                        flush=True,
                    )
                    return 1
    except BrokenPipeError:  # e.g. piped into `head`: the reader is done
        return 0
    finally:
        stop.cancel()
    return stop.code


def _stdin_text() -> str:
    """stdin as strict UTF-8, its last newline dropped; NotificationError if it is not UTF-8."""
    from gdbpool.errors import NotificationError

    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8").rstrip("\n")
    except UnicodeDecodeError as exc:
        raise NotificationError(
            f"stdin is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} "
            "(NOTIFY payloads are UTF-8)"
        ) from None


def cmd_notify(args: argparse.Namespace) -> int:
    """Send one NOTIFY (``SELECT pg_notify(%s, %s)``, parameters) and exit.

    Connecting is bounded by ``--wait`` (each attempt by at most
    :data:`~gdbpool.server.wait.ATTEMPT_TIMEOUT`), the statement by
    :data:`NOTIFY_TIMEOUT`.
    """
    from gdbpool.notify.notification import check_payload

    dsn = check_dsn(args.dsn)
    (channel,) = check_channels([args.channel])
    try:
        payload = _stdin_text() if args.payload == "-" else args.payload
        check_payload(payload)
    except GDBPoolError as exc:
        raise BadInput(f"--payload: {exc}") from None

    import psycopg2

    stop = StopFlag(green=True)
    try:
        conn = connect_when_ready(
            dsn,
            args.wait,
            application_name="gdbpool-notify",
            attempt_timeout=ATTEMPT_TIMEOUT,
            pause=stop.pause,
        )
        try:
            conn.autocommit = True
            silent = GDBPoolError(
                f"NOTIFY on {describe(dsn)} got no answer within {NOTIFY_TIMEOUT:g} s"
            )
            with gevent.Timeout(NOTIFY_TIMEOUT, silent), conn.cursor() as cur:
                cur.execute("SELECT pg_notify(%s, %s)", (channel, payload))
        except psycopg2.Error as exc:
            raise GDBPoolError(f"NOTIFY on {describe(dsn)} failed: {one_line(exc)}") from None
        finally:
            conn.close()
    except Stopped as stopped:
        return stopped.code
    finally:
        stop.cancel()
    print(f"gdbpool notify: sent {len(payload.encode())} bytes on {channel!r}", flush=True)
    return 0
