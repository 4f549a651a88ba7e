"""Benchmark: pg_notify → subscriber, through the ZeroMQ bridge, raw pyzmq and in-process.

    ./run bench bridge [--n 30000] [--rounds 3] [--latency-n 2000] [--size 100] [--gap 1000]

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
Each round also runs the bridge with replay off (``--replay-size 0``), so
the replay ring's cost is the ratio of the two in the same round; and "heal"
times a resumed subscriber recovering a gap of ``--gap`` messages from the
ring: from the heartbeat that reveals the gap to the last replayed message.
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
    replay = {} if args.replay_size is None else {"replay_size": args.replay_size}
    bridge = ZmqNotifyBridge(
        hub, ["bench"], queue_size=100_000, sndhwm=100_000, heartbeat_interval=0.2, **replay
    )
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


DSN_ENV = "GDBPOOL_BENCH_DSN"  # the DSN holds a password: never on a command line


def child(*argv: str, dsn: str | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if dsn is not None:
        env[DSN_ENV] = dsn
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
    dsn: str, n: int, size: int, paced: bool, hand: bool = False, replay_size: int | None = None
) -> dict[str, Any]:
    import psycopg2

    replay = [] if replay_size is None else ["--replay-size", str(replay_size)]
    bridge = child("hand" if hand else "bridge", *replay, dsn=dsn)
    try:
        endpoint = json.loads(read_line(bridge, 30))["endpoint"]
        sub = child("sub", "--connect", endpoint, "--n", str(n), *(["--hand"] if hand else []))
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            warm_until_ready(sub, lambda: cur.execute("SELECT pg_notify('bench', 'warm')"))
        conn.close()
        sender = child(
            "send", "--n", str(n), "--size", str(size), *(["--paced"] if paced else []), dsn=dsn
        )
        result: dict[str, Any] = json.loads(read_line(sub, 120))
        sender.wait(60)
        return result
    finally:
        assert bridge.stdin is not None
        bridge.stdin.close()
        bridge.wait(10)


def run_heal(dsn: str, gap: int) -> dict[str, Any]:
    """Seconds a resumed subscriber takes to recover ``gap`` messages from the ring."""
    import psycopg2

    from gdbpool import Notification, NotifySubscriber

    bridge = child("bridge", dsn=dsn)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        endpoint = json.loads(read_line(bridge, 30))["endpoint"]
        with NotifySubscriber(endpoint, ["bench"], green=False, replay=False) as observer:
            observer.wait_connected(30)
            with NotifySubscriber(endpoint, ["bench"], green=False) as first:
                first.wait_connected(30)
                position = first.position()
            with conn.cursor() as cur:  # while nobody resumable listens
                cur.execute(
                    "SELECT pg_notify('bench', 'g' || i) FROM generate_series(1, %s) AS i",
                    (gap,),
                )
            got = 0
            while got < gap:  # the bridge has published them all
                got += isinstance(observer.get(timeout=30), Notification)
        with NotifySubscriber(endpoint, ["bench"], green=False, resume=position) as sub:
            sub.wait_connected(30)  # the heartbeat that shows the gap: replay asked for
            started = time.monotonic()
            replayed = 0
            while replayed < gap:
                event = sub.get(timeout=30)
                replayed += isinstance(event, Notification) and event.replayed
            return {"gap": gap, "seconds": time.monotonic() - started}
    finally:
        conn.close()
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
        "send", "--n", str(n), "--size", str(size), *(["--paced"] if paced else []), dsn=dsn
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
    parser.add_argument("--gap", type=int, default=1000, help="messages to heal from the ring")
    parser.add_argument("--replay-size", type=int, help=argparse.SUPPRESS)  # the bridge role's
    args = parser.parse_args()
    if args.role != "main":
        args.dsn = args.dsn or os.environ.get(DSN_ENV)
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
    replay_costs: list[float] = []
    with EmbeddedPostgres() as pg:
        dsn = pg.dsn()
        trio: list[tuple[str, bool, int | None]] = [
            ("hand", True, None), ("bridge", False, None), ("no replay", False, 0)
        ]  # fmt: skip
        for r in range(args.rounds):
            results = {
                name: run_bridge(dsn, args.n, args.size, False, hand=hand, replay_size=size)
                for name, hand, size in trio[r % 3 :] + trio[: r % 3]
            }
            for name, result in results.items():
                if result["received"] != result["expected"]:
                    raise SystemExit(f"{name}: {result['received']} of {result['expected']}")
            ratios.append(results["bridge"]["rate"] / results["hand"]["rate"])
            replay_costs.append(1 - results["bridge"]["rate"] / results["no replay"]["rate"])
            rows.append((f"hand-rolled, round {r + 1}", "burst", results["hand"]))
            rows.append((f"bridge, round {r + 1}", "burst", results["bridge"]))
            rows.append((f"bridge no replay, rd {r + 1}", "burst", results["no replay"]))
        heal = run_heal(dsn, args.gap)
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
    print(
        f"burst: replay's cost (1 - on/off rate), {args.rounds} rounds: "
        f"{statistics.median(replay_costs):+.1%} "
        f"[{min(replay_costs):+.1%}..{max(replay_costs):+.1%}]"
    )
    print(f"heal: a gap of {heal['gap']} messages recovered in {heal['seconds'] * 1000:.0f} ms")
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
