"""LISTEN/NOTIFY: the hub and its listeners, subscriptions, the ZeroMQ bridge and wire format.

Internal: users import from :mod:`gdbpool`. Builds on the core and :mod:`actors`;
never imports :mod:`gdbpool.pool`.
"""
