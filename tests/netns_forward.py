"""A TCP port on this host's loopback that leads to a port on the loopback of a lab network namespace.

The control plane's HTTP port listens on 127.0.0.1 inside its namespace (as it does on a real host), and
the browser of the dashboard test runs on this host: each accepted connection is joined to one opened
from a thread that entered the namespace (``setns(2)``, tests/kube_lab.py), and bytes are copied both
ways until either side closes.
"""

from __future__ import annotations

import socket
import threading

from tests.kube_lab import in_netns
from vmagent.lab.netns import Netns


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class LoopbackForward:
    """``http://127.0.0.1:{port}`` here reaches ``127.0.0.1:{target_port}`` in ``ns``; close() stops it."""

    def __init__(self, ns: Netns, target_port: int) -> None:
        self._ns, self._target = ns, target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="netns-forward", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream: socket.socket = in_netns(
                    self._ns, lambda: socket.create_connection(("127.0.0.1", self._target), timeout=10)
                )
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._listener.close()
        for s in self._open:
            s.close()
