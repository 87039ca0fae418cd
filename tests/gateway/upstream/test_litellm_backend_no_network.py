"""The litellm upstream: it reaches nothing but the configured upstream, and its errors keep their status.

litellm downloads a price list and sends telemetry by default. `import_litellm` switches both off;
a fresh interpreter proves it, with every socket call beyond loopback recorded and refused. The
same run takes the upstream through its failures (429, 500, a stall past the timeout, a closed port),
so litellm's process-wide state never mixes with the test process's event loops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from examples.simulated_upstream import UpstreamState, create_upstream_app
from gateway.errors import UpstreamError
from gateway.upstream import translate_error
from tests.servers import free_port, serve

REPO = Path(__file__).resolve().parents[3]
PROMPT = "How do I reverse a list in Python?"

# argv[1]: the simulated upstream's URL; argv[2]: JSON list of scenarios {name, faults, timeout_s, api_base?}.
SCRIPT = r"""
import ipaddress, json, socket, sys

attempts, loopback = [], []


def _is_loopback(host):
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _guard(kind, address):
    if isinstance(address, (str, bytes)):  # an AF_UNIX path never leaves the machine
        return
    host, port = address[0], address[1]
    if _is_loopback(host):
        loopback.append(f"{kind} {host}:{port}")
        return
    attempts.append(f"{kind} {host}:{port}")
    raise OSError(101, f"non-loopback {kind} to {host}:{port} refused by the test")


_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
_create_connection, _getaddrinfo = socket.create_connection, socket.getaddrinfo


def connect(self, address):
    _guard("connect", address)
    return _connect(self, address)


def connect_ex(self, address):
    _guard("connect", address)
    return _connect_ex(self, address)


def create_connection(address, *args, **kwargs):
    _guard("create_connection", address)
    return _create_connection(address, *args, **kwargs)


def getaddrinfo(host, port, *args, **kwargs):
    if not _is_loopback(host):
        attempts.append(f"getaddrinfo {host!r}:{port}")
        raise socket.gaierror(socket.EAI_NONAME, f"lookup of {host!r} refused by the test")
    return _getaddrinfo(host, port, *args, **kwargs)


socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
socket.create_connection, socket.getaddrinfo = create_connection, getaddrinfo

import asyncio

from gateway.upstream import import_litellm

import_litellm()

import httpx

from gateway.config import UpstreamConfig
from gateway.errors import UpstreamError
from gateway.upstream import LiteLLMUpstream
from gateway.wire import parse_chat_request

url, scenarios = sys.argv[1], json.loads(sys.argv[2])


async def main():
    results = {}
    async with httpx.AsyncClient() as control:
        for scenario in scenarios:
            (await control.post(f"{url}/control", json=scenario["faults"])).raise_for_status()
            config = UpstreamConfig(api_base=scenario.get("api_base", f"{url}/v1"), timeout_s=scenario["timeout_s"])
            upstream = LiteLLMUpstream(config)
            request = parse_chat_request(
                {"model": "sim-large", "messages": [{"role": "user", "content": scenario["prompt"]}]}
            )
            try:
                results[scenario["name"]] = {"response": await upstream.complete(request, api_key="sk-caller")}
            except UpstreamError as exc:
                results[scenario["name"]] = {
                    "status": exc.status_code,
                    "type": exc.error_type,
                    "message": exc.message,
                    "body": exc.body(),
                }
    await upstream.aclose()
    return results


results = asyncio.run(main())
print("RESULT " + json.dumps({"results": results, "non_loopback": attempts, "loopback": loopback}))
"""


@dataclass(frozen=True, slots=True)
class Run:
    results: dict[str, dict[str, Any]]
    non_loopback: list[str]
    loopback: list[str]
    received: list[dict[str, Any]]


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    closed_port = free_port()
    scenarios = [
        {"name": "ok", "faults": {}, "timeout_s": 10, "prompt": PROMPT},
        {"name": "429", "faults": {"status": 429, "times": 1}, "timeout_s": 10, "prompt": "rate limited"},
        {"name": "500", "faults": {"status": 500, "times": 1}, "timeout_s": 10, "prompt": "server error"},
        {"name": "stall", "faults": {"stall_s": 2, "times": 1}, "timeout_s": 0.3, "prompt": "stalled"},
        {
            "name": "closed",
            "faults": {},
            "timeout_s": 5,
            "prompt": "nobody listens",
            "api_base": f"http://127.0.0.1:{closed_port}/v1",
        },
    ]
    # The child must switch litellm's network features off by itself, whatever this process set.
    env = {name: value for name, value in os.environ.items() if not name.startswith("LITELLM_")}
    state = UpstreamState()
    with serve(create_upstream_app(state)) as upstream:
        completed = subprocess.run(
            [sys.executable, "-c", SCRIPT, upstream.url, json.dumps(scenarios)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert completed.returncode == 0, completed.stderr[-4000:]
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, completed.stdout[-4000:] + completed.stderr[-4000:]
    report = json.loads(lines[0].removeprefix("RESULT "))
    yield Run(
        results=report["results"],
        non_loopback=report["non_loopback"],
        loopback=report["loopback"],
        received=list(state.received),
    )


def test_litellm_reaches_nothing_beyond_loopback(run: Run) -> None:
    assert run.non_loopback == []
    # The recorder was live: it saw the real connections to the simulated upstream.
    assert any(entry.startswith("connect 127.0.0.1:") for entry in run.loopback)


def test_a_completion_through_litellm_succeeds(run: Run) -> None:
    response = run.results["ok"]["response"]

    assert response["object"] == "chat.completion"
    assert response["model"] == "sim-large"
    (choice,) = response["choices"]
    assert choice["finish_reason"] == "stop"
    answer = f"Simulated answer from sim-large (turns=1, t=None) to: {PROMPT}"
    assert choice["message"] == {"role": "assistant", "content": answer}
    # The upstream's own token accounting (words, in the simulation) comes through unchanged.
    assert response["usage"] == {
        "prompt_tokens": len(PROMPT.split()),
        "completion_tokens": len(answer.split()),
        "total_tokens": len(PROMPT.split()) + len(answer.split()),
    }


def test_the_upstream_receives_the_request_as_sent(run: Run) -> None:
    first = run.received[0]

    assert first["model"] == "sim-large"  # litellm's provider prefix is not forwarded
    assert first["messages"] == [{"role": "user", "content": PROMPT}]
    assert not first.get("stream")
    # ok, 429, 500 and the stall reached the upstream; the closed port did not.
    assert [body["messages"][0]["content"] for body in run.received] == [
        PROMPT,
        "rate limited",
        "server error",
        "stalled",
    ]


def test_upstream_429_stays_a_429_rate_limit_error(run: Run) -> None:
    result = run.results["429"]

    assert result["status"] == 429
    assert result["type"] == "rate_limit_error"
    assert result["message"] == "simulated failure 429"
    assert result["body"]["error"]["type"] == "rate_limit_error"


def test_upstream_500_stays_a_500(run: Run) -> None:
    result = run.results["500"]

    assert result["status"] == 500
    assert result["type"] == "upstream_error"
    assert "simulated failure 500" in result["message"]


def test_a_stall_past_the_timeout_is_a_504(run: Run) -> None:
    result = run.results["stall"]

    assert result["status"] == 504
    assert result["type"] == "timeout"


def test_an_unreachable_upstream_is_a_502(run: Run) -> None:
    result = run.results["closed"]

    assert result["status"] == 502
    assert result["type"] == "upstream_error"
    assert result["message"].startswith("upstream unreachable")


class StatusError(Exception):
    """An exception shaped like litellm's: a status code and a prefixed message."""

    def __init__(self, message: str, status_code: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class APITimeout(Exception):
    pass


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (429, "rate_limit_error"),
        (500, "upstream_error"),
        (503, "upstream_error"),
    ],
)
def test_translate_error_keeps_the_upstream_status(status: int, error_type: str) -> None:
    error = translate_error(StatusError("litellm.SomeError: SomeError: OpenAIException - the reason", status))

    assert isinstance(error, UpstreamError)
    assert (error.status_code, error.error_type) == (status, error_type)
    assert error.message == "the reason"


@pytest.mark.parametrize("status", [None, 200, 302, "429"])
def test_translate_error_without_an_error_status_is_a_502(status: Any) -> None:
    error = translate_error(StatusError("connection refused", status))

    assert (error.status_code, error.error_type) == (502, "upstream_error")
    assert error.message == "upstream unreachable: connection refused"


def test_translate_error_of_a_timeout_is_a_504() -> None:
    error = translate_error(APITimeout("litellm.Timeout: APITimeoutError - Request timed out."))

    assert (error.status_code, error.error_type) == (504, "timeout")
    assert error.message.startswith("upstream timed out")
