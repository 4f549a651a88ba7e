"""Replayable feeds: the bridge's replay ring and socket, the subscriber that heals gaps.

Real bridge child processes on a real NotificationHub and PostgreSQL, real
SUB and DEALER sockets on loopback; gaps are forced for real (a stalled
subscriber past tiny high-water marks, a subscriber that is not there, a
killed subscriber process).  Synchronisation is by messages (heartbeats,
probes), never by sleeping.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from _cli_process import GDBPOOL, ChildProcess
from test_zmq_bridge import (  # the bridge-child helpers of the bridge tests
    BridgeProcess,
    events_until,
    handshake,
    notifier,
    start_bridge,
)

from gdbpool import BridgeRestarted, Gap, Notification, NotifySubscriber
from gdbpool.errors import ConfigurationError, WireFormatError
from gdbpool.notify.replay import ReplayRing
from gdbpool.notify.subscriber import Lagging
from gdbpool.notify.wire import (
    REPLAY_MAX_RANGE,
    ReplayRequest,
    decode_replay_answer,
    decode_replay_request,
    encode_heartbeat,
    encode_notify,
    encode_replay_request,
)
from gdbpool.server.embedded import free_port

__all__ = ["notifier", "start_bridge"]  # fixtures, used by name

Notifier = Callable[[str, list[str]], None]
StartBridge = Callable[..., BridgeProcess]


def notes(events: list[object]) -> list[Notification]:
    return [e for e in events if isinstance(e, Notification)]


def collect(sub: NotifySubscriber, last_payload: str, timeout: float = 20) -> list[object]:
    """Every event up to the notification carrying ``last_payload``."""
    return events_until(
        sub, lambda e: isinstance(e, Notification) and e.payload == last_payload, timeout
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- the ring and the wire, in process ------------------------------------------------


def test_the_ring_answers_what_it_holds_cut_at_the_cap_and_says_where_it_starts() -> None:
    ring = ReplayRing(["a"], size=5)
    for seq in (1, 2, 3, 4, 6, 7, 8):  # 5 was dropped by the bridge before publishing
        ring.add("a", seq, f"h{seq}".encode(), b"")
    assert ring.window("b", 1, 3) is None
    covered, available, entries = ring.window("a", 1, 100) or (0, 0, [])
    assert (covered, available) == (8, 3)  # cut at the last published; 1-2 left the ring
    assert [h for h, _ in entries] == [b"h3", b"h4", b"h6", b"h7", b"h8"]
    covered, available, entries = ring.window("a", 3, 100, cap=2) or (0, 0, [])
    assert (covered, [h for h, _ in entries]) == (4, [b"h3", b"h4"])
    assert ring.window("a", 9, 20) == (8, 3, [])  # nothing newer than 8 exists


def test_replay_requests_are_validated_field_by_field() -> None:
    good = encode_replay_request(ReplayRequest(7, "src", "orders", 40, 42))
    assert decode_replay_request(good) == ReplayRequest(7, "src", "orders", 40, 42)
    bad = [
        [b"x"],
        [b"{}"],
        [*good, b""],
        [b'{"v":1,"type":"replay","id":true,"src":"s","channel":"c","from":1,"to":2}'],
        [b'{"v":1,"type":"replay","id":1,"src":"s","channel":"c","from":3,"to":2}'],
        [b'{"v":1,"type":"replay","id":1,"src":"s","channel":"c","from":0,"to":2}'],
        [b'{"v":1,"type":"replay","id":1,"src":5,"channel":"c","from":1,"to":2}'],
        [b'{"v":2,"type":"replay","id":1,"src":"s","channel":"c","from":1,"to":2}'],
        [b'{"v":1,"type":"replay","id":1,"src":"' + b"s" * 2000 + b'","channel":"c"}'],
    ]
    for frames in bad:
        with pytest.raises(WireFormatError):
            decode_replay_request(frames)
    with pytest.raises(WireFormatError, match="announces 2 messages"):
        decode_replay_answer(
            [
                b'{"v":1,"type":"replay","id":1,"src":"s","bridge":"b","channel":"c",'
                b'"from":1,"to":2,"available_from":1,"count":2}',
                b"h",
                b"p",
            ]
        )


def test_heartbeats_advertise_the_replay_endpoint_only_when_there_is_one() -> None:
    with_replay = encode_heartbeat(
        source="s", bridge="b", ts=1.0, interval=1.0, seqs={}, replay="tcp://127.0.0.1:1"
    )
    assert json.loads(with_replay[1])["replay"] == "tcp://127.0.0.1:1"
    without = encode_heartbeat(source="s", bridge="b", ts=1.0, interval=1.0, seqs={})
    assert "replay" not in json.loads(without[1])


def test_subscriber_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="replay_timeout"):
        NotifySubscriber("tcp://127.0.0.1:1", replay_timeout=0, green=False)
    with pytest.raises(ConfigurationError, match="max_lateness"):
        NotifySubscriber("tcp://127.0.0.1:1", max_lateness=-1, green=False)
    with pytest.raises(ConfigurationError, match="resume must map"):
        NotifySubscriber("tcp://127.0.0.1:1", resume={"s": {"seqs": {"a": 1}}}, green=False)
    with pytest.raises(TypeError, match="resume"):
        NotifySubscriber("tcp://127.0.0.1:1", resume=[1], green=False)  # type: ignore[arg-type]


def test_lagging_is_reported_once_per_episode() -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    pub.bind("tcp://127.0.0.1:0")
    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    sub = NotifySubscriber(endpoint, ["a"], green=False, max_lateness=1.0, replay=False)
    try:
        deadline = time.monotonic() + 5
        while not sub.sources:  # slow joiner: fresh heartbeats until one arrives
            assert time.monotonic() < deadline
            pub.send_multipart(
                encode_heartbeat(source="s", bridge="b", ts=time.time(), interval=1, seqs={})
            )
            with contextlib.suppress(TimeoutError):
                sub.wait_connected(timeout=0.05)
        while True:  # drop the handshake's extra heartbeats (they make no event)
            try:
                sub.get(timeout=0.1)
            except TimeoutError:
                break
        now = time.time()
        ages = [5.0, 6.0, 7.0, 0.0, 0.0, 3.0, 3.0]  # late, late, late, on time, ..., late again
        for seq, age in enumerate(ages, 1):
            pub.send_multipart(
                encode_notify("a", f"p{seq}", source="s", bridge="b", seq=seq, pid=1, ts=now - age)
            )
        events = events_until(sub, lambda e: isinstance(e, Notification) and e.payload == "p7")
    finally:
        sub.close()
        ctx.destroy(linger=0)
    lags = [e for e in events if isinstance(e, Lagging)]
    assert len(lags) == 2
    assert lags[0].by >= 5.0 and lags[1].by >= 3.0
    assert lags[0].since <= lags[1].since
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("Lagging") < kinds.index("Notification")


# -- healing across real processes ----------------------------------------------------


def test_a_stalled_subscriber_past_tiny_high_water_marks_gets_every_message_once_in_order(
    start_bridge: StartBridge, notifier: Notifier, dsn: str
) -> None:
    total = 20_000
    bridge = start_bridge(dsn, ["orders"], "--sndhwm", "10", "--replay-size", "25000")
    with NotifySubscriber(bridge.endpoint, ["orders"], rcvhwm=10, green=False) as sub:
        probe = handshake(sub, notifier, "orders")
        pad = "x" * 1000  # beyond what loopback TCP buffers hold, so ZeroMQ must drop
        notifier("orders", [f"{i}:{pad}" for i in range(total)])  # while nobody reads
        events = collect(sub, f"{total - 1}:{pad}", timeout=40)
    got = notes(events)
    assert not [e for e in events if isinstance(e, Gap)]
    assert [n.payload.split(":")[0] for n in got] == [str(i) for i in range(total)]
    assert [n.seq for n in got] == list(range(probe.seq + 1, probe.seq + total + 1))
    replayed = [n for n in got if n.replayed]
    assert 0 < len(replayed) < total


def test_a_ring_too_small_replays_what_it_holds_and_one_gap_for_exactly_the_rest(
    start_bridge: StartBridge, notifier: Notifier, dsn: str
) -> None:
    bridge = start_bridge(dsn, ["orders"], "--replay-size", "100")
    with NotifySubscriber(bridge.endpoint, ["orders"], green=False, replay=False) as observer:
        handshake(observer, notifier, "orders")
        with NotifySubscriber(bridge.endpoint, ["orders"], green=False) as first:
            handshake(first, notifier, "orders")
            position = first.position()
        notifier("orders", [f"n{i}" for i in range(5000)])  # while `first` is gone
        collect(observer, "n4999")  # the bridge has published them all
    with NotifySubscriber(bridge.endpoint, ["orders"], green=False, resume=position) as sub:
        events = collect(sub, "n4999")  # a heartbeat tells it what it missed
        notifier("orders", ["live"])
        events += collect(sub, "live")
    (start,) = position[bridge.source]["seqs"].values()
    gaps = [e for e in events if isinstance(e, Gap)]
    assert gaps == [Gap(bridge.source, "orders", start + 1, start + 4901, 4900)]
    got = notes(events)
    assert [n.payload for n in got] == [f"n{i}" for i in range(4900, 5000)] + ["live"]
    assert all(n.replayed for n in got[:-1]) and not got[-1].replayed
    assert isinstance(events[0], Gap)  # the gap comes first, in seq order


def test_a_killed_subscriber_process_resumes_from_its_file_and_the_union_is_exact(
    start_bridge: StartBridge, notifier: Notifier, dsn: str, tmp_path: Path
) -> None:
    bridge = start_bridge(dsn, ["orders"])
    resume = tmp_path / "position.json"
    argv = [*GDBPOOL, "subscribe", "--connect", bridge.endpoint, "--channel", "orders", "--json"]
    argv += ["--resume-file", str(resume)]

    def payloads(child: ChildProcess) -> list[dict[str, object]]:
        """Every notification the child printed (it has exited)."""
        child.drain()
        records = [json.loads(line) for name, line in child.seen if name == "out"]
        return [r for r in records if r["type"] == "notify"]

    first = ChildProcess(argv)
    try:
        first.wait_for(r"connected to", timeout=15, stream="err")
        notifier("orders", ["start"])
        first.wait_for(r'"payload": "start"', timeout=10, stream="out")
        notifier("orders", [f"a{i}" for i in range(3000)])
        first.wait_for(r'"payload": "a200"', timeout=10, stream="out")
        os.killpg(first.proc.pid, signal.SIGKILL)  # mid-stream, no clean exit
        first.proc.wait(timeout=5)
        one = payloads(first)
    finally:
        first.kill()
    assert resume.exists()
    notifier("orders", [f"b{i}" for i in range(500)])  # while no subscriber runs
    second = ChildProcess(argv)
    try:
        second.wait_for(r'"payload": "b499"', timeout=20, stream="out")
        second.stop()
        two = payloads(second)
    finally:
        second.kill()
    sent = ["start", *(f"a{i}" for i in range(3000)), *(f"b{i}" for i in range(500))]
    seen_one = [str(r["payload"]) for r in one]
    seen_two = [str(r["payload"]) for r in two]
    assert seen_one == sent[: len(seen_one)]  # in order, no duplicate within a run
    assert seen_two == sent[len(sent) - len(seen_two) :]
    overlap = len(seen_one) + len(seen_two) - len(sent)
    assert 0 <= overlap <= 1  # at most the one line printed as the kill came
    assert any(r["replayed"] for r in two)
    assert not [line for name, line in second.seen if name == "out" and '"gap"' in line]


def test_a_restarted_bridge_is_reported_and_nothing_is_replayed_across_sources(
    start_bridge: StartBridge, notifier: Notifier, dsn: str
) -> None:
    bind = f"tcp://127.0.0.1:{free_port()}"
    old = start_bridge(dsn, ["orders"], "--bind", bind)
    with NotifySubscriber(bind, ["orders"], green=False) as sub:
        handshake(sub, notifier, "orders")
        position = sub.position()
    notifier("orders", [f"lost{i}" for i in range(10)])
    old.kill()
    new = start_bridge(dsn, ["orders"], "--bind", bind)
    with NotifySubscriber(bind, ["orders"], green=False, resume=position) as sub:
        restarted = events_until(sub, lambda e: isinstance(e, BridgeRestarted))
        probe = handshake(sub, notifier, "orders")
        notifier("orders", ["after"])
        events = restarted + collect(sub, "after")
        assert set(sub.position()) == {new.source}
    assert BridgeRestarted(old.source, new.source, bind) in events
    assert not [e for e in events if isinstance(e, Gap)]
    assert not [n for n in notes(events) if n.replayed or n.payload.startswith("lost")]
    assert probe.source == new.source


# -- bounded against a hostile requester, CURVE ---------------------------------------


def dealer(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, **keys: bytes) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    for name, value in keys.items():
        setattr(sock, name, value)
    sock.connect(endpoint)
    return sock


def answer(sock: zmq.Socket[bytes], timeout: float = 5.0) -> list[bytes]:
    assert sock.poll(int(timeout * 1000)), "no answer"
    return sock.recv_multipart()


def test_malformed_oversized_and_flooding_requests_leave_the_bridge_bounded_and_publishing(
    start_bridge: StartBridge, notifier: Notifier, dsn: str
) -> None:
    bridge = start_bridge(dsn, ["orders"], "--replay-rate", "20000")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        with NotifySubscriber(bridge.endpoint, ["orders"], green=False) as sub:
            probe = handshake(sub, notifier, "orders")
            notifier("orders", [f"r{i}" for i in range(3000)])
            collect(sub, "r2999")
            rogue = dealer(ctx, bridge.replay)
            rogue.send(b"not json")
            assert decode_replay_answer(answer(rogue)).error.startswith("bad request")
            rogue.send_multipart([b"{}", b"two frames"])
            assert decode_replay_answer(answer(rogue)).error.startswith("bad request")
            other = ReplayRequest(1, "0123456789abcdef", "orders", 1, 5)
            rogue.send_multipart(encode_replay_request(other))
            assert "unknown source" in decode_replay_answer(answer(rogue)).error
            rogue.send_multipart(
                encode_replay_request(ReplayRequest(2, probe.source, "nope", 1, 5))
            )
            assert "not bridged" in decode_replay_answer(answer(rogue)).error
            huge = ReplayRequest(3, probe.source, "orders", 1, 10**15)
            rogue.send_multipart(encode_replay_request(huge))
            cut = decode_replay_answer(answer(rogue))
            assert (cut.first, cut.last, len(cut.messages)) == (1, REPLAY_MAX_RANGE, 1000)
            big = dealer(ctx, bridge.replay)
            big.send(b"x" * 100_000)  # over the request size: ZeroMQ disconnects it
            assert not big.poll(300)
            # A flood of maximal requests from many peers that never read their answers.
            rss_before = rss_kib(bridge.proc.pid)
            flooders = [dealer(ctx, bridge.replay) for _ in range(20)]
            for n, sock in enumerate(flooders):
                sock.sndhwm = 0
                for i in range(2000):
                    request = ReplayRequest(n * 10_000 + i, probe.source, "orders", 1, 10**9)
                    sock.send_multipart(encode_replay_request(request), zmq.NOBLOCK)
            started = time.monotonic()
            notifier("orders", [f"during{i}" for i in range(200)])
            during = collect(sub, "during199", timeout=10)
            assert time.monotonic() - started < 5  # publishing kept going under the flood
            assert [n.payload for n in notes(during)] == [f"during{i}" for i in range(200)]
            assert rss_kib(bridge.proc.pid) - rss_before < 50_000  # KiB: bounded, no backlog
            ok = dealer(ctx, bridge.replay)  # an honest peer is still answered
            ok.send_multipart(encode_replay_request(ReplayRequest(9, probe.source, "orders", 5, 6)))
            deadline = time.monotonic() + 10
            while True:
                got = decode_replay_answer(answer(ok, max(0.1, deadline - time.monotonic())))
                if got.id == 9 and not got.error:
                    break
            assert [m.seq for m in got.messages] == [5, 6]
            assert bridge.proc.poll() is None
    finally:
        ctx.destroy(linger=0)


def test_curve_guards_the_replay_socket_as_it_guards_pub(
    start_bridge: StartBridge, notifier: Notifier, dsn: str
) -> None:
    server_public, server_secret = zmq.curve_keypair()
    good_public, good_secret = zmq.curve_keypair()
    bad_public, bad_secret = zmq.curve_keypair()
    bridge = start_bridge(
        dsn,
        ["orders"],
        f"--curve-secret={server_secret.decode()}",
        f"--curve-public={server_public.decode()}",
        f"--allow={good_public.decode()}",
    )
    keys = {"curve_server_key": server_public, "curve_public_key": good_public}
    with NotifySubscriber(bridge.endpoint, ["orders"], curve_secret_key=good_secret, **keys) as sub:
        handshake(sub, notifier, "orders")
        position = sub.position()
    notifier("orders", [f"s{i}" for i in range(10)])
    with NotifySubscriber(
        bridge.endpoint, ["orders"], curve_secret_key=good_secret, resume=position, **keys
    ) as sub:
        events = collect(sub, "s9")  # a heartbeat tells it what it missed
        notifier("orders", ["live"])  # only now surely live: it was subscribed before
        events += collect(sub, "live")
    assert [(n.payload, n.replayed) for n in notes(events)] == [
        *((f"s{i}", True) for i in range(10)),
        ("live", False),
    ]
    (src,) = position
    request = encode_replay_request(ReplayRequest(1, src, "orders", 1, 5))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        refused = dealer(
            ctx,
            bridge.replay,
            curve_serverkey=server_public,
            curve_publickey=bad_public,
            curve_secretkey=bad_secret,
        )
        plain = dealer(ctx, bridge.replay)
        for sock in (refused, plain):
            sock.send_multipart(request, zmq.NOBLOCK)
        assert not refused.poll(1000) and not plain.poll(100)
    finally:
        ctx.destroy(linger=0)


def test_the_bridge_command_offers_replay_unless_told_not_to(dsn: str) -> None:
    port = free_port()
    argv = [*GDBPOOL, "bridge", "--dsn", dsn, "--channel", "c", "--heartbeat", "0.2"]
    on = ChildProcess([*argv, "--replay-bind", f"tcp://127.0.0.1:{port}"])
    off = ChildProcess([*argv, "--replay-size", "0"])
    try:
        line = on.wait_for(r"endpoint (tcp://\S+).* replay=(\S+)", timeout=20, stream="out")
        assert line[2] == f"tcp://127.0.0.1:{port}"
        line = off.wait_for(r"endpoint (tcp://\S+)", timeout=20, stream="out")
        assert "replay=" not in line[0]
        with NotifySubscriber(line[1], green=False) as sub:
            sub.wait_connected(timeout=10)
    finally:
        for child in (on, off):
            child.stop()
            child.kill()
