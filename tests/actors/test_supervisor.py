"""Supervisor: one-for-one restarts, backoff, intensity, escalation, stop."""

from __future__ import annotations

import time
from dataclasses import dataclass

import gevent
import pytest
from gevent.event import AsyncResult, Event
from gevent.queue import Queue
from structlog.testing import capture_logs

from actors import (
    Actor,
    ActorError,
    ActorState,
    ActorStopped,
    Supervisor,
    SupervisorGaveUp,
    handles,
)

WAIT = 2.0


@dataclass(frozen=True, slots=True)
class Add:
    n: int


@dataclass(frozen=True, slots=True)
class Total:
    pass


@dataclass(frozen=True, slots=True)
class Crash:
    pass


@dataclass(frozen=True, slots=True)
class Hold:
    gate: Event


@dataclass(frozen=True, slots=True)
class Expire:
    """Handler waits on a result nobody sets: a timed wait that times out."""

    seconds: float


class Counter(Actor):
    """Keeps a running total; reports every start (with a timestamp) to ``starts``."""

    def __init__(self, starts: Queue, base: int = 0) -> None:
        super().__init__()
        self.starts = starts
        self.total = base

    def on_start(self) -> None:
        self.starts.put((self.ref.name, time.monotonic()))

    @handles(Add)
    def add(self, msg: Add) -> int:
        self.total += msg.n
        return self.total

    @handles(Total)
    def get_total(self, msg: Total) -> int:
        return self.total

    @handles(Crash)
    def crash(self, msg: Crash) -> None:
        raise RuntimeError("crash requested")

    @handles(Hold)
    def hold(self, msg: Hold) -> None:
        msg.gate.wait()
        raise RuntimeError("crash after hold")

    @handles(Expire)
    def expire(self, msg: Expire) -> None:
        AsyncResult().get(timeout=msg.seconds)


def test_crashed_child_restarts_with_fresh_state_on_the_same_ref() -> None:
    starts: Queue = Queue()
    sup = Supervisor(name="sup")
    with capture_logs() as logs:
        ref = sup.spawn(Counter, starts, 10, name="counter")
        starts.get(timeout=WAIT)
        assert ref.ask(Add(5)).get(timeout=WAIT) == 15
        ref.tell(Crash())
        starts.get(timeout=WAIT)  # the restart
        assert ref.ask(Total()).get(timeout=WAIT) == 10  # fresh instance, same args
        assert ref.state is ActorState.RUNNING
        assert sup.children == [ref]
        sup.stop()
    events = [(e["event"], e.get("actor")) for e in logs]
    assert ("actor_crashed", "counter") in events
    assert ("actor_restarted", "counter") in events
    assert ref.state is ActorState.STOPPED


def test_a_gevent_timeout_in_a_told_handler_restarts_the_child_on_the_same_ref() -> None:
    starts: Queue = Queue()
    sup = Supervisor(name="sup")
    with capture_logs() as logs:
        ref = sup.spawn(Counter, starts, 10, name="counter")
        starts.get(timeout=WAIT)
        assert ref.ask(Add(5)).get(timeout=WAIT) == 15
        ref.tell(Expire(0.01))
        starts.get(timeout=WAIT)  # the restart
        assert ref.ask(Total()).get(timeout=WAIT) == 10  # fresh instance, same ref
        assert ref.state is ActorState.RUNNING
        assert sup.children == [ref]
        sup.stop()
    events = [(e["event"], e.get("actor")) for e in logs]
    assert ("actor_crashed", "counter") in events
    assert ("actor_restarted", "counter") in events


def test_a_gevent_timeout_in_an_ask_handler_fails_the_reply_without_a_restart() -> None:
    starts: Queue = Queue()
    sup = Supervisor(name="sup")
    with capture_logs():
        ref = sup.spawn(Counter, starts, 10, name="counter")
        starts.get(timeout=WAIT)
        with pytest.raises(gevent.Timeout):
            ref.ask(Expire(0.01)).get(timeout=WAIT)
        assert ref.ask(Add(1)).get(timeout=WAIT) == 11  # same instance, state kept
        assert starts.empty()
        assert sup.children == [ref]
        sup.stop()


def test_messages_queued_during_a_restart_are_handled_by_the_new_instance() -> None:
    starts: Queue = Queue()
    sup = Supervisor(backoff_initial=0.05)
    ref = sup.spawn(Counter, starts)
    starts.get(timeout=WAIT)
    ref.tell(Crash())
    replies = [ref.ask(Add(1)) for _ in range(3)]  # sent while it crashes and backs off
    assert [r.get(timeout=WAIT) for r in replies] == [1, 2, 3]
    sup.stop()


def test_restarts_back_off_exponentially() -> None:
    starts: Queue = Queue()
    sup = Supervisor(max_restarts=3, backoff_initial=0.04, backoff_max=1.0)
    ref = sup.spawn(Counter, starts)
    last = starts.get(timeout=WAIT)[1]
    gaps = []
    for _ in range(3):
        ref.tell(Crash())
        now = starts.get(timeout=WAIT)[1]
        gaps.append(now - last)
        last = now
    assert gaps[0] >= 0.04
    assert gaps[1] >= 0.08
    assert gaps[2] >= 0.16
    sup.stop()


