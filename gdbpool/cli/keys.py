"""CURVE keys for ``gdbpool bridge`` and ``subscribe``: from files or the environment.

Keys never travel on the command line (any local user reads it with ``ps``).
``gdbpool keys --out NAME`` writes a key pair in ZeroMQ's certificate format
(what ``zmq.auth.create_certificates`` writes and ``zmq.auth.load_certificate``
reads): ``NAME.key_secret`` (both keys, mode 0600) and ``NAME.key`` (the
public key only, 0644), and prints the public key, so ``gdbpool keys --out
alice >> allowed_keys`` adds it to an allow-list. Files are created, never
overwritten.

Where each command looks (the first that is set wins):

* its own key pair: ``--curve-secret-file PATH`` (a ``.key_secret``
  certificate), else environment variable ``GDBPOOL_CURVE_SECRET_KEY`` (the
  z85 secret key; the public key is derived from it).
* ``subscribe``, the bridge's public key: ``--curve-server-key-file PATH`` (a
  ``.key`` or ``.key_secret`` certificate), else ``GDBPOOL_CURVE_SERVER_KEY``.
* ``bridge``, the clients it admits: ``--allow-file PATH``, one z85 public key
  per line (blank lines and ``#`` comments skipped; ``.key`` certificates may
  be concatenated in as they are: their ``public-key = "..."`` lines count). Without it, any client
  that speaks CURVE is admitted (encrypted, not authenticated).

A key that is malformed is exit code 2 naming the file or variable, never
echoing the key.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from gdbpool.cli.args import BadInput
from gdbpool.errors import GDBPoolError

__all__ = [
    "SECRET_ENV",
    "SERVER_ENV",
    "allowed_keys",
    "cmd_keys",
    "own_key_pair",
    "server_key",
]

#: The variable holding a command's own z85 CURVE secret key.
SECRET_ENV = "GDBPOOL_CURVE_SECRET_KEY"  # noqa: S105 - a variable name, not a key
#: The variable holding the bridge's z85 public key, for ``subscribe``.
SERVER_ENV = "GDBPOOL_CURVE_SERVER_KEY"

#: A ``name = value`` line of a ZeroMQ certificate (ZPL).
_FIELD = re.compile(r"^(?P<name>[a-z][a-z-]*)\s*=\s*(?P<value>.*)$")

_BANNER = "#   gdbpool CURVE {kind}, written by `gdbpool keys` (ZeroMQ certificate format)\n"


def _check(key: bytes, where: str) -> bytes:
    from gdbpool.errors import ConfigurationError
    from gdbpool.notify.curve import curve_key

    try:
        return curve_key(key, where)
    except ConfigurationError:
        raise BadInput(f"{where} does not hold a z85 CURVE key of 40 characters") from None


def _is_z85(text: str) -> bool:
    from zmq.utils import z85

    try:
        z85.decode(text.encode())
    except Exception:  # z85.decode raises ValueError, KeyError or struct.error
        return False
    return True


def _certificate(path: str, option: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError):
        raise BadInput(f"{option} {path!r}: not a readable ZeroMQ certificate") from None
    where = f"{option} {path!r}"
    if secret and secret_key is None:
        raise BadInput(f"{where} holds no secret-key (give the .key_secret file)")
    return _check(public, where), None if secret_key is None else _check(secret_key, where)


def own_key_pair(args: argparse.Namespace) -> tuple[bytes, bytes] | None:
    """``(public, secret)`` from ``--curve-secret-file`` or :data:`SECRET_ENV`; None if neither."""
    import zmq

    if args.curve_secret_file:
        public, secret = _certificate(args.curve_secret_file, "--curve-secret-file", secret=True)
        assert secret is not None
        if zmq.curve_public(secret) != public:
            raise BadInput(
                f"--curve-secret-file {args.curve_secret_file!r}: public-key and "
                "secret-key are not a pair"
            )
        return public, secret
    text = os.environ.get(SECRET_ENV)
    if not text:
        return None
    secret = _check(text.strip().encode(), f"${SECRET_ENV}")
    return zmq.curve_public(secret), secret


def server_key(args: argparse.Namespace) -> bytes | None:
    """The bridge's public key from ``--curve-server-key-file`` or :data:`SERVER_ENV`."""
    if args.curve_server_key_file:
        return _certificate(args.curve_server_key_file, "--curve-server-key-file", secret=False)[0]
    text = os.environ.get(SERVER_ENV)
    return None if not text else _check(text.strip().encode(), f"${SERVER_ENV}")


def allowed_keys(path: str | None) -> list[bytes] | None:
    """The public keys listed in the ``--allow-file``; None without one."""
    if path is None:
        return None
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise BadInput(f"--allow-file {path!r}: cannot read it: {reason}") from None
    keys = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if len(text) == 40 and _is_z85(text):
            pass  # a bare key (z85 has '#' and '=' in its alphabet: test this first)
        elif (field := _FIELD.match(text)) is not None:
            if field["name"] != "public-key":
                continue  # the rest of a pasted certificate (a secret-key is never read)
            text = field["value"].strip(" \t'\"")
        elif not text or text.startswith("#") or text in ("metadata", "curve"):
            continue
        keys.append(_check(text.encode(), f"--allow-file {path!r} line {number}"))
    if not keys:
        raise BadInput(f"--allow-file {path!r} lists no key: it would admit nobody")
    return keys


def cmd_keys(args: argparse.Namespace) -> int:
    """Write ``OUT.key_secret`` (0600) and ``OUT.key`` (0644); print the public key."""
    import zmq

    if not zmq.has("curve"):
        raise GDBPoolError("this libzmq has no CURVE support")
    public, secret = zmq.curve_keypair()
    base = str(args.out)
    secret_path, public_path = Path(base + ".key_secret"), Path(base + ".key")
    for path in (secret_path, public_path):
        if path.exists():
            raise GDBPoolError(f"{str(path)!r} exists: keys are never overwritten")
    body = f'curve\n    public-key = "{public.decode()}"\n'
    _create(secret_path, 0o600, _BANNER.format(kind="secret key pair: keep it private")
            + body + f'    secret-key = "{secret.decode()}"\n')  # fmt: skip
    _create(public_path, 0o644, _BANNER.format(kind="public key") + body)
    print(public.decode(), flush=True)
    return 0


def _create(path: Path, mode: int, text: str) -> None:
    """Create ``path`` with ``mode`` from the start (no window with wider permissions)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise GDBPoolError(f"cannot create {str(path)!r}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), mode)  # the umask may have narrowed it; 0600 stays 0600
        f.write(text)
