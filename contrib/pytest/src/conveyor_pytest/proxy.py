"""A TCP proxy in front of a broker, for tests of what happens when it goes away.

Point the app at ``proxy.port`` instead of the broker's: :meth:`TcpProxy.cut` is an
outage (open connections dropped, new ones refused, the broker's data kept), and
:meth:`TcpProxy.restore` ends it on the same port, as a broker coming back would.
:meth:`TcpProxy.drop_replies` first makes the outage strike between a request and its
reply: the broker runs what it was sent, and the client never hears of it.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``(host, port)`` until :meth:`cut`."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.sockets: list[socket.socket] = []
        self.replies = True  # False: what the broker sends back is read and dropped
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._serve()

    def _serve(self) -> None:
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            self.sockets += [client, upstream]
            for a, b, reply in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pipe, args=(a, b, reply), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, reply: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if self.replies or not reply:
                    dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)

    def drop_replies(self) -> None:
        """Requests still reach the broker, which runs them; their replies are lost
        (until :meth:`cut`, which drops the connections, and :meth:`restore`)."""
        self.replies = False

    def cut(self) -> None:
        """The outage: stop listening and drop every open connection."""
        with contextlib.suppress(OSError):  # wakes the accept() and stops listening
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        sockets, self.sockets = self.sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        """The broker is back: listen again on the same port."""
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.replies = True
        self._serve()
