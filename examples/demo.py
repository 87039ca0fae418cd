"""The README's demo (`make demo`): a SIMULATED upstream LLM, the gateway in front of it, and a short
replay of prompts with paraphrases, sent through the official `openai` SDK.

    .venv/bin/python examples/demo.py [--upstream-port 9000] [--gateway-port 8080] [--latency-ms 400]

The upstream is gateway/http/simulated_upstream.py: a stand-in for a real LLM that answers with text
derived from the question after an artificial delay, so that cache hits are visibly faster. The
gateway runs as `semcache serve` with config.example.yaml, rewritten into a temporary file with the
chosen ports and a fresh SQLite path, so every demo starts with an empty cache. Both processes are
stopped on the way out, also on Ctrl-C or an error. Exit status: 0 on success, 1 when a server does
not come up or a request fails, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = ROOT / "config.example.yaml"

# What a user might send in a few minutes: questions, a paraphrase of each, one exact repeat, a
# near neighbour that asks something different, and unrelated prompts.
REPLAY = [
    "How do I reverse a list in Python?",
    "What is the way to reverse a Python list?",
    "How do I reverse a list in Python?",
    "How do I reverse a string in Python?",
    "What is the capital city of Australia?",
    "Which city is the capital of Australia?",
    "Explain the difference between TCP and UDP.",
    "What are the main differences between UDP and TCP?",
    "Write a haiku about autumn leaves.",
    "How can I improve my sleep quality?",
    "How can I improve the quality of my sleep?",
    "Suggest a name for a bakery that sells only croissants.",
]


class DemoError(Exception):
    """A server did not come up, or a request through the gateway failed."""


@dataclass(frozen=True, slots=True)
class Row:
    prompt: str
    outcome: str
    similarity: str
    latency_ms: float
    answer: str
    model: str = "-"  # x-semcache-model: the deployment that answered a miss
    route: str = "-"  # x-semcache-route-reason


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def write_config(directory: Path, *, upstream_port: int, gateway_port: int) -> Path:
    """config.example.yaml with the demo's ports and a fresh store, so the demo always starts cold."""
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    config["server"]["port"] = gateway_port
    config["upstream"]["api_base"] = f"http://127.0.0.1:{upstream_port}/v1"
    for deployment in config.get("deployments") or ():  # the simulated upstream answers as each model
        deployment["api_base"] = f"http://127.0.0.1:{upstream_port}/v1"
    config["cache"]["store"]["path"] = str(directory / "cache.db")
    if config.get("policy"):  # relative to the config file, which now lives in the temporary folder
        config["policy"] = str((EXAMPLE_CONFIG.parent / config["policy"]).resolve())
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def semcache_command() -> list[str]:
    script = Path(sys.executable).parent / "semcache"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


