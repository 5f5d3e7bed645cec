"""A TCP proxy that adds a fixed latency each way, as a database on another machine would.

    with DelayProxy("127.0.0.1", 5432, delay=0.001) as proxy:
        dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/db"

Every chunk read from one side is written to the other ``delay`` seconds after it arrived (order
kept, throughput not limited): a round trip through it costs ``2 * delay`` more. It runs an asyncio
loop in a daemon thread of the process that starts it (a test, the benchmark).
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType


class DelayProxy:
    """Listen on a free loopback port and forward to ``(host, port)`` with ``delay`` s each way."""

    def __init__(self, host: str, port: int, delay: float = 0.001) -> None:
        self.target = (host, port)
        self.delay = delay
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def __enter__(self) -> DelayProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, "127.0.0.1", 0), self._loop
        ).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        server = self._server
        if server is not None:
            async def close() -> None:
                server.close()
                for task in asyncio.all_tasks():
                    if task is not asyncio.current_task():
                        task.cancel()
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def dsn(self, dsn: str) -> str:
        """``dsn`` (``postgresql://user@127.0.0.1:PORT/db``) pointed at the proxy."""
        return dsn.replace(f"127.0.0.1:{self.target[1]}/", f"127.0.0.1:{self.port}/", 1)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        last = 0.0
        try:
            while data := await reader.read(65536):
                # written by a timer `delay` after arrival; strictly later than the chunk before it
                last = max(loop.time() + self.delay, last + 1e-9)
                loop.call_at(last, writer.write, data)
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        loop.call_at(last + 1e-9, writer.close)
