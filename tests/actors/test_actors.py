"""Actors: ask/tell, dispatch, lifecycle, stop, bounded mailboxes, leaks."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any

import gevent
import greenlet
import pytest
from gevent.event import AsyncResult, Event
from gevent.queue import Queue
from structlog.testing import capture_logs

from actors import (
    Actor,
    ActorError,
    ActorRef,
    ActorStartError,
    ActorState,
    ActorStopped,
    AskTimeout,
    MailboxFull,
    UnhandledMessage,
    handles,
)

WAIT = 2.0  # bound on every wait in these tests


@dataclass(frozen=True, slots=True)
class Ping:
    n: int


@dataclass(frozen=True, slots=True)
class LoudPing(Ping):
    pass


@dataclass(frozen=True, slots=True)
class Boom:
    text: str = "boom"


@dataclass(frozen=True, slots=True)
class Wait:
    """Handler blocks until ``gate`` is set; ``entered`` says it got there."""

    gate: Event
    entered: Event = field(default_factory=Event)


@dataclass(frozen=True, slots=True)
class Expire:
    """Handler waits on a result nobody sets, for ``seconds``: gevent.Timeout."""

    seconds: float
    entered: Event = field(default_factory=Event)


@dataclass(frozen=True, slots=True)
class Fatal:
    pass


class FatalError(BaseException):
    """Neither an Exception nor a gevent.Timeout: ends the actor."""


@dataclass(frozen=True, slots=True)
class StopSelf:
    pass


@dataclass(frozen=True, slots=True)
class WhoAmI:
    pass


class Echo(Actor):
    def __init__(self, factor: int = 1, seen: list[Any] | None = None) -> None:
        super().__init__()
        self.factor = factor
        self.seen = [] if seen is None else seen
        self.failures: list[BaseException] = []
        self.stopped = False

    def on_stop(self) -> None:
        self.seen.append("on_stop")

    @handles(Ping)
    def ping(self, msg: Ping) -> int:
        self.seen.append(msg.n)
        return msg.n * self.factor

    @handles(LoudPing)
    def loud(self, msg: LoudPing) -> str:
        return f"LOUD {msg.n}"

    @handles(Boom)
    def boom(self, msg: Boom) -> None:
        raise ValueError(msg.text)

    @handles(Wait)
    def wait(self, msg: Wait) -> str:
        msg.entered.set()
        msg.gate.wait()
        return "released"

    @handles(Expire)
    def expire(self, msg: Expire) -> None:
        msg.entered.set()
        AsyncResult().get(timeout=msg.seconds)

    @handles(Fatal)
    def fatal(self, msg: Fatal) -> None:
        raise FatalError("fatal")

    @handles(StopSelf)
    def stop_self(self, msg: StopSelf) -> str:
        self.ref.stop(timeout=WAIT)
        return "stopping"

    @handles(WhoAmI)
    def who(self, msg: WhoAmI) -> ActorRef:
        return self.ref


class Recorder(Actor):
    """Reports its hooks to a queue the test reads."""

    def __init__(self, events: Queue) -> None:
        super().__init__()
        self.events = events

    def on_start(self) -> None:
        self.events.put(("start", gevent.getcurrent()))

    def on_failure(self, exc: BaseException) -> None:
        self.events.put(("failure", exc))

    def on_stop(self) -> None:
        self.events.put(("stop", None))

    @handles(Boom)
    def boom(self, msg: Boom) -> None:
        raise ValueError(msg.text)

    @handles(Ping)
    def ping(self, msg: Ping) -> object:
        return gevent.getcurrent()

    @handles(Expire)
    def expire(self, msg: Expire) -> None:
        AsyncResult().get(timeout=msg.seconds)


def live_greenlets() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead)


def test_ask_returns_the_handlers_reply() -> None:
    ref = Echo.start(3, name="echo")
    try:
        reply = ref.ask(Ping(2))
        assert isinstance(reply, AsyncResult)
        assert reply.get(timeout=WAIT) == 6
        assert ref.name == "echo"
        assert ref.actor_class is Echo
        assert ref.state is ActorState.RUNNING
        assert ref.is_alive
    finally:
        ref.stop()


def test_messages_from_one_sender_are_handled_in_order() -> None:
    seen: list[Any] = []
    ref = Echo.start(seen=seen)
    for n in range(200):
        ref.tell(Ping(n))
    assert ref.ask(Ping(200)).get(timeout=WAIT) == 200
    assert seen == list(range(201))
    ref.stop()


def test_exception_on_ask_is_set_on_the_reply_and_actor_stays_alive() -> None:
    ref = Echo.start()
    with pytest.raises(ValueError, match="boom"):
        ref.ask(Boom()).get(timeout=WAIT)
    assert ref.is_alive
    assert ref.ask(Ping(4)).get(timeout=WAIT) == 4
    ref.stop()


def test_gevent_timeout_in_an_ask_handler_fails_the_reply_and_the_actor_keeps_answering() -> None:
    with capture_logs():
        ref = Echo.start(name="waiter")
        reply = ref.ask(Expire(0.01))
        with pytest.raises(gevent.Timeout):
            reply.get(timeout=WAIT)
        assert ref.ask(Ping(4)).get(timeout=WAIT) == 4
        assert ref.state is ActorState.RUNNING
        ref.stop(timeout=WAIT)


def test_gevent_timeout_in_a_told_handler_crashes_the_actor_like_any_exception() -> None:
    events: Queue = Queue()
    gate = Event()
    with capture_logs() as logs:
        ref = Recorder.start(events, name="timed")
        events.get(timeout=WAIT)
        ref.tell(Expire(0.01))
        pending = ref.ask(Wait(gate))  # queued behind the crash: never handled
        kind, exc = events.get(timeout=WAIT)
        assert kind == "failure" and isinstance(exc, gevent.Timeout)
        with pytest.raises(ActorStopped, match="'timed' crashed") as info:
            pending.get(timeout=WAIT)
    assert isinstance(info.value.__cause__, gevent.Timeout)
    assert ref.state is ActorState.STOPPED
    assert ("actor_crashed", "timed") in [(e["event"], e.get("actor")) for e in logs]


def test_killing_an_actor_in_a_timed_wait_fails_the_ask_in_flight_with_actor_stopped() -> None:
    with capture_logs():
        ref = Echo.start(name="sleepy")
        expire = Expire(WAIT * 10)  # would time out long after the kill
        in_flight = ref.ask(expire)
        assert expire.entered.wait(WAIT)
        ref.stop(timeout=0.01)
    assert ref.state is ActorState.STOPPED
    assert in_flight.ready()
    with pytest.raises(ActorStopped, match="'sleepy' was killed while handling"):
        in_flight.get(timeout=0)
    assert ref._greenlet is not None and ref._greenlet.dead


def test_a_fatal_base_exception_in_an_ask_handler_fails_the_reply_then_ends_the_actor() -> None:
    gate = Event()
    with capture_logs():
        ref = Echo.start(name="doomed")
        held = Wait(gate)
        first = ref.ask(held)
        assert held.entered.wait(WAIT)
        fatal = ref.ask(Fatal())
        queued = ref.ask(Ping(1))
        gate.set()
        with pytest.raises(FatalError):
            fatal.get(timeout=WAIT)
        with pytest.raises(ActorStopped, match="'doomed' died") as info:
            queued.get(timeout=WAIT)
    assert first.get(timeout=0) == "released"
    assert isinstance(info.value.__cause__, FatalError)
    assert ref.state is ActorState.STOPPED
    assert ref._greenlet is not None
    ref._greenlet.join(WAIT)
    assert ref._greenlet.dead and isinstance(ref._greenlet.exception, FatalError)


def test_unhandled_message_type_on_ask_fails_with_unhandled_message() -> None:
    ref = Echo.start(name="picky")
    with pytest.raises(UnhandledMessage, match=r"'picky'.*str"):
        ref.ask("hello").get(timeout=WAIT)
    assert isinstance(UnhandledMessage("x"), ActorError)
    assert ref.ask(Ping(1)).get(timeout=WAIT) == 1
    ref.stop()


def test_unhandled_message_type_on_tell_crashes_the_actor() -> None:
    events: Queue = Queue()
    ref = Recorder.start(events)
    assert events.get(timeout=WAIT)[0] == "start"
    ref.tell(3.14)
    kind, exc = events.get(timeout=WAIT)
    assert kind == "failure"
    assert isinstance(exc, UnhandledMessage)
    ref.stop(timeout=WAIT)
    assert ref.state is ActorState.STOPPED


def test_handler_for_a_base_type_handles_subclasses_unless_a_closer_one_exists() -> None:
    @dataclass(frozen=True, slots=True)
    class TinyPing(Ping):
        pass

    @dataclass(frozen=True, slots=True)
    class VeryLoudPing(LoudPing):
        pass

    ref = Echo.start(2)
    assert ref.ask(TinyPing(5)).get(timeout=WAIT) == 10
    assert ref.ask(VeryLoudPing(5)).get(timeout=WAIT) == "LOUD 5"
    ref.stop()


def test_subclass_override_of_a_handler_method_is_used() -> None:
    class Doubler(Echo):
        def ping(self, msg: Ping) -> int:
            return msg.n * 2

    ref = Doubler.start(100)
    assert ref.ask(Ping(4)).get(timeout=WAIT) == 8
    ref.stop()


def test_two_handlers_for_one_type_in_a_class_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="Ping"):

        class Confused(Actor):
            @handles(Ping)
            def a(self, msg: Ping) -> None: ...

            @handles(Ping)
            def b(self, msg: Ping) -> None: ...


def test_on_start_runs_in_the_actor_greenlet_before_the_first_message() -> None:
    events: Queue = Queue()
    ref = Recorder.start(events)
    kind, where = events.get_nowait()  # start() returned: on_start has run
    assert kind == "start"
    assert ref.ask(Ping(0)).get(timeout=WAIT) is where
    assert where is not gevent.getcurrent()
    ref.stop()
    assert events.get(timeout=WAIT) == ("stop", None)


def test_self_ref_inside_the_actor_is_its_own_ref() -> None:
    ref = Echo.start()
    assert ref.ask(WhoAmI()).get(timeout=WAIT) is ref
    ref.stop()


def test_on_start_failure_raises_actor_start_error_and_actor_never_runs() -> None:
    class Broken(Actor):
        def on_start(self) -> None:
            raise RuntimeError("no database")

    before = live_greenlets()
    with pytest.raises(ActorStartError, match=r"'broken'.*no database") as info:
        Broken.start(name="broken")
    assert isinstance(info.value.__cause__, RuntimeError)
    gevent.sleep(0)  # let the failed greenlet finish returning
    assert live_greenlets() == before


def test_on_start_raising_gevent_timeout_is_a_start_failure_not_a_start_timeout() -> None:
    class TimesOutAtStart(Actor):
        def on_start(self) -> None:
            AsyncResult().get(timeout=0.01)

    with pytest.raises(ActorStartError, match="on_start raised Timeout") as info:
        TimesOutAtStart.start(name="early", start_timeout=WAIT)
    assert isinstance(info.value.__cause__, gevent.Timeout)


def test_constructor_failure_raises_actor_start_error() -> None:
    with pytest.raises(ActorStartError, match="Echo"):
        Echo.start("not", "enough", "args", "at all")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"mailbox_size": 0}, "mailbox_size"),
        ({"mailbox_size": -3}, "mailbox_size"),
        ({"overflow": "x"}, "overflow"),
        ({"send_timeout": -1}, "send_timeout"),
    ],
)
def test_invalid_start_options_raise_value_error(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Echo.start(name="bad", **options)


def test_stop_answers_messages_queued_before_it_then_runs_on_stop() -> None:
    seen: list[Any] = []
    gate = Event()
    ref = Echo.start(seen=seen)
    blocker = Wait(gate)
    ref.tell(blocker)
    blocker.entered.wait(WAIT)
    replies = [ref.ask(Ping(n)) for n in range(5)]
    stopper = gevent.spawn(ref.stop, WAIT)
    gevent.sleep(0)  # let stop() begin
    assert ref.state is ActorState.STOPPING
    gate.set()
    stopper.join(WAIT)
    assert [r.get(timeout=WAIT) for r in replies] == [0, 1, 2, 3, 4]
    assert seen == [0, 1, 2, 3, 4, "on_stop"]
    assert ref.state is ActorState.STOPPED
    assert not ref.is_alive


def test_stop_timeout_kills_the_actor_and_fails_every_queued_ask() -> None:
    gate = Event()  # never set: the handler is stuck
    ref = Echo.start(name="stuck")
    stuck = Wait(gate)
    in_flight = ref.ask(stuck)
    stuck.entered.wait(WAIT)
    queued = [ref.ask(Ping(n)) for n in range(3)]
    ref.stop(timeout=0.05)
    assert ref.state is ActorState.STOPPED
    for reply in [in_flight, *queued]:
        assert reply.ready()
        with pytest.raises(ActorStopped, match="'stuck'"):
            reply.get(timeout=0)
    assert ref._greenlet is not None and ref._greenlet.dead


def test_send_after_stop_raises_actor_stopped() -> None:
    ref = Echo.start(name="gone")
    ref.stop()
    with pytest.raises(ActorStopped, match="'gone'"):
        ref.tell(Ping(1))
    with pytest.raises(ActorStopped, match="'gone'"):
        ref.ask(Ping(1))


def test_send_while_stopping_raises_actor_stopped() -> None:
    gate = Event()
    ref = Echo.start()
    blocker = Wait(gate)
    ref.tell(blocker)
    blocker.entered.wait(WAIT)
    stopper = gevent.spawn(ref.stop, WAIT)
    gevent.sleep(0)
    with pytest.raises(ActorStopped):
        ref.ask(Ping(1))
    gate.set()
    stopper.join(WAIT)


def test_stop_is_a_no_op_on_a_stopped_actor() -> None:
    ref = Echo.start()
    ref.stop()
    ref.stop()
    assert ref.state is ActorState.STOPPED


def test_stop_from_inside_the_actor_does_not_deadlock() -> None:
    seen: list[Any] = []
    ref = Echo.start(seen=seen)
    reply = ref.ask(StopSelf())
    queued = ref.ask(Ping(7))  # queued before the stop began: still handled
    assert reply.get(timeout=WAIT) == "stopping"
    assert queued.get(timeout=WAIT) == 7
    with pytest.raises(ActorStopped):
        ref.tell(Ping(8))
    ref.stop(timeout=WAIT)  # waits for the stop begun inside
    assert ref.state is ActorState.STOPPED
    assert seen == [7, "on_stop"]


def test_ask_with_timeout_fails_with_ask_timeout_and_drops_the_late_answer() -> None:
    gate = Event()
    ref = Echo.start(name="slow")
    reply = ref.ask(Wait(gate), timeout=0.02)
    with pytest.raises(AskTimeout, match="'slow'"):
        reply.get(timeout=WAIT)
    gate.set()
    assert ref.ask(Ping(1), timeout=WAIT).get(timeout=WAIT) == 1
    with pytest.raises(AskTimeout):
        reply.get(timeout=0)
    ref.stop()


def test_bounded_mailbox_with_overflow_fail_raises_mailbox_full_at_once() -> None:
    gate = Event()
    ref = Echo.start(name="tiny", mailbox_size=2, overflow="fail")
    blocker = Wait(gate)
    ref.tell(blocker)
    blocker.entered.wait(WAIT)
    first, second = ref.ask(Ping(1)), ref.ask(Ping(2))
    with pytest.raises(MailboxFull, match=r"'tiny'.*2 messages"):
        ref.tell(Ping(3))
    with pytest.raises(MailboxFull):
        ref.ask(Ping(3))
    gate.set()
    assert (first.get(timeout=WAIT), second.get(timeout=WAIT)) == (1, 2)
    ref.stop()


def test_bounded_mailbox_with_overflow_block_waits_for_room_then_raises() -> None:
    gate = Event()
    ref = Echo.start(name="tiny", mailbox_size=1, overflow="block", send_timeout=0.02)
    blocker = Wait(gate)
    ref.tell(blocker)
    blocker.entered.wait(WAIT)
    ref.tell(Ping(1))
    with pytest.raises(MailboxFull, match=r"'tiny'.*1 messages.*0.02 s"):
        ref.tell(Ping(2))
    # A blocked sender gets through as soon as the actor makes room.
    sender = gevent.spawn(ref.ask, Ping(3))
    gevent.sleep(0)
    gate.set()
    assert sender.get(timeout=WAIT).get(timeout=WAIT) == 3
    ref.stop()


def test_blocked_sender_of_a_stopping_actor_never_hangs() -> None:
    gate = Event()
    ref = Echo.start(mailbox_size=1, overflow="block", send_timeout=WAIT)
    blocker = Wait(gate)
    ref.tell(blocker)
    blocker.entered.wait(WAIT)
    ref.tell(Ping(1))
    sender = gevent.spawn(ref.ask, Ping(2))
    gevent.sleep(0)
    ref.stop(timeout=0.05)  # killed: the blocker never returns
    sender.join(WAIT)
    assert sender.dead
    if sender.successful():
        with pytest.raises(ActorStopped):
            sender.value.get(timeout=0)
    else:
        assert isinstance(sender.exception, ActorStopped)


def test_crash_on_tell_unsupervised_stops_the_actor_and_fails_queued_asks() -> None:
    events: Queue = Queue()
    gate = Event()
    ref = Recorder.start(events, name="fragile")
    events.get(timeout=WAIT)
    ref.tell(Boom("bad row"))
    pending = ref.ask(Wait(gate))  # queued behind the crash: never handled
    kind, exc = events.get(timeout=WAIT)
    assert (kind, str(exc)) == ("failure", "bad row")
    with pytest.raises(ActorStopped, match="'fragile' crashed") as info:
        pending.get(timeout=WAIT)
    assert isinstance(info.value.__cause__, ValueError)
    assert ref.state is ActorState.STOPPED
    with pytest.raises(ActorStopped):
        ref.tell(Ping(1))


@dataclass(frozen=True, slots=True)
class Job:
    """A told message carrying its own reply channel."""

    n: int
    reply: AsyncResult = field(default_factory=AsyncResult)


class DeadLetters(Actor):
    """Settles the Jobs it never read; cannot settle n == 13."""

    @handles(Boom)
    def boom(self, msg: Boom) -> None:
        raise ValueError(msg.text)

    @handles(Wait)
    def wait(self, msg: Wait) -> str:
        msg.entered.set()
        msg.gate.wait()
        return "released"

    crashed_by: list[object] = []  # class-level: the instance is gone when tests look

    def on_dropped(self, message: object) -> None:
        if not isinstance(message, Job):
            DeadLetters.crashed_by.append(message)  # the message whose handler crashed
            return
        if message.n == 13:
            raise RuntimeError("unlucky")
        message.reply.set_exception(ActorStopped(f"job {message.n} dropped"))


def test_told_messages_left_by_a_crash_go_to_on_dropped_and_asks_fail() -> None:
    DeadLetters.crashed_by.clear()
    with capture_logs() as logs:
        ref = DeadLetters.start(name="letters")
        ref.tell(Boom("bad"))
        jobs = [Job(1), Job(13), Job(2)]
        for job in jobs:
            ref.tell(job)
        asked = ref.ask(Wait(Event()))
        assert ref._done.wait(WAIT)
    for job in (jobs[0], jobs[2]):
        with pytest.raises(ActorStopped, match=f"job {job.n} dropped"):
            job.reply.get(timeout=WAIT)
    assert not jobs[1].reply.ready()  # on_dropped raised: logged, the others still settled
    with pytest.raises(ActorStopped, match="'letters' crashed"):
        asked.get(timeout=WAIT)
    assert [e["event"] for e in logs].count("actor_on_dropped_failed") == 1
    assert DeadLetters.crashed_by == [Boom("bad")]


def test_told_messages_left_by_a_stop_that_timed_out_go_to_on_dropped() -> None:
    with capture_logs():
        ref = DeadLetters.start()
        stuck = Wait(Event())
        ref.tell(stuck)
        assert stuck.entered.wait(WAIT)
        job = Job(7)
        ref.tell(job)
        ref.stop(timeout=0.05)  # the handler never returns: killed
    with pytest.raises(ActorStopped, match="job 7 dropped"):
        job.reply.get(timeout=WAIT)


def test_events_are_logged_with_the_actor_name() -> None:
    with capture_logs() as logs:
        events: Queue = Queue()
        ref = Recorder.start(events, name="noisy")
        ref.tell(Boom())
        events.get(timeout=WAIT)
        events.get(timeout=WAIT)
        ref.stop(timeout=WAIT)
    names = [(e["event"], e.get("actor")) for e in logs]
    assert ("actor_started", "noisy") in names
    assert ("actor_crashed", "noisy") in names
    assert ("actor_stopped", "noisy") in names


def test_ten_thousand_actors_start_and_stop_without_leaking_greenlets() -> None:
    gc.collect()
    before = live_greenlets()
    with capture_logs():
        refs = [Echo.start() for _ in range(10_000)]
        assert refs[-1].ask(Ping(2)).get(timeout=WAIT) == 2
        for ref in refs:
            ref.stop(timeout=WAIT)
    assert all(ref.state is ActorState.STOPPED for ref in refs)
    del refs
    gc.collect()
    assert live_greenlets() == before
