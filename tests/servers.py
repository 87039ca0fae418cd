"""Run an ASGI app under a real uvicorn server on a free loopback port, in a thread of its own."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class RunningServer:
    url: str
    port: int
    server: uvicorn.Server
    loop: asyncio.AbstractEventLoop


@contextmanager
def serve(app: ASGIApp, *, startup_timeout_s: float = 120.0) -> Iterator[RunningServer]:
    """Start `app`, yield once it accepts requests (lifespan done), stop it and wait on exit."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    loop = asyncio.new_event_loop()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve())
        except BaseException as exc:  # reported to the test thread below
            failure.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if failure or not thread.is_alive():
            raise RuntimeError(f"server on port {port} failed to start") from (failure[0] if failure else None)
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"server on port {port} did not start in {startup_timeout_s} s")
        time.sleep(0.01)
    try:
        yield RunningServer(url=f"http://127.0.0.1:{port}", port=port, server=server, loop=loop)
    finally:
        server.should_exit = True
        thread.join(timeout=60)
