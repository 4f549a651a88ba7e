"""Inline dispatch (``Actor.inline``): same outcomes as the mailbox, no greenlet switch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gevent
import pytest
from _switches import switches_per_call
from _waits import wait_for
from gevent.event import AsyncResult, Event
from structlog.testing import capture_logs

from actors import Actor, ActorRef, ActorState, Supervisor, handles

WAIT = 2.0  # bound on every wait in these tests


@dataclass(frozen=True, slots=True)
class Where:
    """Answer with the greenlet the handler ran on."""


@dataclass(frozen=True, slots=True)
class Note:
    text: str


@dataclass(frozen=True, slots=True)
class Hold:
    """The handler waits for ``gate`` (an inline actor should never do this: tested anyway)."""

    gate: Event
    entered: Event = field(default_factory=Event)


@dataclass(frozen=True, slots=True)
class Explode:
    then_self: str = ""  # told to its own actor before raising


@dataclass(frozen=True, slots=True)
class StopSelf:
    pass


@dataclass(frozen=True, slots=True)
class NoteThenHold:
    """Tell its own actor a Note, then wait for ``gate``; then raise if ``explode``."""

    text: str
    gate: Event
    explode: bool = False
    entered: Event = field(default_factory=Event)


@dataclass(frozen=True, slots=True)
class Log:
    """Ask: everything noted so far."""


class Recorder(Actor):
    inline = True
    failures: list[tuple[str, Any]] = []  # class-level: survives restarts
    dropped: list[object] = []

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.running = 0
        self.overlap = False

    @handles(Where)
    def where(self, msg: Where) -> Any:
        return gevent.getcurrent()

    @handles(Note)
    def note(self, msg: Note) -> None:
        self.notes.append(msg.text)

    @handles(Hold)
    def hold(self, msg: Hold) -> None:
        self.running += 1
        self.overlap |= self.running > 1
        msg.entered.set()
        msg.gate.wait(WAIT)
        self.notes.append("held")
        self.running -= 1

    @handles(Explode)
    def explode(self, msg: Explode) -> None:
        if msg.then_self:
            self.ref.tell(Note(msg.then_self))
        raise RuntimeError("exploded")

    @handles(StopSelf)
    def stop_self(self, msg: StopSelf) -> None:
        self.ref.stop()

    @handles(NoteThenHold)
    def note_then_hold(self, msg: NoteThenHold) -> None:
        self.ref.tell(Note(msg.text))
        msg.entered.set()
        msg.gate.wait(WAIT)
        self.notes.append("held")
        if msg.explode:
            raise RuntimeError("exploded after yielding")

    def on_dropped(self, message: object) -> None:
        Recorder.dropped.append(message)

    @handles(Log)
    def log(self, msg: Log) -> tuple[list[str], bool]:
        return list(self.notes), self.overlap

    def on_failure(self, exc: BaseException) -> None:
        Recorder.failures.append((str(exc), gevent.getcurrent()))


class Queued(Recorder):
    inline = False


def test_idle_inline_actor_answers_an_ask_on_the_callers_greenlet_without_switching() -> None:
    ref = Recorder.start()
    try:
        replies: list[AsyncResult] = []
        assert switches_per_call(lambda: replies.append(ref.ask(Where()))) == 0
        assert replies[0].ready()
        assert replies[0].get() is gevent.getcurrent()
    finally:
        ref.stop()


def test_a_plain_actor_answers_on_its_own_greenlet() -> None:
    ref = Queued.start()
    try:
        assert ref.ask(Where()).get(timeout=WAIT) is ref._greenlet
        assert ref.tell(Note("queued")) is False
    finally:
        ref.stop()


def test_sends_while_a_handler_runs_queue_in_order_and_never_overlap() -> None:
    ref = Recorder.start()
    gate = Event()
    hold = Hold(gate)
    try:
        holder = gevent.spawn(ref.tell, hold)  # runs inline on `holder`, then waits
        assert hold.entered.wait(WAIT)
        assert ref.tell(Note("a")) is False  # busy: through the mailbox
        assert ref.tell(Note("b")) is False
        where = ref.ask(Where())
        assert not where.ready()
        gate.set()
        holder.join(WAIT)
        assert where.get(timeout=WAIT) is ref._greenlet  # handled by the actor's loop
        notes, overlap = ref.ask(Log()).get(timeout=WAIT)
        assert notes == ["held", "a", "b"]
        assert not overlap
        # Idle again: inline once more.
        assert ref.ask(Where()).get(timeout=WAIT) is gevent.getcurrent()
        assert ref.tell(Note("c")) is True
        assert ref.ask(Log()).get(timeout=WAIT)[0][-1] == "c"
    finally:
        ref.stop()


def test_sends_from_the_hub_go_through_the_mailbox() -> None:
    ref = Recorder.start()
    try:
        answered: AsyncResult = AsyncResult()
        timer = gevent.get_hub().loop.timer(0.0)
        timer.start(lambda: answered.set(ref.ask(Where())))
        assert answered.get(timeout=WAIT).get(timeout=WAIT) is ref._greenlet
        timer.close()
    finally:
        ref.stop()


def test_a_tell_that_raises_inline_crashes_the_actor_in_its_own_greenlet() -> None:
    Recorder.failures.clear()
    sup = Supervisor(max_restarts=3, backoff_initial=0.0, backoff_max=0.001)
    with capture_logs() as logs:
        ref = sup.spawn(Recorder)
        try:
            old_greenlet = ref._greenlet
            ref.tell(Explode(then_self="after"))  # returns: the crash is the actor's
            assert wait_for(
                lambda: ref._greenlet is not old_greenlet and ref.state is ActorState.RUNNING, WAIT
            )
            assert [text for text, _ in Recorder.failures] == ["exploded"]
            assert Recorder.failures[0][1] is old_greenlet  # on_failure ran in the actor
            # The note the crashing handler sent itself went to the new instance.
            notes, _ = ref.ask(Log()).get(timeout=WAIT)
            assert notes == ["after"]
            assert ref.ask(Where()).get(timeout=WAIT) is gevent.getcurrent()
        finally:
            sup.stop(timeout=WAIT)
    assert any(entry["event"] == "actor_crashed" for entry in logs)


def test_an_ask_that_raises_inline_fails_its_reply_and_keeps_the_actor() -> None:
    ref = Recorder.start()
    try:
        reply = ref.ask(Explode())
        assert reply.ready()
        with pytest.raises(RuntimeError, match="exploded"):
            reply.get()
        assert ref.state is ActorState.RUNNING
        assert ref.ask(Where()).get(timeout=WAIT) is gevent.getcurrent()
    finally:
        ref.stop()


def test_stop_from_a_handler_run_inline_begins_the_stop_and_returns() -> None:
    ref = Recorder.start()
    with gevent.Timeout(WAIT):
        ref.tell(StopSelf())
        ref._done.wait()
    assert ref.state is ActorState.STOPPED


def test_an_unsupervised_inline_actor_that_crashes_stops_and_refuses_sends() -> None:
    ref: ActorRef = Recorder.start()
    with capture_logs():
        ref.tell(Explode())
        assert ref._done.wait(WAIT)
    assert ref.state is ActorState.STOPPED
    with pytest.raises(Exception, match="stopping or stopped"):
        ref.tell(Note("late"))


def test_a_message_the_loop_took_while_an_inline_handler_yielded_goes_before_later_sends() -> None:
    ref = Recorder.start()
    gate = Event()
    msg = NoteThenHold("m", gate)
    try:

        def sender() -> None:
            ref.tell(msg)  # inline; its Note("m") is queued, then it yields
            ref.tell(Note("n"))  # at once after: must not overtake "m"

        holder = gevent.spawn(sender)
        assert msg.entered.wait(WAIT)
        assert wait_for(lambda: ref._inline_waiter is not None, WAIT)  # the loop holds "m"
        gate.set()
        holder.join(WAIT)
        notes, overlap = ref.ask(Log()).get(timeout=WAIT)
        assert notes == ["held", "m", "n"]
        assert not overlap
    finally:
        ref.stop()


def test_a_crash_after_yielding_inline_leaves_the_held_message_to_the_next_instance() -> None:
    Recorder.failures.clear()
    Recorder.dropped.clear()
    sup = Supervisor(max_restarts=3, backoff_initial=0.0, backoff_max=0.001)
    gate = Event()
    msg = NoteThenHold("m", gate, explode=True)
    with capture_logs():
        ref = sup.spawn(Recorder)
        try:
            told: AsyncResult = AsyncResult()
            gevent.spawn(lambda: told.set(ref.tell(msg)))
            assert msg.entered.wait(WAIT)
            assert wait_for(lambda: ref._inline_waiter is not None, WAIT)
            gate.set()
            assert told.get(timeout=WAIT) is False  # it crashed the actor
            assert wait_for(lambda: ref.state is ActorState.RUNNING and not ref._busy, WAIT)
            notes, _ = ref.ask(Log()).get(timeout=WAIT)
            assert notes == ["m"]  # handled by the restarted instance, not the crashed one
            assert [text for text, _ in Recorder.failures] == ["exploded after yielding"]
            assert Recorder.dropped == [msg]  # the message whose handler crashed
        finally:
            sup.stop(timeout=WAIT)
