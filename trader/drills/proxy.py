"""A TCP fault proxy on 127.0.0.1: a drill's clients connect through it, so cutting it is a real outage for them
and for nobody else (the service behind it keeps running for the live profile).

    proxy = FaultProxy("127.0.0.1", 6379).start()   # clients use 127.0.0.1:<proxy.port>
    proxy.cut()          # every connection reset, new ones refused (ECONNREFUSED): a crashed or stopped service
    proxy.cut("blackhole")  # every connection reset, new ones accepted and never answered: a network partition
    proxy.restore()      # forwarding again on the same port
    proxy.close()

One asyncio loop in a daemon thread; each connection is two stream copies. cut() and restore() return once the
change is in effect (the listener closed or reopened, the connections aborted).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine
from typing import Any, Literal

CutMode = Literal["refuse", "blackhole"]
_CHUNK = 256 * 1024


class ProxyError(Exception):
    """The proxy could not listen (port taken) or was used after close()."""


class FaultProxy:
    """Forwards 127.0.0.1:<port> to target_host:target_port until cut(); restore() forwards again."""

    def __init__(self, target_host: str, target_port: int, *, name: str = "proxy") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.name = name
        self.host = "127.0.0.1"
        self.port = 0
        self.state: Literal["forwarding", "refuse", "blackhole", "closed"] = "forwarding"
        self.connections_total = 0
        self.connections_reset = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"fault-proxy-{name}", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._parked: set[asyncio.StreamWriter] = set()

    # --- control (any thread)

    def start(self) -> FaultProxy:
        """Listen on a free loopback port and start forwarding; returns self."""
        self._thread.start()
        with socket.socket() as probe:
            probe.bind((self.host, 0))
            self.port = int(probe.getsockname()[1])
        self._call(self._listen())
        return self

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def cut(self, mode: CutMode = "refuse") -> None:
        """Reset every open connection; then refuse new ones (listener closed) or accept and never answer them."""
        if mode not in ("refuse", "blackhole"):
            raise ValueError(f"cut mode is 'refuse' or 'blackhole' (got {mode!r})")
        self._call(self._cut(mode))

    def restore(self) -> None:
        """Forward again on the same port (parked blackholed connections are reset, clients reconnect)."""
        self._call(self._restore())

    def close(self) -> None:
        """Stop listening, reset every connection and stop the loop thread; safe to call twice."""
        if self.state == "closed" or not self._thread.is_alive():
            self.state = "closed"
            return
        self._call(self._shutdown())
        self.state = "closed"
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start() if not self._thread.is_alive() else self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        if self.state == "closed":
            coroutine.close()
            raise ProxyError(f"fault proxy {self.name} is closed")
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    # --- the loop

    async def _listen(self) -> None:
        try:
            self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        except OSError as error:
            raise ProxyError(f"fault proxy {self.name} cannot listen on {self.host}:{self.port}: {error}") from error

    async def _cut(self, mode: CutMode) -> None:
        if mode == "refuse" and self._server is not None:
            self._server.close()
            self._server = None
        elif mode == "blackhole" and self._server is None:
            await self._listen()
        self.state = mode
        self._abort_all()

    async def _restore(self) -> None:
        self.state = "forwarding"
        for writer in list(self._parked):
            self._abort(writer)
        self._parked.clear()
        if self._server is None:
            await self._listen()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._abort_all()
        for writer in list(self._parked):
            self._abort(writer)

    def _abort_all(self) -> None:
        for writer in list(self._open):
            self._abort(writer)
            self.connections_reset += 1
        self._open.clear()

    @staticmethod
    def _abort(writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            writer.transport.abort()  # RST, as a dead peer or a killed process leaves it

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_total += 1
        if self.state == "blackhole":
            self._parked.add(writer)  # never read, never answered: the client's own timeout fires
            return
        if self.state != "forwarding":
            self._abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            self._abort(writer)
            return
        if self.state != "forwarding":  # cut while connecting
            self._abort(writer)
            self._abort(up_writer)
            return
        self._open.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        for side in (writer, up_writer):
            self._open.discard(side)
            with contextlib.suppress(Exception):
                side.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            # One side closed: close the other side too (a half-open relay would hang the client).
            with contextlib.suppress(Exception):
                if writer.can_write_eof():
                    writer.write_eof()
                else:
                    writer.close()
