"""Shutting a connection's socket down: the one way gdbpool aborts I/O it cannot cancel."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

import psycopg2

__all__ = ["shutdown_socket"]


def shutdown_socket(conn: Any) -> None:
    """Shut the connection's socket down: its pending I/O fails at once, no cancel sent.

    Works on a duplicate of the descriptor, so the connection still owns (and
    later closes) its own; a connection already closed is left alone.
    """
    try:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
    except (OSError, psycopg2.Error):
        return
    try:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()