@contextlib.contextmanager
def running(name: str, command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start `command` with its output in `log`; stop it (SIGTERM, then SIGKILL) on the way out."""
    with log.open("wb") as out:
        # A session of its own: Ctrl-C reaches only the demo, which then stops the servers in order.
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in 20 s: killing it", file=sys.stderr)
                process.kill()
                process.wait()


def log_tail(path: Path, lines: int = 20) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def wait_ready(name: str, url: str, process: subprocess.Popen[bytes], log: Path, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(f"{name} exited with status {process.returncode}:\n{log_tail(log)}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise DemoError(f"{name} was not ready at {url} after {timeout_s:.0f} s:\n{log_tail(log)}")


def replay(gateway_url: str, model: str, prompts: Sequence[str]) -> list[Row]:
    from openai import OpenAI, OpenAIError

    client = OpenAI(base_url=f"{gateway_url}/v1", api_key="demo-key", max_retries=0, timeout=60)
    rows = []
    try:
        for prompt in prompts:
            started = time.perf_counter()
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model=model, messages=[{"role": "user", "content": prompt}]
                )
                completion = raw.parse()
            except OpenAIError as exc:
                raise DemoError(f"the request {prompt!r} failed: {exc}") from exc
            latency_ms = (time.perf_counter() - started) * 1000
            outcome = raw.headers.get("x-semcache")
            if outcome is None:
                raise DemoError(f"{gateway_url} answered without an x-semcache header: is it the gateway?")
            rows.append(
                Row(
                    prompt=prompt,
                    outcome=outcome,
                    similarity=raw.headers.get("x-semcache-similarity", "-"),
                    latency_ms=latency_ms,
                    answer=" ".join((completion.choices[0].message.content or "").split()),
                    model=raw.headers.get("x-semcache-model", "-"),
                    route=raw.headers.get("x-semcache-route-reason", "-"),
                )
            )
            time.sleep(0.1)  # a replay, not a load test; also lets the previous answer be stored
    finally:
        client.close()
    return rows


def snippet(answer: str) -> str:
    """The simulated upstream's answers start with boilerplate; keep the part that names the question."""
    if answer.startswith("Simulated answer from") and " to: " in answer:
        return "(simulated) answer to: " + answer.split(" to: ", 1)[1]
    return answer


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(rows: Sequence[Row]) -> None:
    headers = ("prompt", "x-semcache", "similarity", "latency ms", "model (route reason)", "answer snippet")
    cells = [
        (clip(r.prompt, 52), r.outcome, r.similarity, f"{r.latency_ms:.0f}",
         "-" if r.model == "-" else f"{r.model} ({r.route})", clip(snippet(r.answer), 56))
        for r in rows
    ]  # fmt: skip
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    right = {2, 3}

    def line(values: Sequence[str]) -> str:
        return " | ".join(
            v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
        )

    print(line(headers))
    print("-+-".join("-" * w for w in widths))
    for values in cells:
        print(line(values))


def summarize(rows: Sequence[Row]) -> None:
    served = [r for r in rows if r.outcome in ("hit", "exact")]
    forwarded = [r for r in rows if r.outcome not in ("hit", "exact")]
    print()
    print(f"{len(served)} of {len(rows)} requests were answered from the cache without calling the upstream.")
    if served and forwarded:
        print(
            f"median latency: {statistics.median(r.latency_ms for r in served):.0f} ms from the cache, "
            f"{statistics.median(r.latency_ms for r in forwarded):.0f} ms through to the simulated upstream."
        )
    print("Answers name the prompt they were generated for: a hit shows the stored question it reused.")


def run(args: argparse.Namespace) -> int:
    for name, port in (("upstream", args.upstream_port), ("gateway", args.gateway_port)):
        if not port_is_free(port):
            raise DemoError(f"port {port} for the {name} is in use; pick another with --{name}-port")
    upstream_url = f"http://127.0.0.1:{args.upstream_port}"
    gateway_url = f"http://127.0.0.1:{args.gateway_port}"
    with tempfile.TemporaryDirectory(prefix="semcache-demo-") as tmp:
        directory = Path(tmp)
        config = write_config(directory, upstream_port=args.upstream_port, gateway_port=args.gateway_port)
        loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
        # Routed when the config declares a route (misses go to the small or large model by category and load).
        models = loaded.get("routes") or loaded["upstream"].get("models") or ["sim-large"]
        upstream_log, gateway_log = directory / "upstream.log", directory / "gateway.log"
        upstream_cmd = [sys.executable, "-m", "gateway.http.simulated_upstream"]
        upstream_cmd += ["--port", str(args.upstream_port), "--latency-ms", str(args.latency_ms)]
        gateway_cmd = [*semcache_command(), "serve", "--config", str(config), "--port", str(args.gateway_port)]
        print(f"upstream: SIMULATED stand-in for a real LLM (gateway/http/simulated_upstream.py) at {upstream_url},")
        print(f"          answering every request after {args.latency_ms:.0f} ms of artificial latency")
        print(f"gateway:  semcache serve (config.example.yaml, fresh cache) at {gateway_url}")
        with (
            running("the simulated upstream", upstream_cmd, upstream_log) as upstream,
            running("the gateway", gateway_cmd, gateway_log) as gateway,
        ):
            wait_ready("the simulated upstream", f"{upstream_url}/v1/models", upstream, upstream_log, timeout_s=60)
            print("waiting for the gateway to load its embedding model...", flush=True)
            wait_ready("the gateway", f"{gateway_url}/readyz", gateway, gateway_log, timeout_s=args.startup_timeout_s)
            print(f"replaying {len(REPLAY)} prompts through the openai SDK (model {models[0]}):\n")
            rows = replay(gateway_url, models[0], REPLAY)
            print_table(rows)
            summarize(rows)
            print("\nstopping the gateway and the simulated upstream")
    return 0


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally` blocks that stop the servers


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream-port", type=int, default=9000)
    parser.add_argument("--gateway-port", type=int, default=8080)
    parser.add_argument("--latency-ms", type=float, default=400.0, help="the simulated upstream's delay")
    parser.add_argument("--startup-timeout-s", type=float, default=180.0, help="how long to wait for the gateway")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return run(args)
    except DemoError as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: the servers were stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
