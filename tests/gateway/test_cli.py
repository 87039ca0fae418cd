"""`semcache serve` as a user runs it: a real process, a config file, the environment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tests.conftest import Upstream
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_invalid_config_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("cache:\n  similarity_threshold: 1.4\n  ttl: 5\nserver:\n  port: high\n")

    result = run_cli("serve", "--config", str(config))

    assert result.returncode == 2
    assert "cache.similarity_threshold: must be in (0, 1], got 1.4" in result.stderr
    assert "cache.ttl: unknown key (did you mean 'ttl_s'?)" in result.stderr
    assert "server.port: must be an integer" in result.stderr


def test_missing_secret_is_reported_before_serving(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("upstream:\n  api_key_env: SEMCACHE_TEST_UNSET_KEY\n")
    env = {key: value for key, value in os.environ.items() if key != "SEMCACHE_TEST_UNSET_KEY"}

    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip

    assert result.returncode == 2
    assert "SEMCACHE_TEST_UNSET_KEY is not set" in result.stderr


def test_serve_runs_the_example_config_against_an_upstream(tmp_path: Path, upstream: Upstream) -> None:
    config = yaml.safe_load((REPO / "config.example.yaml").read_text())
    config["upstream"]["api_base"] = f"{upstream.url}/v1"
    config["cache"]["store"]["path"] = str(tmp_path / "cache.db")
    config["policy"] = str(REPO / config["policy"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, "the gateway exited during start-up"
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway did not become ready"
            time.sleep(0.2)
        request = {"model": "sim-large", "messages": [{"role": "user", "content": "What is a semantic cache?"}]}
        first = httpx.post(f"{url}/v1/chat/completions", json=request, timeout=30)
        assert first.status_code == 200
        assert first.headers["x-semcache"] == "miss"
        for _ in range(100):  # stored in the background once the answer is out
            second = httpx.post(f"{url}/v1/chat/completions", json=request, timeout=30)
            if second.headers["x-semcache"] == "exact":
                break
        assert second.headers["x-semcache"] == "exact"
        assert second.json()["choices"] == first.json()["choices"]
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=60)
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells how it ended.
    assert process.returncode in (0, -15), output
    assert "Application shutdown complete" in output


def write_calibration_inputs(tmp_path: Path) -> tuple[Path, Path]:
    from tests.gateway.tools.test_calibrate import write_pairs

    write_pairs(tmp_path / "pairs.jsonl")
    config = tmp_path / "config.yaml"
    config.write_text("cache:\n  similarity_threshold: 0.99  # strict until calibrated\n  ttl_s: 600\n")
    return config, tmp_path / "pairs.jsonl"


def test_calibrate_writes_a_policy_the_gateway_loads_as_it_is(tmp_path: Path) -> None:
    from gateway.config import load_config
    from policies import load_policy

    config, pairs = write_calibration_inputs(tmp_path)
    out = tmp_path / "calib"

    result = run_cli("calibrate", "--config", str(config), "--pairs", str(pairs), "--target-precision", "0.8",
                     "--confidence", "0.9", "--out", str(out))  # fmt: skip

    assert result.returncode == 0, result.stderr
    policy = load_policy(out / "policy.yaml")
    assert policy.default.similarity_threshold < 0.99  # calibrated, not the config's
    assert policy.default.ttl_s == 600  # the rest as the config's cache section had it
    assert f"policy: {(out / 'policy.yaml').resolve()}" in result.stderr
    # Pointed at as the message says, the gateway's config loads it.
    (tmp_path / "calibrated.yaml").write_text(f"policy: {out / 'policy.yaml'}\n")
    assert load_config(tmp_path / "calibrated.yaml").policy == str((out / "policy.yaml").resolve())
    if (out / "verifier.json").exists():
        assert f"verifier: {(out / 'verifier.json').resolve()}" in result.stderr


def test_calibrate_at_an_unreachable_target_says_what_is_reachable(tmp_path: Path) -> None:
    config, pairs = write_calibration_inputs(tmp_path)
    pairs.write_text("\n".join(pairs.read_text().splitlines()[:6]))
    out = tmp_path / "calib"

    result = run_cli("calibrate", "--config", str(config), "--pairs", str(pairs), "--out", str(out))

    assert result.returncode == 1
    assert "target not reachable; the best these pairs allow is precision lower bound" in result.stdout
    assert "of true duplicates" in result.stdout
    assert "nothing could be calibrated at precision >= 0.95" in result.stderr
    assert "nothing was written" in result.stderr
    assert not (out / "policy.yaml").exists()
