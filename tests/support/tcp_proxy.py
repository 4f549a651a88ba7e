"""A small loopback TCP proxy for fault tests (gevent-based).

``TcpProxy(target_port).start()`` listens on ``127.0.0.1:<proxy.port>`` and
forwards every connection to ``127.0.0.1:<target_port>``. Its mode simulates
the network:

* ``"pass"`` — bytes flow both ways (the default).
* ``"drop"`` — every open connection is closed at once (both sides see a
  reset/EOF), and new connections are closed as soon as they are accepted.
* ``"blackhole"`` — nothing is forwarded any more but every socket stays open,
  like a cable pulled out: peers wait until their own timeouts fire. Bytes held
  back are delivered when the mode goes back to ``"pass"`` (as TCP
  retransmission would); new connections are accepted and held too.

``proxy.dsn(dsn)`` rewrites a libpq DSN to go through the proxy.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import gevent
from gevent import socket
from gevent.event import Event
from gevent.server import StreamServer
from psycopg2.extensions import make_dsn, parse_dsn

Mode = Literal["pass", "drop", "blackhole"]

_CHUNK = 65536


class TcpProxy:
    """Forward ``127.0.0.1:port`` → ``target_host:target_port``; see the module docstring."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self._flowing = Event()
        self._flowing.set()
        self._sockets: set[socket.socket] = set()
        self._pumps: set[gevent.Greenlet] = set()
        self._server = StreamServer(("127.0.0.1", 0), self._handle)
        self.accepted = 0
        #: Chunks a pump has read and holds back (blackhole): a request is in flight.
        self.held = 0

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        return int(self._server.server_port)

    def start(self) -> TcpProxy:
        self._server.start()
        return self

    def dsn(self, dsn: str) -> str:
        """``dsn`` with host and port pointing at this proxy."""
        params = parse_dsn(dsn)
        params.update(host="127.0.0.1", port=str(self.port))
        return make_dsn(**params)

    def set_mode(self, mode: Mode) -> None:
        """Switch to ``"pass"``, ``"drop"`` or ``"blackhole"`` (see the module docstring)."""
        self.mode = mode
        if mode == "pass":
            self._flowing.set()
            return
        self._flowing.clear()
        if mode == "drop":
            self._close_all()

    def close(self) -> None:
        """Stop listening and close every socket."""
        self._server.stop(timeout=0)
        self._flowing.set()
        self._close_all()

    @property
    def open_connections(self) -> int:
        """How many client connections the proxy holds open right now."""
        return len(self._sockets) // 2

    def _close_all(self) -> None:
        for pump in list(self._pumps):
            pump.kill(block=False)
        for sock in list(self._sockets):
            _hard_close(sock)
        self._sockets.clear()

    def _handle(self, client: socket.socket, address: object) -> None:
        self.accepted += 1
        if self.mode == "drop":
            _hard_close(client)
            return
        self._sockets.add(client)
        self._flowing.wait()  # blackhole: accepted, held, never connected upstream
        if self.mode == "drop" or client not in self._sockets:
            _hard_close(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            self._sockets.discard(client)
            _hard_close(client)
            return
        upstream.settimeout(None)
        self._sockets.add(upstream)
        pumps = [
            gevent.spawn(self._pump, client, upstream),
            gevent.spawn(self._pump, upstream, client),
        ]
        self._pumps.update(pumps)
        gevent.joinall(pumps)
        self._pumps.difference_update(pumps)
        for sock in (client, upstream):
            self._sockets.discard(sock)
            _hard_close(sock)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                if not self._flowing.is_set():
                    self.held += 1
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # One side ended: end the other so the peer sees EOF too.
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                src.shutdown(socket.SHUT_RDWR)


def _hard_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
