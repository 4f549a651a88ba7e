"""A small gevent actor kit: actors, refs, supervisors. Knows nothing of databases.

An actor owns its state and one greenlet that takes messages from its
mailbox one at a time; others talk to it through an :class:`ActorRef`
(``tell``, ``ask``, ``stop``). A :class:`Supervisor` restarts crashed actors.
"""

from actors.actor import DEFAULT_START_TIMEOUT, Actor, handles
from actors.errors import (
    ActorError,
    ActorStartError,
    ActorStopped,
    AskTimeout,
    MailboxFull,
    SupervisorGaveUp,
    UnhandledMessage,
)
from actors.ref import DEFAULT_SEND_TIMEOUT, DEFAULT_STOP_TIMEOUT, ActorRef, ActorState
from actors.supervisor import Supervisor

__all__ = [
    "DEFAULT_SEND_TIMEOUT",
    "DEFAULT_START_TIMEOUT",
    "DEFAULT_STOP_TIMEOUT",
    "Actor",
    "ActorError",
    "ActorRef",
    "ActorStartError",
    "ActorState",
    "ActorStopped",
    "AskTimeout",
    "MailboxFull",
    "Supervisor",
    "SupervisorGaveUp",
    "UnhandledMessage",
    "handles",
]
