"""The one check of a ZeroMQ endpoint's port, for the bridge's binds and the subscriber's connects.

libzmq reads a TCP port with ``atoi``-like leniency: ``tcp://127.0.0.1:-1``
binds port 65535 and ``:65537`` binds port 1 (the number taken modulo
65536).  So the port of a ``tcp://`` endpoint is checked here, before
ZeroMQ sees it: 1 to 65535, or (binding only) ``0`` or ``*`` for a free
port.  Other transports (``ipc://``, ``inproc://``) and the rest of the
endpoint are left to ZeroMQ, whose error is reported as it is.
"""

from __future__ import annotations

from gdbpool.errors import ConfigurationError, check_type

__all__ = ["check_endpoint"]


def check_endpoint(endpoint: object, *, name: str, bind: bool) -> str:
    """Return ``endpoint`` if its TCP port (if any) is usable.

    ``name`` is the argument named in the error; ``bind`` allows port 0 and
    ``*`` (a free port).  Raises :class:`~gdbpool.errors.ArgumentTypeError`
    for a non-string and :class:`~gdbpool.errors.ConfigurationError` for a
    port outside 1 to 65535.
    """
    check_type(name, endpoint, str, "a ZeroMQ endpoint string such as tcp://127.0.0.1:5555")
    assert isinstance(endpoint, str)
    if endpoint.startswith("tcp://"):
        _, colon, port = endpoint.rpartition(":")
        free = bind and port in ("0", "*")
        number = len(port) <= 5 and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535
        if not (colon and (free or number)):
            allowed = "1 to 65535, or 0 or * for a free port" if bind else "1 to 65535"
            raise ConfigurationError(
                f"cannot {'bind' if bind else 'connect'} to {endpoint[:100]!r} ({name}): the port "
                f"must be {allowed} (got {port[:20]!r}); e.g. tcp://127.0.0.1:5555"
            )
    return endpoint
