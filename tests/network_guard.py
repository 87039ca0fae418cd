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


def run_guarded(script: str, *args: str, timeout_s: float) -> dict[str, Any]:
    """Run `script` (which installs the guard first) in a fresh interpreter from the repository root,
    with no LITELLM_* or HF_HUB_* variables (the child must switch litellm's network features off by
    itself, whatever this process set), and return the JSON it prints on its one `RESULT ` line."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {name: value for name, value in os.environ.items() if not name.startswith(("LITELLM_", "HF_HUB_"))}
    completed = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, completed.stdout[-4000:] + completed.stderr[-4000:]
    result: dict[str, Any] = json.loads(lines[0].removeprefix("RESULT "))
    return result
