"""Run a ``grpc.aio`` server on its own event-loop thread, for callers that are otherwise threaded."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from vmagent.common.errors import VmagentError

# Keepalive that notices dead proxies in about a minute and allows Envoy's own pings.
DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_concurrent_streams", 1_000_000),
)


class AioServerThread:
    """A ``grpc.aio.Server`` bound to ``address`` and served from a dedicated thread.

    ``configure(server)`` adds the servicers (e.g. ``AdsServer.add_to_server``) before it starts.
    Servicers with plain (non-async) methods work too: they run in a pool of ``sync_workers`` threads,
    so the certificate and registration services can share the port with ADS.
    ``credentials=None`` serves plaintext (tests only). :meth:`start` returns the bound port.
    """

    def __init__(
        self,
        address: str,
        credentials: grpc.ServerCredentials | None,
        configure: Callable[[grpc.aio.Server], None],
        options: Sequence[tuple[str, Any]] = DEFAULT_OPTIONS,
        sync_workers: int = 16,
    ) -> None:
        self._address = address
        self._credentials = credentials
        self._configure = configure
        self._options = list(options)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=sync_workers, thread_name_prefix="grpc-sync"
        )
        self._loop = asyncio.new_event_loop()
        self._server: grpc.aio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-aio", daemon=True)
        self.port = 0

    def start(self) -> int:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        try:
            self.port = fut.result(timeout=30)
        except (RuntimeError, concurrent.futures.TimeoutError) as exc:
            raise VmagentError(f"cannot serve gRPC on {self._address}: {exc}") from exc
        return self.port

    async def _start(self) -> int:
        server = grpc.aio.server(migration_thread_pool=self._pool, options=self._options)
        self._configure(server)
        if self._credentials is None:
            port = server.add_insecure_port(self._address)
        else:
            port = server.add_secure_port(self._address, self._credentials)
        await server.start()
        self._server = server
        return int(port)

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving (open streams get ``grace`` seconds) and end the thread."""
        if self._server is not None:
            fut = asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop)
            fut.result(timeout=grace + 10)
            self._server = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop
