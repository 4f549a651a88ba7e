"""gDBPool: PostgreSQL connection and interaction pooling for gevent.

Importing this package changes nothing in psycopg2: the first pool or hub
installs the cooperative wait callback if no other one is installed, unless
``GDBPOOL_NO_GREEN=1`` (see :mod:`gdbpool.green`).
Users import from ``gdbpool`` only; submodules are internal.
"""

from __future__ import annotations

try:
    import psycopg2 as _psycopg2  # noqa: F401 - the driver is an extra; say so clearly
except ImportError as _exc:  # pragma: no cover - exercised in a venv without a driver
    raise ImportError(
        "gdbpool needs psycopg2, which is not installed: install "
        "'gdbpool[binary]' (psycopg2-binary, a prebuilt wheel) or 'gdbpool[source]' "
        "(psycopg2 built against your libpq), or install either one yourself"
    ) from _exc

from gdbpool.errors import (
    ArgumentTypeError,
    BridgeClosed,
    ConfigurationError,
    DBInteractionException,
    DBPoolConnectionException,
    EmbeddedPostgresError,
    GDBPoolError,
    InteractionTimeout,
    NoPrimaryAvailable,
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
from gdbpool.notify.subscriber import (
    BridgeRestarted,
    BridgeSilent,
    Gap,
    Lagging,
    NotifySubscriber,
)
from gdbpool.notify.subscription import Overflow, Subscription
from gdbpool.notify.wire import HEARTBEAT_TOPIC, RESERVED_PREFIX, WIRE_VERSION
from gdbpool.pool.connection_pool import DBConnectionPool
from gdbpool.routing.interaction_pool import DBInteractionPool, PoolRole
from gdbpool.routing.node_probe import NodeStatus
from gdbpool.routing.read_your_writes import ReadYourWrites
from gdbpool.routing.replicas import ReplicaStatus
from gdbpool.routing.topology import (
    NodeDown,
    NodeRole,
    NodeState,
    NodeUp,
    PrimaryChanged,
    TopologyWatch,
)
from gdbpool.routing.transaction import Transaction
from gdbpool.server.embedded import EmbeddedPostgres
from gdbpool.server.wait import wait_for_server

__version__ = "0.1.0"

__all__ = [
    "HEARTBEAT_TOPIC",
    "ISOLATION_LEVELS",
    "RESERVED_PREFIX",
    "WIRE_VERSION",
    "ArgumentTypeError",
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
    "GDBPoolError",
    "Gap",
    "Interaction",
    "InteractionTimeout",
    "Lagging",
    "NoPrimaryAvailable",
    "NoReplicaAvailable",
    "NodeDown",
    "NodeRole",
    "NodeState",
    "NodeStatus",
    "NodeUp",
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
    "PrimaryChanged",
    "ReadYourWrites",
    "Reconnected",
    "ReplicaStatus",
    "Subscription",
    "SubscriptionClosed",
    "TooManyRequests",
    "TopologyWatch",
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
