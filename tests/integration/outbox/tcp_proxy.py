"""A loopback TCP proxy whose connections a test can cut: a real connection loss between a
client and a real broker, the same for every broker (none of them offers a uniform way to drop
one client's connection from the server side). It can also stall: the connections stay open but
nothing the server sends reaches the client (a broker that takes messages and never confirms)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading


class TcpProxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._flow: asyncio.Event | None = None  # set while data flows; made on the proxy's loop
        self.cuts = 0

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        if not self._started.wait(5):
            raise RuntimeError("the proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def cut(self) -> None:
        """Close every connection open now (new ones are accepted again at once)."""
        done = threading.Event()

        def close_all() -> None:
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()
            done.set()

        self._loop.call_soon_threadsafe(close_all)
        done.wait(5)
        self.cuts += 1

    def stall(self) -> None:
        """From now on hold back what servers send (clients keep sending): until :meth:`resume`."""
        self._set_flowing(False)

    def resume(self) -> None:
        self._set_flowing(True)

    def _set_flowing(self, flowing: bool) -> None:
        done = threading.Event()

        def switch() -> None:
            assert self._flow is not None
            if flowing:
                self._flow.set()
            else:
                self._flow.clear()
            done.set()

        self._loop.call_soon_threadsafe(switch)
        done.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._flow = asyncio.Event()
        self._flow.set()
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       downstream: bool) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    if downstream and self._flow is not None:
                        await self._flow.wait()
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))
        self._writers.difference_update((writer, up_writer))