def test_exceeding_restart_intensity_gives_up_fails_queued_asks_and_calls_on_give_up() -> None:
    starts: Queue = Queue()
    gave_up: AsyncResult = AsyncResult()
    sup = Supervisor(
        name="strict", max_restarts=2, within=5.0, backoff_initial=0.0, on_give_up=gave_up.set
    )
    ref = sup.spawn(Counter, starts, name="flaky")
    other = sup.spawn(Counter, starts, name="bystander")
    starts.get(timeout=WAIT)
    starts.get(timeout=WAIT)
    for _ in range(2):
        ref.tell(Crash())
        starts.get(timeout=WAIT)
    gate = Event()
    ref.tell(Hold(gate))
    queued = ref.ask(Add(1))
    gate.set()  # third crash within the window: give up
    error = gave_up.get(timeout=WAIT)
    assert isinstance(error, SupervisorGaveUp)
    assert "'strict'" in str(error) and "'flaky'" in str(error)
    assert isinstance(error.__cause__, RuntimeError)
    with pytest.raises(ActorStopped):
        queued.get(timeout=WAIT)
    assert ref.state is ActorState.STOPPED
    assert other.state is ActorState.STOPPED  # the supervisor stopped everything
    assert not sup.is_alive
    with pytest.raises(ActorError, match="'strict'"):
        sup.spawn(Counter, starts)


def test_crashes_spread_out_beyond_the_window_do_not_give_up() -> None:
    starts: Queue = Queue()
    sup = Supervisor(max_restarts=1, within=0.05, backoff_initial=0.0)
    ref = sup.spawn(Counter, starts)
    starts.get(timeout=WAIT)
    for _ in range(3):
        ref.tell(Crash())
        starts.get(timeout=WAIT)
        gevent.sleep(0.06)  # the point of the test: let the intensity window pass
    assert sup.is_alive and ref.is_alive
    sup.stop()


def test_giving_up_escalates_to_the_parent_which_restarts_the_child_supervisor() -> None:
    starts: Queue = Queue()
    parent_gave_up: AsyncResult = AsyncResult()
    child_gave_up: Queue = Queue()
    parent = Supervisor(
        name="parent", max_restarts=1, backoff_initial=0.0, on_give_up=parent_gave_up.set
    )
    child = Supervisor(
        name="child",
        max_restarts=0,
        backoff_initial=0.0,
        on_give_up=child_gave_up.put,
        parent=parent,
    )
    ref = child.spawn(Counter, starts, 100, name="worker")
    starts.get(timeout=WAIT)
    ref.ask(Add(1)).get(timeout=WAIT)

    ref.tell(Crash())  # child gives up at once; parent restarts it (1 allowed)
    assert isinstance(child_gave_up.get(timeout=WAIT), SupervisorGaveUp)
    starts.get(timeout=WAIT)
    assert child.is_alive
    assert ref.ask(Total()).get(timeout=WAIT) == 100  # same ref, fresh state

    ref.tell(Crash())  # again: the parent's own limit is exceeded
    child_gave_up.get(timeout=WAIT)
    error = parent_gave_up.get(timeout=WAIT)
    assert isinstance(error, SupervisorGaveUp)
    assert "'parent'" in str(error) and "'child'" in str(error)
    assert isinstance(error.__cause__, SupervisorGaveUp)
    assert not parent.is_alive and not child.is_alive
    assert ref.state is ActorState.STOPPED


def test_stop_stops_every_child_and_child_supervisor() -> None:
    starts: Queue = Queue()
    parent = Supervisor(name="top")
    child = Supervisor(name="sub", parent=parent)
    refs = [parent.spawn(Counter, starts) for _ in range(3)]
    refs.append(child.spawn(Counter, starts))
    parent.stop(timeout=WAIT)
    assert all(ref.state is ActorState.STOPPED for ref in refs)
    assert parent.children == [] and not parent.is_alive and not child.is_alive
    parent.stop()  # no-op


def test_stop_during_backoff_cancels_the_restart_and_fails_queued_asks() -> None:
    starts: Queue = Queue()
    sup = Supervisor(backoff_initial=30.0, backoff_max=30.0)
    ref = sup.spawn(Counter, starts)
    starts.get(timeout=WAIT)
    ref.tell(Crash())
    gevent.sleep(0)  # let it crash
    waiting = ref.ask(Add(1))
    assert ref.state is ActorState.STARTING
    ref.stop(timeout=WAIT)
    with pytest.raises(ActorStopped):
        waiting.get(timeout=0)
    assert starts.empty()
    sup.stop()


def test_a_child_stopped_on_purpose_is_not_restarted_and_leaves_the_children() -> None:
    starts: Queue = Queue()
    sup = Supervisor()
    keep = sup.spawn(Counter, starts)
    done = sup.spawn(Counter, starts)
    done.stop()
    assert sup.children == [keep]
    sup.stop()


def test_stopping_the_supervisor_from_a_childs_handler_does_not_deadlock() -> None:
    starts: Queue = Queue()
    sup = Supervisor()

    class Quitter(Counter):
        @handles(Total)
        def get_total(self, msg: Total) -> int:
            sup.stop(timeout=WAIT)
            return self.total

    ref = sup.spawn(Quitter, starts)
    other = sup.spawn(Counter, starts)
    assert ref.ask(Total()).get(timeout=WAIT) == 0
    ref._done.wait(WAIT)
    other._done.wait(WAIT)
    assert ref.state is ActorState.STOPPED and other.state is ActorState.STOPPED
