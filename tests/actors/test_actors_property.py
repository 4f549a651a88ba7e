"""Property: whatever the mix of tell/ask/crash/timeout/stop, no ask is left unanswered."""

from __future__ import annotations

from dataclasses import dataclass

import gevent
from gevent.event import AsyncResult
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from actors import (
    Actor,
    ActorRef,
    ActorState,
    ActorStopped,
    MailboxFull,
    Supervisor,
    UnhandledMessage,
    handles,
)

BOUND = 2.0  # seconds: every ask must be settled within this after stop()


@dataclass(frozen=True, slots=True)
class Work:
    n: int


@dataclass(frozen=True, slots=True)
class Fail:
    pass


@dataclass(frozen=True, slots=True)
class Slow:
    seconds: float


@dataclass(frozen=True, slots=True)
class Expire:
    """Handler's timed wait runs out: raises gevent.Timeout (a BaseException)."""

    seconds: float


class Worker(Actor):
    @handles(Work)
    def work(self, msg: Work) -> int:
        return msg.n

    @handles(Fail)
    def fail(self, msg: Fail) -> None:
        raise RuntimeError("fail")

    @handles(Slow)
    def slow(self, msg: Slow) -> str:
        gevent.sleep(msg.seconds)  # simulated work, not synchronisation
        return "slow"

    @handles(Expire)
    def expire(self, msg: Expire) -> None:
        AsyncResult().get(timeout=msg.seconds)


class InlineWorker(Worker):
    """The same handlers, run on the sender's greenlet when idle (Slow and Expire yield)."""

    inline = True


MESSAGES = st.one_of(
    st.builds(Work, st.integers(0, 9)),
    st.just(Fail()),
    st.builds(Slow, st.sampled_from([0.0, 0.001, 0.01])),
    st.builds(Expire, st.sampled_from([0.0, 0.001, 0.01])),
    st.just("unhandled"),
)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("tell"), MESSAGES),
        st.tuples(st.just("ask"), MESSAGES),
        st.tuples(st.just("yield"), st.none()),
        st.tuples(st.just("stop_in_background"), st.sampled_from([0.0, 0.005, 1.0])),
    ),
    max_size=40,
)


Asked = list[tuple[object, AsyncResult]]


def run(ref: ActorRef, ops: list[tuple[str, object]]) -> Asked:
    replies: Asked = []
    for op, arg in ops:
        try:
            if op == "tell":
                ref.tell(arg)
            elif op == "ask":
                replies.append((arg, ref.ask(arg)))
            elif op == "yield":
                gevent.sleep(0)
            else:
                assert isinstance(arg, float)
                gevent.spawn(ref.stop, arg)
        except (ActorStopped, MailboxFull):
            pass  # refused at once: allowed, nothing left pending
    return replies


def expected_outcome(message: object) -> object:
    """What a handled ask of ``message`` answers: a value or an exception type."""
    if isinstance(message, Work):
        return message.n
    if isinstance(message, Slow):
        return "slow"
    if isinstance(message, Fail):
        return RuntimeError
    if isinstance(message, Expire):
        return gevent.Timeout
    return UnhandledMessage


def check_settled(ref: ActorRef, replies: Asked) -> None:
    ref.stop(timeout=0.05)
    assert ref.state is ActorState.STOPPED
    # stop() returned: every ask is already answered or failed...
    assert all(r.ready() for _, r in replies)
    # ...with its handler's own outcome, or ActorStopped if it was never
    # (or not fully) handled; never with the kill, never left hanging.
    for message, r in replies:
        expected = expected_outcome(message)
        if r.successful():
            assert r.value == expected
        elif not isinstance(r.exception, ActorStopped):
            assert isinstance(expected, type) and isinstance(r.exception, expected)
    assert ref._greenlet is None or ref._greenlet.join(BOUND) or ref._greenlet.dead


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=OPS,
    mailbox=st.sampled_from([None, 1, 4]),
    overflow=st.sampled_from(["block", "fail"]),
    kind=st.sampled_from([Worker, InlineWorker]),
)
def test_every_ask_is_answered_or_failed_unsupervised(
    ops: list[tuple[str, object]], mailbox: int | None, overflow: str, kind: type[Worker]
) -> None:
    with capture_logs():
        ref = kind.start(mailbox_size=mailbox, overflow=overflow, send_timeout=0.01)  # type: ignore[arg-type]
        check_settled(ref, run(ref, ops))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, max_restarts=st.integers(0, 3), kind=st.sampled_from([Worker, InlineWorker]))
def test_every_ask_is_answered_or_failed_under_a_supervisor(
    ops: list[tuple[str, object]], max_restarts: int, kind: type[Worker]
) -> None:
    with capture_logs():
        sup = Supervisor(max_restarts=max_restarts, backoff_initial=0.0, backoff_max=0.001)
        ref = sup.spawn(kind)
        replies = run(ref, ops)
        check_settled(ref, replies)
        sup.stop(timeout=BOUND)
