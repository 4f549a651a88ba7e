"""Actor overhead against the floor of bare gevent queues.

Run from the repository root: ``python bench/actors.py [--n N] [--repeat R]``.

- ask: one round trip ``ref.ask(msg).get()`` against a bare ping-pong
  between two greenlets: the client puts ``(msg, AsyncResult)`` on a
  ``gevent.queue.Queue``, the server ``get()``s it and sets the result.
  Both cost the same four greenlet switches; the difference is the actor's
  bookkeeping (closed check, dispatch lookup, try/except).
- tell: N ``ref.tell(msg)`` followed by one ask to learn they were all
  handled, against N bare ``put`` drained by a server greenlet that signals
  when it has taken N items.

Each figure is the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# This file is named actors.py: keep its own directory off the path so that
# ``import actors`` finds the package, not this script.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import gevent  # noqa: E402
from gevent.event import AsyncResult, Event  # noqa: E402
from gevent.queue import Queue  # noqa: E402
from structlog.testing import capture_logs  # noqa: E402

from actors import Actor, handles  # noqa: E402


@dataclass(frozen=True, slots=True)
class Ping:
    n: int


@dataclass(frozen=True, slots=True)
class Count:
    pass


class Echo(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    @handles(Ping)
    def ping(self, msg: Ping) -> int:
        self.seen += 1
        return msg.n

    @handles(Count)
    def count(self, msg: Count) -> int:
        return self.seen


def bare_ask(n: int) -> float:
    requests: Queue = Queue()

    def server() -> None:
        get = requests.get
        while True:
            msg, reply = get()
            if msg is None:
                return
            reply.set(msg.n)

    worker = gevent.spawn(server)
    put = requests.put
    msg = Ping(1)
    t0 = time.perf_counter()
    for _ in range(n):
        reply = AsyncResult()
        put((msg, reply))
        reply.get()
    elapsed = time.perf_counter() - t0
    put((None, None))
    worker.join()
    return elapsed


def actor_ask(n: int) -> float:
    ref = Echo.start()
    ask = ref.ask
    msg = Ping(1)
    t0 = time.perf_counter()
    for _ in range(n):
        ask(msg).get()
    elapsed = time.perf_counter() - t0
    ref.stop()
    return elapsed


def bare_tell(n: int) -> float:
    items: Queue = Queue()
    done = Event()

    def server() -> None:
        get = items.get
        for _ in range(n):
            get()
        done.set()

    worker = gevent.spawn(server)
    gevent.sleep(0)  # server parked in get(), like an idle actor
    put = items.put
    msg = Ping(1)
    t0 = time.perf_counter()
    for _ in range(n):
        put((msg, None))
    done.wait()
    elapsed = time.perf_counter() - t0
    worker.join()
    return elapsed


def actor_tell(n: int) -> float:
    ref = Echo.start()
    tell = ref.tell
    msg = Ping(1)
    t0 = time.perf_counter()
    for _ in range(n):
        tell(msg)
    handled = ref.ask(Count()).get()
    elapsed = time.perf_counter() - t0
    assert handled == n
    ref.stop()
    return elapsed


def best_pair(
    floor: Callable[[int], float], actor: Callable[[int], float], n: int, repeat: int
) -> tuple[float, float]:
    """Best time of each, running them alternately so neither gets a warmer machine."""
    floors, actors = [], []
    for _ in range(repeat):
        floors.append(floor(n))
        actors.append(actor(n))
    return min(floors), min(actors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="messages per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is kept")
    args = parser.parse_args()
    n, repeat = args.n, args.repeat

    with capture_logs():  # keep start/stop events off the terminal
        ask_floor, ask_actor = best_pair(bare_ask, actor_ask, n, repeat)
        tell_floor, tell_actor = best_pair(bare_tell, actor_tell, n, repeat)

    ask_ratio = ask_actor / ask_floor  # how many times slower
    tell_ratio = tell_floor / tell_actor  # fraction of the bare throughput
    print(f"python {sys.version.split()[0]}, gevent {gevent.__version__}, n={n}, best of {repeat}")
    print(f"{'':22}{'bare queue':>12}{'actor':>12}{'ratio':>8}  target")
    print(
        f"{'ask round trip (us)':22}{ask_floor / n * 1e6:>12.2f}{ask_actor / n * 1e6:>12.2f}"
        f"{ask_ratio:>7.2f}x  time, <= 2x"
    )
    print(
        f"{'tell (msgs/s)':22}{n / tell_floor:>12,.0f}{n / tell_actor:>12,.0f}"
        f"{tell_ratio:>7.2f}x  throughput, >= 0.5x"
    )


if __name__ == "__main__":
    main()
