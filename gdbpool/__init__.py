"""gDBPool: PostgreSQL connection and interaction pooling for gevent.

Importing this package makes psycopg2 cooperative (see :mod:`gdbpool.green`).
Users import from ``gdbpool`` only; submodules are internal.
"""

from __future__ import annotations

from gdbpool.errors import (
    BridgeClosed,
    ConfigurationError,
    DBInteractionException,
    DBPoolConnectionException,
    EmbeddedPostgresError,
    ForkError,
    GDBPoolError,
    InteractionTimeout,
    NoReplicaAvailable,
    NotificationError,
    PoolClosed,
    PoolConnectionError,
    PoolConnectionException,
    PoolTimeout,
    SubscriptionClosed,
    TooManyRequests,
    WireFormatError,
)
from gdbpool.execute import run_in_transaction, run_interaction
from gdbpool.green import make_psycopg_green
from gdbpool.interaction import ISOLATION_LEVELS, Interaction
from gdbpool.logging import configure_logging, redact
from gdbpool.notify.bridge import ZmqNotifyBridge
from gdbpool.notify.hub import ChannelListener, NotificationHub
from gdbpool.notify.notification import Notification, Reconnected, check_channel, check_payload
from gdbpool.notify.subscriber import BridgeRestarted, BridgeSilent, Gap, NotifySubscriber
from gdbpool.notify.subscription import Overflow, Subscription
from gdbpool.notify.wire import HEARTBEAT_TOPIC, RESERVED_PREFIX, WIRE_VERSION
from gdbpool.pool.connection_pool import DBConnectionPool
from gdbpool.routing.interaction_pool import DBInteractionPool, PoolRole
from gdbpool.routing.read_your_writes import ReadYourWrites
from gdbpool.routing.replicas import ReplicaStatus
from gdbpool.routing.transaction import Transaction
from gdbpool.server.embedded import EmbeddedPostgres
from gdbpool.server.wait import wait_for_server

make_psycopg_green()

__version__ = "0.1.0"

__all__ = [
    "HEARTBEAT_TOPIC",
    "ISOLATION_LEVELS",
    "RESERVED_PREFIX",
    "WIRE_VERSION",
    "BridgeClosed",
    "BridgeRestarted",
    "BridgeSilent",
    "ChannelListener",
    "ConfigurationError",
    "DBConnectionPool",
    "DBInteractionException",
    "DBInteractionPool",
    "DBPoolConnectionException",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "ForkError",
    "GDBPoolError",
    "Gap",
    "Interaction",
    "InteractionTimeout",
    "NoReplicaAvailable",
    "Notification",
    "NotificationError",
    "NotificationHub",
    "NotifySubscriber",
    "Overflow",
    "PoolClosed",
    "PoolConnectionError",
    "PoolConnectionException",
    "PoolRole",
    "PoolTimeout",
    "ReadYourWrites",
    "Reconnected",
    "ReplicaStatus",
    "Subscription",
    "SubscriptionClosed",
    "TooManyRequests",
    "Transaction",
    "WireFormatError",
    "ZmqNotifyBridge",
    "__version__",
    "check_channel",
    "check_payload",
    "configure_logging",
    "make_psycopg_green",
    "redact",
    "run_in_transaction",
    "run_interaction",
    "wait_for_server",
]
