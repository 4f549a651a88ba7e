"""CURVE for the ZmqNotifyBridge: key checks and the ZAP authenticator greenlet.

The authenticator is a ZAP handler (RFC 27) on a ``zmq.green`` REP socket bound
to ``inproc://zeromq.zap.01`` in the bridge's own context (pyzmq's
``ThreadAuthenticator`` runs an asyncio loop in a thread, which does not mix
with a gevent hub).  A private context per bridge keeps allow-lists of several
bridges in one process apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import zmq
from zmq.utils import z85

from gdbpool.errors import ConfigurationError
from gdbpool.logging import get_logger

__all__ = ["authenticate", "bind_zap", "curve_key"]

_ZAP_ENDPOINT = "inproc://zeromq.zap.01"


def bind_zap(
    ctx: zmq.Context[Any],
    secret: str | bytes | None,
    public: str | bytes | None,
    allowed: Iterable[str | bytes] | None,
) -> tuple[zmq.Socket[bytes], set[bytes] | None] | None:
    """Check the CURVE options; bind the ZAP socket in ``ctx`` when CURVE is on.

    Returns the socket and the allowed client keys (None: any client) for
    :func:`authenticate`, or None when no CURVE key is given.  Raises
    :class:`ConfigurationError` for half a key pair, bad keys, an allow-list
    without keys, or a libzmq without CURVE.
    """
    if secret is None and public is None:
        if allowed is not None:
            raise ConfigurationError(
                "allowed_client_keys needs CURVE: give curve_secret_key and curve_public_key too"
            )
        return None
    if not zmq.has("curve"):
        raise ConfigurationError("this libzmq has no CURVE support")
    curve_key(secret, "curve_secret_key")
    curve_key(public, "curve_public_key")
    allow = None if allowed is None else {curve_key(k, "allowed_client_keys") for k in allowed}
    zap = ctx.socket(zmq.REP)
    zap.linger = 0
    zap.bind(_ZAP_ENDPOINT)
    return zap, allow


def authenticate(zap: zmq.Socket[bytes], allowed: set[bytes] | None) -> None:
    """ZAP handler (RFC 27): admit CURVE clients whose public key is allowed."""
    log = get_logger("gdbpool.bridge", bridge="zap")
    while True:
        frames = zap.recv_multipart()
        if len(frames) < 6:
            request_id = frames[1] if len(frames) > 1 else b""
            zap.send_multipart([b"1.0", request_id, b"400", b"bad ZAP request", b"", b""])
            continue
        request_id, address, mechanism, creds = frames[1], frames[3], frames[5], frames[6:]
        key = z85.encode(creds[0]) if mechanism == b"CURVE" and len(creds) == 1 else b""
        if key and (allowed is None or key in allowed):
            zap.send_multipart([b"1.0", request_id, b"200", b"OK", key, b""])
        else:
            log.warning(
                "subscriber_refused",
                address=address.decode(errors="replace"),
                mechanism=mechanism.decode(errors="replace"),
                key=key.decode()[:8] + "..." if key else None,
            )
            zap.send_multipart([b"1.0", request_id, b"400", b"key not allowed", b"", b""])


def curve_key(value: str | bytes | None, what: str) -> bytes:
    """Validate a z85-encoded CURVE key (40 characters) and return it as bytes."""
    raw = value.encode() if isinstance(value, str) else value
    if raw is None or len(raw) != 40:
        raise ConfigurationError(
            f"{what} must be a z85-encoded CURVE key of 40 characters (see zmq.curve_keypair())"
        )
    try:
        z85.decode(raw)
    except Exception as exc:
        raise ConfigurationError(f"{what} is not valid z85: {raw[:8]!r}...") from exc
    return raw
