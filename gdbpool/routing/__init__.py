"""Routing: :class:`~gdbpool.DBInteractionPool`, its router actor, replicas and transactions.

Internal: users import from :mod:`gdbpool`. Builds on :mod:`gdbpool.pool` and
:mod:`gdbpool.notify` (the interaction pool's hub), never the other way round.
"""
