"""Benchmark: a WSGI app under real HTTP load, gDBPool beside the naive Queue pool.

    ./run bench wsgi [--seconds 5] [--rounds 3] [--clients 64] [--modes run,getput,queue]

Starts its own EmbeddedPostgres. For each mode, in each round (the order
rotates), a fresh **server process** serves a small WSGI app with gevent's
``WSGIServer`` on a loopback port (gevent's monkey patching, 16 server
connections); each request runs ``SELECT %s::int`` with the value from the
query string and answers it, and the server checks the answer echoes the
request's value. A separate **load process** keeps ``--clients`` HTTP/1.1
keep-alive connections busy for ``--seconds`` (``wrk`` is used instead when it
is installed and ``--wrk`` is given) and reports requests/s, p50 and p99
latency, and wrong answers (always 0, or the run fails).

Modes (the app is the same; only how it reaches a connection differs):

* ``run``: ``DBInteractionPool.run(sql, args).get()``;
* ``getput``: ``DBConnectionPool.get(auto_commit=True)``, a cursor, ``put()``;
* ``queue``: the ten-line pool: a ``gevent.queue.Queue`` of 16 connections.

Printed per mode: the median over the rounds of req/s, p50 and p99, with the
range; and req/s over the same round's ``queue`` req/s. The server, the load
generator and PostgreSQL share the machine's cores: compare modes, not
machines.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from _common import CONNECTIONS, use_repository_packages

MODES = ("run", "getput", "queue")
SQL = "SELECT %s::int"


# -- the server process ---------------------------------------------------------------


def serve(mode: str, port: int) -> None:
    """Serve the app on 127.0.0.1:``port`` with ``mode``'s pool; DSN on stdin; 'ready' on stdout."""
    from gevent import monkey

    monkey.patch_all()
    use_repository_packages()
    from gevent.pywsgi import WSGIServer
    from gevent.select import select

    from gdbpool import configure_logging, make_psycopg_green

    make_psycopg_green()
    configure_logging(level="WARNING")
    dsn = sys.stdin.readline().strip()
    query = _query_function(mode, dsn)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        value = int(environ.get("QUERY_STRING", "v=0").partition("=")[2] or 0)
        got = query(value)
        if got != value:  # a wrong answer is a failure, not a slow request
            start_response("500 Wrong Answer", [("Content-Type", "text/plain")])
            return [f"asked {value}, got {got}".encode()]
        body = str(got).encode()
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Inherited by accepted sockets: the reply's header and body writes must not
    # wait out the client's delayed ACK (Nagle), or every request costs 40 ms.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    server = WSGIServer(listener, app, log=None, error_log=None)
    server.start()
    print("ready", flush=True)
    select([sys.stdin], [], [])  # cooperatively: the parent closes stdin to stop us
    server.stop(timeout=1)


def _query_function(mode: str, dsn: str) -> Any:
    if mode == "run":
        from gdbpool import DBInteractionPool

        ipool = DBInteractionPool(dsn, CONNECTIONS, pool_name="wsgi")
        ipool.pool().wait(30)
        return lambda value: ipool.run(SQL, (value,)).get()[0][0]
    if mode == "getput":
        from gdbpool import DBConnectionPool

        pool = DBConnectionPool(dsn, CONNECTIONS, name="wsgi")
        pool.wait(30)

        def getput(value: int) -> int:
            conn = pool.get(auto_commit=True)
            try:
                with conn.cursor() as cur:
                    cur.execute(SQL, (value,))
                    result: int = cur.fetchone()[0]
                    return result
            finally:
                pool.put(conn)

        return getput
    if mode == "queue":
        import psycopg2
        from gevent.queue import Queue

        free: Queue[Any] = Queue()
        for _ in range(CONNECTIONS):
            conn = psycopg2.connect(dsn)
            conn.autocommit = True
            free.put(conn)

        def queued(value: int) -> int:
            conn = free.get()
            try:
                with conn.cursor() as cur:
                    cur.execute(SQL, (value,))
                    result: int = cur.fetchone()[0]
                    return result
            finally:
                free.put(conn)

        return queued
    raise ValueError(f"unknown mode {mode!r}")


# -- the load process -----------------------------------------------------------------


