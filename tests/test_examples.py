"""Every example runs, as a user would run it (`python examples/<name>.py` from the repository root),
and says what it should. Each starts its own servers on free loopback ports and downloads nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("examples/proxy_in_front_of_upstream.py", ["'x-semcache': 'miss'", "'x-semcache': 'hit'", "miss then hit"]),
        ("examples/library_api.py", ["outcomes: miss, hit, miss"]),
        ("examples/litellm_sdk.py", ["cache_hit: True", "cache hits: [False, True]; upstream called 1 time(s)"]),
    ],
)
def test_example_runs(script: str, expected: list[str]) -> None:
    result = run_example(script)
    assert result.returncode == 0, result.stdout + result.stderr
    for line in expected:
        assert line in result.stdout


def test_fastapi_middleware_demo() -> None:
    result = run_example("examples/fastapi_middleware.py", "--demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(streamed)" in result.stdout
    assert "outcomes: miss, hit, hit; the endpoint itself ran 1 time(s)" in result.stdout


def test_litellm_proxy_config_installs_the_cache_through_litellms_own_loader(tmp_path: Path) -> None:
    """The LiteLLM proxy itself is not installed here: its config is checked for shape, and the
    callback module it names is loaded the way the proxy loads it (litellm's `get_instance_fn`,
    relative to the config file)."""
    config_path = EXAMPLES / "litellm_proxy_config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    settings = config["litellm_settings"]
    assert settings["callbacks"] == ["litellm_proxy_semcache.semcache_headers"]
    assert "cache" not in settings  # would make the proxy replace semcache with a cache of its own
    assert {entry["model_name"] for entry in config["model_list"]} >= {"sim-large"}
    semcache_config = tmp_path / "semcache.yaml"
    semcache_config.write_text(f"cache:\n  store:\n    path: {tmp_path / 'cache.db'}\n", encoding="utf-8")
    check = textwrap.dedent(
        f"""
        from gateway.upstream import import_litellm
        litellm = import_litellm()
        from litellm.proxy.types_utils.utils import get_instance_fn
        hook = get_instance_fn({settings["callbacks"][0]!r}, config_file_path={str(config_path)!r})
        print(type(hook).__name__, type(litellm.cache.cache).__name__)
        """
    )

    result = run_example("-c", check, env={"SEMCACHE_CONFIG": str(semcache_config)})

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["SemanticCacheHeaders", "LiteLLMSemanticCache"]
