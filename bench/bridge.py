"""Benchmark: pg_notify → subscriber, through the ZeroMQ bridge, raw pyzmq and in-process.

    ./run bench bridge [--n 30000] [--rounds 3] [--latency-n 2000] [--size 100]

Starts its own EmbeddedPostgres.  Four paths:

* ``bridge``: pg_notify (sender process) → NotificationHub + ZmqNotifyBridge
  (bridge process) → NotifySubscriber (subscriber process);
* ``hand-rolled``: the bridge's ceiling, the same three processes without
  gDBPool: a blocking psycopg2 LISTEN loop publishing the same three frames
  with a JSON header (``json.dumps`` per message), and a pyzmq SUB loop that
  decodes each header (``json.loads``) and payload;
* ``raw zmq``: a plain pyzmq PUB (this process) → SUB (subscriber process),
  same three frames and sizes: the transport ceiling;
* ``in-process``: pg_notify (sender process) → ``hub.subscribe()`` in this
  process.

"burst" sends ``--n`` messages as fast as possible (pg_notify in
transactions of 500) and reports messages/s and latency under load; the
bridge and its hand-rolled ceiling alternate for ``--rounds`` bursts, and
the bridge's ratio is taken against the ceiling of the same round (median
[min..max]);
"paced" sends ``--latency-n`` messages one every ~0.5 ms and reports latency
at low load.  Latency is receive time minus the send time written into the
payload (same host, same clock).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ is sys.path[0], and bench/actors.py would shadow the
# actors package: look in the repository root instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
BATCH = 500
PACE = 0.0005


def _hub_class() -> Any:
    from gdbpool import NotificationHub

    return NotificationHub


def payload(i: int, size: int) -> str:
    head = f"b:{i}:{time.time():.6f}:"
    return head + "x" * max(0, size - len(head))


def summary(latencies: list[float], count: int, expected: int, elapsed: float) -> dict[str, Any]:
    lat = sorted(latencies)
    return {
        "received": count,
        "expected": expected,
        "rate": count / elapsed if elapsed else 0.0,
        "p50_ms": 1000 * statistics.median(lat) if lat else None,
        "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))] if lat else None,
    }


# -- child roles -----------------------------------------------------------------


def role_bridge(args: argparse.Namespace) -> None:
    from gevent.socket import wait_read

    from gdbpool import ZmqNotifyBridge

    hub = _hub_class()(args.dsn)
    bridge = ZmqNotifyBridge(hub, ["bench"], queue_size=100_000, sndhwm=100_000)
    print(json.dumps({"endpoint": bridge.endpoint}), flush=True)
    while True:
        wait_read(sys.stdin.fileno())
        if not sys.stdin.buffer.read1(4096):
            break
    bridge.close()
    hub.close()


def role_hand(args: argparse.Namespace) -> None:
    """The hand-rolled bridge: LISTEN, and one JSON header + send_multipart per NOTIFY."""
    import psycopg2
    import zmq

    conn = psycopg2.connect(args.dsn)
    conn.autocommit = True
    conn.cursor().execute("LISTEN bench")
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.sndhwm = 100_000
    pub.bind("tcp://127.0.0.1:0")
    print(json.dumps({"endpoint": pub.getsockopt_string(zmq.LAST_ENDPOINT)}), flush=True)
    source, seq = os.urandom(8).hex(), 0
    stdin = sys.stdin.fileno()
    while True:
        readable = select.select([conn, stdin], [], [], 1.0)[0]
        if stdin in readable and not os.read(stdin, 4096):
            break
        conn.poll()
        notifies = conn.notifies
        while notifies:
            n = notifies.pop(0)
            seq += 1
            header = {"v": 1, "type": "notify", "src": source, "bridge": "hand", "seq": seq,
                      "pid": n.pid, "ts": time.time()}  # fmt: skip
            pub.send_multipart(
                [n.channel.encode(), json.dumps(header).encode(), n.payload.encode()]
            )
    ctx.destroy(linger=0)
    conn.close()


def role_sub(args: argparse.Namespace) -> None:
    """Receive until ``n`` bench messages (or a quiet second); print a summary line."""
    import zmq

    from gdbpool import Notification, NotifySubscriber

    lat: list[float] = []
    first = last = 0.0
    count = 0
    if args.raw:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        sock.rcvhwm = 100_000
        sock.subscribe(b"")
        sock.connect(args.connect)

        def receive(timeout: float) -> str | None:
            if not sock.poll(int(timeout * 1000)):
                return None
            return str(sock.recv_multipart()[2].decode())
    elif args.hand:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        sock.rcvhwm = 100_000
        sock.subscribe(b"bench")
        sock.connect(args.connect)
        expected: dict[str, int] = {}

        def receive(timeout: float) -> str | None:
            if not sock.poll(int(timeout * 1000)):
                return None
            _topic, raw, body = sock.recv_multipart()
            header = json.loads(raw)
            src = header["src"]  # the sequence tracking a subscriber needs, at its least
            expected[src] = int(header["seq"]) + 1
            return body.decode()
    else:
        sub = NotifySubscriber(args.connect, ["bench"], green=False, rcvhwm=100_000)

        def receive(timeout: float) -> str | None:
            try:
                event = sub.get(timeout=timeout)
            except TimeoutError:
                return None
            return event.payload if isinstance(event, Notification) else ""

    ready = False
    while count < args.n:
        text = receive(1.0 if count else 30.0)  # a quiet second ends it, once it began
        if text is None:
            break
        if not text.startswith("b:"):
            if not ready:
                print("ready", flush=True)
                ready = True
            continue
        now = time.time()
        sent = float(text.split(":", 3)[2])
        if count == 0:
            first = sent
        last = now
        lat.append(now - sent)
        count += 1
    print(json.dumps(summary(lat, count, args.n, last - first)), flush=True)


def role_send(args: argparse.Namespace) -> None:
    import psycopg2

    conn = psycopg2.connect(args.dsn)
    conn.autocommit = True
    cur = conn.cursor()
    if args.paced:
        for i in range(args.n):
            cur.execute("SELECT pg_notify('bench', %s)", (payload(i, args.size),))
            time.sleep(PACE)
    else:
        for start in range(0, args.n, BATCH):
            batch = [payload(i, args.size) for i in range(start, min(args.n, start + BATCH))]
            cur.execute("SELECT pg_notify('bench', p) FROM unnest(%s::text[]) AS t(p)", (batch,))
    conn.close()


# -- the conductor ---------------------------------------------------------------


def child(*argv: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, __file__, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"child {proc.args!r} said nothing within {timeout} s")
    return proc.stdout.readline().decode().strip()


def warm_until_ready(sub: subprocess.Popen[bytes], poke: Any) -> None:
    assert sub.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        poke()
        if select.select([sub.stdout], [], [], 0.05)[0]:
            assert read_line(sub, 1) == "ready"
            return
    raise TimeoutError("subscriber never became ready")


def run_bridge(
    dsn: str, n: int, size: int, paced: bool, hand: bool = False
) -> dict[str, Any]:
    import psycopg2

    bridge = child("hand" if hand else "bridge", "--dsn", dsn)
    try:
        endpoint = json.loads(read_line(bridge, 30))["endpoint"]
        sub = child("sub", "--connect", endpoint, "--n", str(n), *(["--hand"] if hand else []))
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            warm_until_ready(sub, lambda: cur.execute("SELECT pg_notify('bench', 'warm')"))
        conn.close()
        sender = child(
            "send",
            "--dsn",
            dsn,
            "--n",
            str(n),
            "--size",
            str(size),
            *(["--paced"] if paced else []),
        )
        result: dict[str, Any] = json.loads(read_line(sub, 120))
        sender.wait(60)
        return result
    finally:
        assert bridge.stdin is not None
        bridge.stdin.close()
        bridge.wait(10)


def run_raw(n: int, size: int, paced: bool) -> dict[str, Any]:
    import zmq

    from gdbpool.notify.wire import encode_notify

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.sndhwm = 100_000
    pub.bind("tcp://127.0.0.1:0")
    sub = child(
        "sub", "--raw", "--connect", pub.getsockopt_string(zmq.LAST_ENDPOINT), "--n", str(n)
    )

    def frames(text: str, seq: int) -> list[bytes]:
        return encode_notify(
            "bench", text, source="0" * 16, bridge="raw", seq=seq, pid=1, ts=time.time()
        )

    warm_until_ready(sub, lambda: pub.send_multipart(frames("warm", 0)))
    for i in range(n):
        pub.send_multipart(frames(payload(i, size), i + 1))
        if paced:
            time.sleep(PACE)
    result: dict[str, Any] = json.loads(read_line(sub, 120))
    ctx.destroy(linger=0)
    return result


def run_in_process(dsn: str, n: int, size: int, paced: bool) -> dict[str, Any]:
    import gevent

    hub = _hub_class()(dsn)
    subscription = hub.subscribe("bench", maxsize=max(n, 1000))
    sender = child(
        "send", "--dsn", dsn, "--n", str(n), "--size", str(size), *(["--paced"] if paced else [])
    )
    lat: list[float] = []
    first = last = 0.0
    try:
        while len(lat) < n:
            item = subscription.get(timeout=10)
            text = getattr(item, "payload", "")
            if not text.startswith("b:"):
                continue
            now = time.time()
            sent = float(text.split(":", 3)[2])
            first = first or sent
            last = now
            lat.append(now - sent)
    except gevent.Timeout:
        pass
    sender.wait(60)
    subscription.close()
    hub.close()
    return summary(lat, len(lat), n, last - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "role", nargs="?", default="main", choices=["main", "bridge", "hand", "sub", "send"]
    )
    parser.add_argument("--dsn")
    parser.add_argument("--connect")
    parser.add_argument("--raw", action="store_true")
    parser.add_argument("--hand", action="store_true")
    parser.add_argument("--paced", action="store_true")
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3, help="bursts of bridge vs hand-rolled")
    parser.add_argument("--latency-n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()
    if args.role != "main":
        from gdbpool import configure_logging

        configure_logging(level="WARNING", stream=sys.stderr)  # stdout talks to the conductor
        roles = {"bridge": role_bridge, "hand": role_hand, "sub": role_sub, "send": role_send}
        roles[args.role](args)
        return

    import gdbpool  # noqa: F401 - cooperative psycopg2 for the in-process path
    from gdbpool import EmbeddedPostgres, configure_logging

    configure_logging(level="WARNING")
    rows: list[tuple[str, str, dict[str, Any]]] = []
    ratios: list[float] = []
    with EmbeddedPostgres() as pg:
        dsn = pg.dsn()
        for r in range(args.rounds):
            pair = [("hand", True), ("bridge", False)]
            results = {
                name: run_bridge(dsn, args.n, args.size, False, hand=hand)
                for name, hand in (pair if r % 2 == 0 else pair[::-1])
            }
            ratios.append(results["bridge"]["rate"] / results["hand"]["rate"])
            rows.append((f"hand-rolled, round {r + 1}", "burst", results["hand"]))
            rows.append((f"bridge, round {r + 1}", "burst", results["bridge"]))
        for mode, n, paced in (("burst", args.n, False), ("paced", args.latency_n, True)):
            rows.append(("raw zmq PUB/SUB", mode, run_raw(n, args.size, paced)))
            rows.append(("in-process subscribe", mode, run_in_process(dsn, n, args.size, paced)))
            rows.append(("bridge (3 processes)", mode, run_bridge(dsn, n, args.size, paced)))
    print(
        f"\npayload {args.size} bytes; burst n={args.n}, paced n={args.latency_n} "
        f"(one every {PACE * 1000:.1f} ms)"
    )
    print(f"{'path':24} {'mode':6} {'recv':>11} {'msg/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for path, mode, r in rows:
        print(
            f"{path:24} {mode:6} {r['received']:>5}/{r['expected']:<5} {r['rate']:>10.0f} "
            f"{r['p50_ms'] or 0:>8.2f} {r['p99_ms'] or 0:>8.2f}"
        )
    print(
        f"burst: bridge / hand-rolled ceiling, {args.rounds} rounds: "
        f"{statistics.median(ratios):.2f} [{min(ratios):.2f}..{max(ratios):.2f}]"
    )
    by = {(p, m): r for p, m, r in rows}
    for mode in ("burst", "paced"):
        bridge = by[("bridge (3 processes)", mode)]
        raw = by[("raw zmq PUB/SUB", mode)]
        local = by[("in-process subscribe", mode)]
        print(
            f"{mode}: bridge/raw rate {bridge['rate'] / raw['rate']:.2f}, "
            f"bridge/in-process rate {bridge['rate'] / max(local['rate'], 1e-9):.2f}, "
            f"bridge p50 - in-process p50 = "
            f"{(bridge['p50_ms'] or 0) - (local['p50_ms'] or 0):.2f} ms"
        )


if __name__ == "__main__":
    main()
