"""The embedded PostgreSQL server (:class:`~gdbpool.EmbeddedPostgres`) and waiting for a server.

Internal: users import from :mod:`gdbpool`. Imports only the core.
"""
