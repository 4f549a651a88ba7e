"""Fork safety: nothing a child process inherits through ``fork()`` touches the parent's sockets.

The rule (decisions: docs/design/fork.md): an object used in a process other
than the one that made it never uses the sockets it inherited.  Pools and
hubs reopen in the child with fresh connections; ZeroMQ objects raise
:class:`~gdbpool.errors.ForkError` there.

One ``os.register_at_fork(after_in_child=...)`` hook does it, so the hot
paths pay nothing (no per-call ``getpid()``):

1. Every connection gdbpool opened (:class:`TrackedConnection`, also while it
   is still connecting) gets ``/dev/null`` duplicated over its descriptor in
   the child.  The parent's socket is untouched (the child's copy of the
   descriptor is gone, so nothing there can read the parent's answers), and
   whatever the child's copy of the psycopg2 object does later (its
   ``close()``, or its finalizer, both send a Terminate message) goes to
   ``/dev/null``, never to the parent's session.  The connection is marked
   ``gdbpool_inherited`` so that an interrupted wait never cancels the
   parent's statement (:mod:`gdbpool.green`).  The objects are then dropped
   normally; closing them releases the duplicated descriptor.
2. Every registered owner (pools, interaction pools, hubs, bridges,
   subscribers) gets ``_after_fork_in_child()``: it abandons its inherited
   actors (``ActorRef._abandon``: no further message is handled, their
   greenlets are killed) and arranges to reopen, or to refuse, in the child.

Nothing in the hook switches greenlets or does I/O other than ``dup2``:
it runs inside ``os.fork()``, before gevent's own ``reinit()``.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import Any

import psycopg2
from psycopg2 import extensions

from gdbpool.errors import ForkError
from gdbpool.logging import get_logger

__all__ = ["TrackedConnection", "fork_error", "register", "silence_zmq"]

_connections: weakref.WeakSet[TrackedConnection] = weakref.WeakSet()
_owners: weakref.WeakSet[Any] = weakref.WeakSet()
_log = get_logger("gdbpool.fork")
_parent = os.getpid()
_forked_from = 0  # in a child: the pid of the process that forked it


class TrackedConnection(extensions.connection):  # type: ignore[misc]
    """A psycopg2 connection the fork hook knows about (see the module docstring).

    It registers itself before connecting, so a connection still being opened
    at ``fork()`` is covered too.
    """

    gdbpool_inherited: bool = False  # True in a child: a copy of the parent's connection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _connections.add(self)
        super().__init__(*args, **kwargs)


def register(owner: Any) -> None:
    """Call ``owner._after_fork_in_child()`` in every child forked from now on (weakly held)."""
    _owners.add(owner)


def silence_zmq(context: Any) -> None:
    """Stop the hub's watchers of ``context``'s ``zmq.green`` sockets (in a fork() child).

    A watcher would call into libzmq when the inherited descriptor turns
    readable, and libzmq would consume the parent's wake-ups.  No zmq call is
    made here; pyzmq itself skips ``close()``/``term()`` in a forked child.
    """
    for sock in list(getattr(context, "_sockets", ())):
        watcher = getattr(sock, "_state_event", None)
        if watcher is not None:
            watcher.stop()


def fork_error(what: str) -> ForkError:
    """The ForkError for a ZeroMQ object ``what`` used in a child (names the fork and the fix)."""
    parent = str(_forked_from) if _forked_from else "the parent"
    return ForkError(
        f"{what} was created in process {parent} before fork(); ZeroMQ contexts are not fork "
        f"safe, so it cannot be used in this child process ({os.getpid()}): create it after "
        "the fork, in the process that uses it (e.g. in gunicorn's post_fork hook)"
    )


def _abandon_connections() -> int:
    inherited = list(_connections)
    _connections.clear()
    if not inherited:
        return 0
    devnull = os.open(os.devnull, os.O_RDWR)
    count = 0
    try:
        for conn in inherited:
            try:
                if conn.closed:
                    continue
                fd = conn.fileno()
            except (psycopg2.Error, ValueError):
                continue  # not connected yet: no socket to protect
            conn.gdbpool_inherited = True
            with contextlib.suppress(OSError):
                os.dup2(devnull, fd, inheritable=False)
                count += 1
    finally:
        os.close(devnull)
    return count


def _after_fork_in_child() -> None:
    global _parent, _forked_from
    _forked_from, _parent = _parent, os.getpid()
    # Connections first: nothing an owner does below may reach the parent's sessions.
    try:
        count = _abandon_connections()
    except Exception:  # pragma: no cover - a failing hook must not kill the child
        _log.exception("fork_connections_failed")
        count = 0
    owners = list(_owners)
    for owner in owners:
        try:
            owner._after_fork_in_child()
        except Exception:  # pragma: no cover
            _log.exception("fork_owner_failed", owner=type(owner).__name__)
    if count or owners:
        _log.debug("forked", pid=os.getpid(), connections=count, owners=len(owners))


os.register_at_fork(after_in_child=_after_fork_in_child)
