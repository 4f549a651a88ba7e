"""The connection pool: :class:`~gdbpool.DBConnectionPool`, its pool actor and workers.

Internal: users import from :mod:`gdbpool`. Builds on the core (``gdbpool.errors``,
``logging``, ``green``, ``interaction``, ``execute``) and :mod:`actors` only.
"""