def load(port: int, clients: int, seconds: float) -> None:
    """Keep ``clients`` keep-alive connections busy; print one JSON line of results."""
    from gevent import monkey

    monkey.patch_all()
    import gevent

    def client(i: int, until: float, latencies: list[float]) -> int:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        wrong = n = 0
        try:
            while time.monotonic() < until:
                value = i * 1_000_000 + n
                started = time.monotonic()
                sock.sendall(f"GET /?v={value} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
                status = reader.readline()
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = reader.read(length)
                latencies.append(time.monotonic() - started)
                if b" 200 " not in status or int(body) != value:
                    wrong += 1
                n += 1
        finally:
            reader.close()
            sock.close()
        return wrong

    def burst(span: float) -> tuple[list[float], int, float]:
        latencies: list[float] = []
        started = time.monotonic()
        until = started + span
        jobs = [gevent.spawn(client, i, until, latencies) for i in range(clients)]
        gevent.joinall(jobs, raise_error=True)
        return latencies, sum(job.value for job in jobs), time.monotonic() - started

    burst(min(1.0, seconds / 4))  # warm-up, off the record
    latencies, wrong, elapsed = burst(seconds)
    latencies.sort()
    print(
        json.dumps(
            {
                "rps": len(latencies) / elapsed,
                "p50_ms": latencies[len(latencies) // 2] * 1000,
                "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
                "requests": len(latencies),
                "wrong": wrong,
            }
        ),
        flush=True,
    )


def _wrk(port: int, clients: int, seconds: float) -> dict[str, float]:
    """The same measurement with wrk (constant value, so no echo check but the server's)."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{clients}", f"-d{seconds:.0f}s", "--latency",
         f"http://127.0.0.1:{port}/?v=7"],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout  # fmt: skip
    fields: dict[str, float] = {"wrong": 0.0}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            fields["rps"] = float(parts[1])
        elif parts[:1] in (["50%"], ["99%"]):
            fields[f"p{parts[0][:-1]}_ms"] = _wrk_ms(parts[1])
        elif "Non-2xx" in line:
            fields["wrong"] = float(parts[-1])
    return fields


def _wrk_ms(text: str) -> float:
    for unit, scale in (("ms", 1.0), ("us", 0.001), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(text)


# -- the parent -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _one(mode: str, dsn: str, args: argparse.Namespace) -> dict[str, float]:
    port = _free_port()
    me = os.path.abspath(__file__)
    server = subprocess.Popen(
        [sys.executable, me, "_serve", mode, str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write(dsn + "\n")  # never on a command line: it holds a password
        server.stdin.flush()
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {mode} server did not start")
        if args.wrk:
            return _wrk(port, args.clients, args.seconds)
        child = subprocess.run(
            [sys.executable, me, "_load", str(port), str(args.clients), str(args.seconds)],
            capture_output=True, text=True, timeout=args.seconds + 60, check=True,
        )  # fmt: skip
        result: dict[str, float] = json.loads(child.stdout.strip().splitlines()[-1])
        return result
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}..{max(values):{fmt}}]"


def main() -> None:
    if sys.argv[1:2] == ["_serve"]:
        serve(sys.argv[2], int(sys.argv[3]))
        return
    if sys.argv[1:2] == ["_load"]:
        load(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    parser.add_argument("--wrk", action="store_true", help="load with wrk (must be installed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - set(MODES) or not modes:
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    use_repository_packages()
    from gdbpool import EmbeddedPostgres

    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    with EmbeddedPostgres() as server:
        dsn = server.dsn()
        for r in range(args.rounds):
            for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:
                result = _one(mode, dsn, args)
                if result["wrong"]:
                    raise SystemExit(f"{mode}: {result['wrong']:.0f} wrong answers")
                results[mode].append(result)
    if args.json:
        print(json.dumps(results))
        return
    print(f"{args.clients} keep-alive clients, {args.seconds} s x {args.rounds} rounds, "
          f"{CONNECTIONS} server connections; median [min..max] over the rounds")  # fmt: skip
    for mode, runs in results.items():
        line = (
            f"{mode:<8} req/s {_spread([x['rps'] for x in runs], '.0f'):<24}"
            f" p50 ms {_spread([x['p50_ms'] for x in runs], '.1f'):<20}"
            f" p99 ms {_spread([x['p99_ms'] for x in runs], '.1f')}"
        )
        if "queue" in results and mode != "queue":
            ratios = [x["rps"] / q["rps"] for x, q in zip(runs, results["queue"], strict=True)]
            line += f"   req/s vs queue {_spread(ratios, '.2f')}"
        print(line)


if __name__ == "__main__":
    main()
