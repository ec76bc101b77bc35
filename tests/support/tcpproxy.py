"""A TCP proxy on loopback that can freeze: stop forwarding, both ways, without closing.

What a client sees of a frozen path is what it sees of a network that drops packets or a
server that hangs: its connection stays open, what it sends is taken (by the proxy's
kernel), and no answer ever comes; new connections are accepted and hang the same way.
TCP keepalives and ``tcp_user_timeout`` do not end such a connection (the proxy's kernel
acknowledges everything): only the client's own deadline does. :meth:`TcpProxy.thaw`
forwards again, everything held included, in order.

Usage::

    with TcpProxy(("127.0.0.1", 5432)) as proxy:
        url = f"postgresql://...@127.0.0.1:{proxy.port}/db"
        proxy.freeze(); ...; proxy.thaw()
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Self

from tests.support.processes import LOOPBACK

CHUNK = 65536


class TcpProxy:
    """Forwards every connection to ``upstream``; :meth:`freeze` and :meth:`thaw` the path."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, name="tcpproxy", daemon=True)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> Self:
        self._accepting.start()
        return self

    def freeze(self) -> None:
        """Stop forwarding (both ways, on every connection, new ones too); close nothing."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Forward again, what was held first."""
        self._flowing.set()

    @property
    def frozen(self) -> bool:
        return not self._flowing.is_set()

    def close(self) -> None:
        """Close the listener and every connection."""
        self._closed.set()
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._flowing.wait()  # a frozen path does not reach the server either
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        with self._lock:
            if self._closed.is_set():
                client.close()
                server.close()
                return
            self._sockets += [client, server]
        for source, target in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        """Copy one direction; a chunk read while frozen waits until the thaw."""
        try:
            while True:
                self._flowing.wait()
                data = source.recv(CHUNK)
                if not data:
                    break
                self._flowing.wait()
                target.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
