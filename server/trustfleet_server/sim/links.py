"""How the coordinator talks to its workers: in its own event loop, or in a spawned process over a pipe."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import time
from typing import Any

from trustfleet_server.errors import UsageError
from trustfleet_server.sim.config import SimConfig
from trustfleet_server.sim.worker import Worker


def _worker_main(cfg: SimConfig, lo: int, hi: int, conn: Any) -> None:
    """Entry point of a worker process: serve snapshot requests until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when to stop
    asyncio.run(_serve(cfg, lo, hi, conn))


async def _serve(cfg: SimConfig, lo: int, hi: int, conn: Any) -> None:
    worker = Worker(cfg, lo, hi)
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()

    def readable() -> None:
        try:
            inbox.put_nowait(conn.recv())
        except (EOFError, OSError):
            inbox.put_nowait(("stop", False))
            loop.remove_reader(conn.fileno())

    loop.add_reader(conn.fileno(), readable)
    try:
        await worker.start()
        conn.send(("started", None))
        while True:
            cmd, arg = await inbox.get()
            if cmd == "snapshot":
                conn.send(("snapshot", worker.snapshot()))
            elif cmd == "rows":
                conn.send(("rows", worker.rows()))
            elif cmd == "probe":
                conn.send(("probe", worker.probe(*arg)))
            elif cmd == "stop":
                final = await worker.stop(clear=bool(arg))
                with contextlib.suppress(OSError):
                    conn.send(("final", final))
                return
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(conn.fileno())


class LocalLink:
    """A worker in the coordinator's own event loop (processes=1)."""

    def __init__(self, cfg: SimConfig, lo: int, hi: int) -> None:
        self.worker = Worker(cfg, lo, hi)

    async def start(self) -> None:
        await self.worker.start()

    async def snapshot(self) -> dict:
        return self.worker.snapshot()

    async def rows(self) -> list[tuple]:
        return self.worker.rows()

    async def probe(self, host: str, port: int, servername: str) -> list[tuple]:
        return self.worker.probe(host, port, servername)

    async def stop(self, clear: bool) -> dict:
        return await self.worker.stop(clear)

    def kill(self) -> None:
        pass


class ProcessLink:
    """A worker process, spoken to over a pipe (one request, one answer)."""

    TIMEOUT = 60.0

    def __init__(self, cfg: SimConfig, lo: int, hi: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(cfg, lo, hi, child), daemon=True,
                                name=f"trustfleet-simulate-{lo}-{hi}")
        self._child = child
        self.lo, self.hi = lo, hi

    async def _recv(self, timeout: float) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            if self.conn.poll():
                try:
                    return self.conn.recv()
                except EOFError:
                    break
            if not self.proc.is_alive():
                break
            if time.monotonic() > deadline:
                raise UsageError(f"worker for devices {self.lo}..{self.hi - 1} did not answer "
                                   f"within {timeout:.0f} s")
            await asyncio.sleep(0.01)
        raise UsageError(f"worker for devices {self.lo}..{self.hi - 1} exited "
                           f"(code {self.proc.exitcode})")

    async def start(self) -> None:
        self.proc.start()
        self._child.close()
        kind, _ = await self._recv(self.TIMEOUT)
        if kind != "started":
            raise UsageError(f"worker {self.lo}..{self.hi - 1}: unexpected {kind!r}")

    async def snapshot(self) -> dict:
        self.conn.send(("snapshot", None))
        kind, value = await self._recv(self.TIMEOUT)
        return value

    async def rows(self) -> list[tuple]:
        return await self._ask("rows", None)

    async def probe(self, host: str, port: int, servername: str) -> list[tuple]:
        return await self._ask("probe", (host, port, servername))

    async def _ask(self, cmd: str, arg: Any) -> Any:
        self.conn.send((cmd, arg))
        kind, value = await self._recv(self.TIMEOUT)
        if kind != cmd:
            raise UsageError(f"worker {self.lo}..{self.hi - 1}: {kind!r} answered {cmd!r}")
        return value

    async def stop(self, clear: bool) -> dict:
        try:
            self.conn.send(("stop", clear))
            kind, value = await self._recv(self.TIMEOUT)
        finally:
            self.proc.join(10)
            self.kill()
        return value

    def kill(self) -> None:
        if self.proc.pid is not None and self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)
        with contextlib.suppress(OSError):
            self.conn.close()
