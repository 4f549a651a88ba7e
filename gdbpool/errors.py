"""Errors raised by gdbpool.

One base class, :class:`GDBPoolError`, and specific subclasses whose messages
say what went wrong and what to do.  The names of the 2011 library are kept:
``DBPoolConnectionException`` and ``PoolConnectionException`` are aliases of
:class:`PoolConnectionError`, ``DBInteractionException`` is the class of every
failed interaction.
"""

from __future__ import annotations

__all__ = [
    "ArgumentTypeError",
    "BridgeClosed",
    "ConfigurationError",
    "DBInteractionException",
    "DBPoolConnectionException",
    "EmbeddedPostgresError",
    "GDBPoolError",
    "InteractionTimeout",
    "NoPrimaryAvailable",
    "NoReplicaAvailable",
    "NotificationError",
    "PoolClosed",
    "PoolConnectionError",
    "PoolConnectionException",
    "PoolTimeout",
    "SubscriptionClosed",
    "TooManyRequests",
    "WireFormatError",
]


class GDBPoolError(Exception):
    """Base class of every error gdbpool raises."""


class ConfigurationError(GDBPoolError, ValueError):
    """A bad argument or setting: the message names it and says what is allowed."""


class ArgumentTypeError(GDBPoolError, TypeError):
    """An argument of the wrong type: the message names the argument and the type expected.

    A :class:`TypeError` (what Python raises for wrong types) that is also a
    :class:`GDBPoolError`, so ``except GDBPoolError`` catches every bad input;
    a right-typed argument with a bad value is a :class:`ConfigurationError`.
    """


def check_type(name: str, value: object, expected: type | tuple[type, ...], what: str) -> None:
    """Raise :class:`ArgumentTypeError` naming ``name`` unless ``value`` is an ``expected``.

    ``bool`` passes only where ``bool`` itself is expected (``True`` is not a
    size); ``what`` says in words what was expected (``"an int"``).  Used by
    the public entry points at construction, off the hot paths.
    """
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, kinds) and (type(value) is not bool or bool in kinds):
        return
    raise ArgumentTypeError(f"{name} must be {what}, not {type(value).__name__}")


class EmbeddedPostgresError(GDBPoolError):
    """The embedded PostgreSQL server could not be found, started or stopped."""


class PoolConnectionError(GDBPoolError):
    """A connection could not be opened (bad DSN, wrong password, host unreachable).

    The message names host, port and database, never the password.
    """


DBPoolConnectionException = PoolConnectionError
PoolConnectionException = PoolConnectionError


class PoolTimeout(GDBPoolError, TimeoutError):
    """No connection became available within the waiting timeout."""


class TooManyRequests(GDBPoolError):
    """More requests are waiting than the pool's ``max_waiting`` allows."""


class PoolClosed(GDBPoolError):
    """The pool (or interaction pool) is closed."""


class NoReplicaAvailable(GDBPoolError):
    """A read-only interaction found no acceptable replica and fallback is ``"fail"``."""


class NoPrimaryAvailable(GDBPoolError):
    """No single writable primary within ``failover_timeout`` (or the write's ``timeout``).

    The primary is down or read-only and no other node is writable, or two
    nodes are (split brain: gdbpool never writes to either then). The message
    says which. See docs/design/router.md, "Following the primary".
    """


class DBInteractionException(GDBPoolError):
    """An interaction failed.

    ``pgcode`` is the PostgreSQL SQLSTATE when the server raised the error, and
    the original exception is the ``__cause__`` (also kept as ``original``).
    """

    def __init__(
        self, message: str, *, pgcode: str | None = None, original: BaseException | None = None
    ) -> None:
        super().__init__(message)
        self.pgcode = pgcode
        self.original = original


class InteractionTimeout(DBInteractionException, TimeoutError):
    """An interaction ran past its ``timeout``; its statement was cancelled on the server."""


class NotificationError(GDBPoolError, ValueError):
    """A notification could not be sent or decoded (payload too long, bad JSON, bad channel)."""


class WireFormatError(NotificationError):
    """A ZeroMQ bridge message is not in the bridge's wire format (or a newer version of it)."""


class SubscriptionClosed(NotificationError):
    """The subscription was closed (by ``close()``, ``listen_on``'s cancel, or its hub closing).

    Raised by ``Subscription.get()`` once nothing is left to read; iteration
    simply ends instead.  The message says who closed it.
    """


class BridgeClosed(GDBPoolError):
    """The ZeroMQ bridge or subscriber is closed."""
