"""`semcache serve` as a user runs it: a real process, a config file, the environment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.app import factory
from gateway.errors import ConfigError
from tests.conftest import Upstream
from tests.servers import free_port, serve

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
    config.write_text("upstream:\n  api_key_env: SEMCACHE_TEST_UNSET_KEY\nclients:\n  allow_anonymous: true\n")
    env = {key: value for key, value in os.environ.items() if key != "SEMCACHE_TEST_UNSET_KEY"}

    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip

    assert result.returncode == 2
    assert "SEMCACHE_TEST_UNSET_KEY is not set" in result.stderr


def test_the_gateways_own_key_without_client_keys_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("upstream:\n  api_base: https://api.openai.com/v1\n  api_key_env: OPENAI_API_KEY\n")

    result = run_cli("serve", "--config", str(config), env={"OPENAI_API_KEY": "sk-operator"})

    assert result.returncode == 2
    assert f"semcache: invalid configuration in {config}:" in result.stderr
    assert "  - clients: upstream.api_key_env is set, so the gateway would spend its own key" in result.stderr


def test_serve_runs_the_example_config_against_an_upstream(tmp_path: Path, upstream: Upstream) -> None:
    config = yaml.safe_load((REPO / "config.example.yaml").read_text())
    config["upstream"]["api_base"] = f"{upstream.url}/v1"
    for deployment in config["deployments"]:  # the simulated upstream answers as both models
        deployment["api_base"] = f"{upstream.url}/v1"
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
        assert (first.headers["x-semcache-model"], first.headers["x-semcache-route-reason"]) == ("sim-large", "pinned")
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
    # What start-up did and how long each step took, instead of seconds of silence.
    for step in ("imports done in", "embedding model loaded in", "index rebuilt with 0 entries in", "cache open in"):
        assert step in output, output


def test_version_is_the_distributions() -> None:
    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

    result = run_cli("--version")

    assert result.returncode == 0
    assert result.stdout.strip() == f"semcache {expected}"


def test_a_policy_file_with_a_problem_is_reported_like_the_config_not_as_a_traceback(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("categories:\n  - name: default\n    similarity_treshold: 0.9\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"policy: {policy.name}\ncache:\n  store: {{path: {tmp_path / 'cache.db'}}}\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"a": "x", "b": "y", "label": 1}\n')

    for args in (("serve", "--config", str(config)), ("calibrate", "--config", str(config), "--pairs", str(pairs))):
        result = run_cli(*args)

        assert result.returncode == 2, result.stderr
        assert f"semcache: invalid configuration in {policy}:" in result.stderr
        assert "categories[0].similarity_treshold: unknown key (did you mean 'similarity_threshold'?)" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_missing_policy_file_or_an_api_base_without_scheme_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("policy: missing.yaml\nupstream:\n  api_base: api.openai.com/v1\n")

    result = run_cli("serve", "--config", str(config))

    assert result.returncode == 2
    assert "upstream.api_base: must be an http:// or https:// URL" in result.stderr
    assert "Traceback" not in result.stderr
    config.write_text("policy: missing.yaml\n")
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert f"policy: no such file: {tmp_path / 'missing.yaml'}" in result.stderr


def test_the_factory_builds_the_app_from_semcache_config(
    tmp_path: Path, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `SEMCACHE_CONFIG=... uvicorn gateway.app:factory --factory --workers N` runs in each worker."""
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "upstream": {"api_base": f"{upstream.url}/v1", "api_key_env": "SEMCACHE_TEST_UPSTREAM_KEY"},
                "tenants": [{"name": "team-a", "api_key_env": "SEMCACHE_TEST_CLIENT_KEY"}],
                "cache": {"store": {"path": str(tmp_path / "cache.db")}},
            }
        )
    )
    monkeypatch.setenv("SEMCACHE_CONFIG", str(config))
    monkeypatch.setenv("SEMCACHE_TEST_UPSTREAM_KEY", "sk-upstream")
    monkeypatch.setenv("SEMCACHE_TEST_CLIENT_KEY", "sk-client")

    with serve(factory()) as running:
        assert httpx.get(f"{running.url}/readyz", timeout=30).status_code == 200
        request = {"model": "sim-large", "messages": [{"role": "user", "content": "What is a semantic cache?"}]}
        refused = httpx.post(f"{running.url}/v1/chat/completions", json=request, timeout=30)
        served = httpx.post(
            f"{running.url}/v1/chat/completions", json=request, headers={"authorization": "Bearer sk-client"},
            timeout=30,
        )  # fmt: skip

    assert refused.status_code == 401  # the secrets were read: the listed key is the only way in
    assert served.status_code == 200
    assert served.headers["x-semcache"] == "miss"


def test_the_factory_says_which_variable_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEMCACHE_CONFIG", raising=False)

    with pytest.raises(ConfigError) as raised:
        factory()

    assert raised.value.problems == ["SEMCACHE_CONFIG: set it to the path of the gateway's YAML config"]


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


def test_simulate_upstream_takes_its_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["simulate-upstream", "--port", "not-a-port", "--capacity", "3"])

    assert exited.value.code == 2
    assert "argument --port: invalid int value: 'not-a-port'" in capsys.readouterr().err
