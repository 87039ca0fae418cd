"""A network guard for a fresh interpreter: every socket call beyond loopback is recorded and
refused. Installed before anything else is imported, it proves what a process reaches on its own
(litellm's price list, telemetry, a model hub's tokenizer) without a network to reach.

Only for subprocesses: it patches the `socket` module of the process that installs it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any


def _is_loopback(host: Any) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@dataclass(slots=True)
class NetworkGuard:
    attempts: list[str] = field(default_factory=list)  # refused: anything beyond loopback
    loopback: list[str] = field(default_factory=list)  # allowed, recorded to show the guard was live

    def check(self, kind: str, address: Any) -> None:
        if isinstance(address, (str, bytes)):  # an AF_UNIX path never leaves the machine
            return
        host, port = address[0], address[1]
        if _is_loopback(host):
            self.loopback.append(f"{kind} {host}:{port}")
            return
        self.attempts.append(f"{kind} {host}:{port}")
        raise OSError(101, f"non-loopback {kind} to {host}:{port} refused by the test")


def install() -> NetworkGuard:
    guard = NetworkGuard()
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
    create_connection, getaddrinfo = socket.create_connection, socket.getaddrinfo

    def guarded_connect(self: socket.socket, address: Any) -> None:
        guard.check("connect", address)
        connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        guard.check("connect", address)
        return connect_ex(self, address)

    def guarded_create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        guard.check("create_connection", address)
        return create_connection(address, *args, **kwargs)

    def guarded_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_loopback(host):
            guard.attempts.append(f"getaddrinfo {host!r}:{port}")
            raise socket.gaierror(socket.EAI_NONAME, f"lookup of {host!r} refused by the test")
        return getaddrinfo(host, port, *args, **kwargs)

    socket.socket.connect = guarded_connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign,assignment]
    socket.create_connection = guarded_create_connection
    socket.getaddrinfo = guarded_getaddrinfo
    return guard
