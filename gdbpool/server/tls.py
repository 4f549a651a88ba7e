"""A throwaway certificate authority and server certificate for ``EmbeddedPostgres(ssl=True)``.

Made with the ``openssl`` command (decision: it is on every machine that has
PostgreSQL's server binaries, which link it; the ``cryptography`` package
would be a new dependency for a test-and-demo feature). One run makes:

* a CA (EC P-256, 10 years, ``CA:TRUE``) whose private key lives only in a
  temporary directory for the few milliseconds it signs, then is deleted, so
  nothing can ever sign another certificate with it;
* a server key (EC P-256, mode 0600, owned by the server user, as PostgreSQL
  requires) and certificate for ``CN=localhost`` with subjectAltNames
  ``IP:127.0.0.1`` and ``DNS:localhost``, so ``sslmode=verify-full`` passes
  for the address the server listens on (libpq matches IP SANs since 14).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from gdbpool.errors import EmbeddedPostgresError
from gdbpool.server.binaries import chown_to_server

__all__ = ["CA_FILE", "CERT_FILE", "KEY_FILE", "make_certificates"]

#: File names inside the data directory.
CA_FILE, CERT_FILE, KEY_FILE = "gdbpool-root.crt", "server.crt", "server.key"

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise EmbeddedPostgresError(
            "EmbeddedPostgres(ssl=True) needs the openssl command on PATH to make its certificates"
        )
    try:
        proc = subprocess.run(
            [exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedPostgresError("openssl timed out making the server certificate") from exc
    if proc.returncode != 0:
        raise EmbeddedPostgresError(f"openssl {args[0]} failed: {proc.stderr.strip()[-500:]}")


def make_certificates(data_dir: Path) -> Path:
    """Write the CA and server files into ``data_dir`` (kept if there); return the CA file."""
    ca_file, cert_file, key_file = (data_dir / n for n in (CA_FILE, CERT_FILE, KEY_FILE))
    if ca_file.exists() and cert_file.exists() and key_file.exists():
        return ca_file  # a kept cluster: its certificates are reused
    with tempfile.TemporaryDirectory(prefix="gdbpool-tls-") as tmp:
        work = Path(tmp)
        _openssl("req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
                 "-subj", "/CN=gdbpool embedded PostgreSQL CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=work)  # fmt: skip
        _openssl("req", *_EC, "-keyout", "server.key", "-out", "server.csr",
                 "-subj", "/CN=localhost", cwd=work)  # fmt: skip
        (work / "ext.cnf").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
        )
        _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "3650",
                 "-extfile", "ext.cnf", "-out", "server.crt", cwd=work)  # fmt: skip
        for name, target, mode in (
            ("server.key", key_file, 0o600),
            ("server.crt", cert_file, 0o644),
            ("ca.crt", ca_file, 0o644),
        ):
            shutil.copyfile(work / name, target)
            os.chmod(target, mode)
            chown_to_server(target)
    return ca_file
