"""Configuration: typed, validated from YAML, every problem reported at once with its YAML path."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import GatewayConfig, embedder_spec, load_config, parse_config, resolve_secrets
from gateway.errors import ConfigError

# Hypothesis' deadline and slow-generation check time the machine: speed lives in bench/, not here.
untimed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"


def problems_of(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(data, source="semcache.yaml")
    assert raised.value.source == "semcache.yaml"
    assert str(raised.value).startswith("semcache.yaml: ")
    return raised.value.problems


def test_the_example_config_loads() -> None:
    config = load_config(EXAMPLE)

    assert config.server.port == 8080
    assert config.upstream.api_base == "http://127.0.0.1:9000/v1"
    assert config.upstream.models == ("sim-large", "sim-small")
    assert config.upstream.api_key_env is None
    assert config.embedding.model == "packaged:all-MiniLM-L6-v2"
    assert config.cache.similarity_threshold == 0.85
    assert config.cache.store.kind == "sqlite"
    assert config.cache.store.path == ".semcache/cache.db"
    assert config.tenants == ()
    assert [(d.name, d.tier, d.model) for d in config.deployments] == [
        ("sim-small", "small", "openai/sim-small"), ("sim-large", "large", "openai/sim-large")
    ]  # fmt: skip
    assert config.routes == ("auto",)
    assert "auto" in config.served_models and "sim-small" in config.served_models


def test_the_embedding_defaults_are_onnx_fp32_cached_per_user() -> None:
    config = parse_config({})

    spec = embedder_spec(config, config.embedding.model)

    assert (spec.backend, spec.quantize, spec.threads) == ("onnx", "none", 1)
    assert spec.onnx_cache_dir == Path.home() / ".cache" / "semcache" / "onnx"


def test_onnx_int8_and_a_cache_folder_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "semcache.yaml"
    path.write_text("embedding: {quantize: int8, onnx_cache_dir: graphs}\n", encoding="utf-8")

    config = load_config(path)
    spec = embedder_spec(config, "some/model")

    assert (spec.model, spec.backend, spec.quantize) == ("some/model", "onnx", "int8")
    assert spec.onnx_cache_dir == (tmp_path / "graphs").resolve()


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n", encoding="utf-8")

    assert load_config(path) == GatewayConfig()


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("server: {port: 8080\n", encoding="utf-8")

    with pytest.raises(ConfigError) as raised:
        load_config(path)

    assert raised.value.source == str(path)
    assert raised.value.problems[0].startswith("not valid YAML")


def test_a_file_with_problems_names_the_file_and_paths(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("cache:\n  similarity_threshold: 1.4\n", encoding="utf-8")

    with pytest.raises(ConfigError) as raised:
        load_config(path)

    assert str(raised.value) == f"{path}: cache.similarity_threshold: must be in (0, 1], got 1.4"


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        {
            "server": {"port": "eighty", "max_body_bytes": 0},
            "upstream": {"timeout_s": "soon", "models": ["a", 7]},
            "embeddings": {"model": "x"},
            "cache": {"similarity_threshold": 1.4, "ttl": 60, "store": {"kind": "memcached"}, "search_k": 0},
            "tenants": [
                {"name": "neither"},
                {"name": "both", "api_key_env": "K", "api_key_sha256": "ab" * 32},
                {"api_key_env": "NAMELESS"},
            ],
        }
    )

    assert sorted(problems) == sorted(
        [
            "server.port: must be an integer, got 'eighty'",
            "server.max_body_bytes: must be > 0, got 0",
            "upstream.timeout_s: must be a number, got 'soon'",
            "upstream.models[1]: must be a string, got 7",
            "embeddings: unknown key (did you mean 'embedding'?)",
            "cache.similarity_threshold: must be in (0, 1], got 1.4",
            "cache.ttl: unknown key (did you mean 'ttl_s'?)",
            "cache.store.kind: must be one of 'sqlite', 'redis', got 'memcached'",
            "cache.search_k: must be in [1, 256], got 0",
            "tenants[0]: tenant 'neither': give exactly one of api_key_env, api_key_sha256",
            "tenants[1]: tenant 'both': give exactly one of api_key_env, api_key_sha256",
            "tenants[2].name: required",
        ]
    )


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"cache": {"similarity_threshold": 0}}, "cache.similarity_threshold: must be in (0, 1], got 0.0"),
        ({"cache": {"similarity_threshold": -0.5}}, "cache.similarity_threshold: must be in (0, 1], got -0.5"),
        ({"cache": {"similarity_threshold": "high"}}, "cache.similarity_threshold: must be a number, got 'high'"),
        ({"cache": {"ttl_s": -1}}, "cache.ttl_s: must be > 0, got -1.0"),
        ({"server": {"port": 70000}}, "server.port: must be in [0, 65535], got 70000"),
        ({"server": {"port": True}}, "server.port: must be an integer, got True"),
        ({"server": {"port": 80.5}}, "server.port: must be an integer, got 80.5"),
        ({"server": {"host": 127}}, "server.host: must be a string, got 127"),
        ({"server": ["port", 80]}, "server: must be a mapping, got list"),
        ({"embedding": {"threads": 0}}, "embedding.threads: must be in [1, 256], got 0"),
        ({"embedding": {"max_batch": 1.5}}, "embedding.max_batch: must be an integer, got 1.5"),
        ({"embedding": {"backend": "jax"}}, "embedding.backend: must be one of 'onnx', 'torch', got 'jax'"),
        ({"embedding": {"quantize": "int4"}}, "embedding.quantize: must be one of 'none', 'int8', got 'int4'"),
        ({"embedding": {"quantize": True}}, "embedding.quantize: must be one of 'none', 'int8', got True"),
        ({"embedding": {"onnx_cache_dir": 5}}, "embedding.onnx_cache_dir: must be a string, got 5"),
        (
            {"embedding": {"backend": "torch", "quantize": "int8"}},
            "embedding: quantize 'int8' needs backend 'onnx' (torch runs the model as it is)",
        ),
        ({"upstream": {"models": "sim-large"}}, "upstream.models: must be a list, got str"),
        ({"tenants": {"name": "a"}}, "tenants: must be a list, got dict"),
        ({"tenants": ["team-a"]}, "tenants[0]: must be a mapping, got str"),
        ({"servers": {}}, "servers: unknown key (did you mean 'server'?)"),
        ({"zzz": 1}, "zzz: unknown key"),
        ([1, 2], "(top level): must be a mapping, got list"),
        ("port: 8080", "(top level): must be a mapping, got str"),
    ],
)
def test_each_problem_names_its_yaml_path_and_reason(data: Any, problem: str) -> None:
    assert problems_of(data) == [problem]


@pytest.mark.parametrize("section", ["server", "upstream", "embedding", "cache"])
@pytest.mark.parametrize("value", [5, "a string", ["a", "list"], "an api_key placeholder"])
def test_a_section_that_is_not_a_mapping_is_a_config_error(section: str, value: Any) -> None:
    assert problems_of({section: value}) == [f"{section}: must be a mapping, got {type(value).__name__}"]


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"api_key": "sk-live-123"}, "api_key"),
        ({"tenant_by_key_sha256": {"ab" * 32: "team-a"}}, "tenant_by_key_sha256"),
        ({"upstream": {"api_key": "sk-live-123"}}, "upstream.api_key"),
    ],
)
def test_secrets_in_the_file_are_rejected(data: dict[str, Any], path: str) -> None:
    problems = problems_of(data)

    assert problems == [f"{path}: secrets go in environment variables, not the file"]
    assert all("sk-live-123" not in problem for problem in problems)


def test_a_secret_in_the_file_is_reported_with_the_otherproblems_of() -> None:
    problems = problems_of({"upstream": {"api_key": "sk-live-123"}, "cache": {"similarity_threshold": 2}})

    assert "upstream.api_key: secrets go in environment variables, not the file" in problems
    assert "cache.similarity_threshold: must be in (0, 1], got 2.0" in problems


def test_a_raw_key_in_a_tenant_is_an_unknown_key() -> None:
    problems = problems_of({"tenants": [{"name": "a", "api_key": "sk-live-123"}]})

    assert problems == ["tenants[0].api_key: unknown key (did you mean 'api_key_env'?)"]


# Generated valid configs: every field set to some value its check allows.
env_names = st.from_regex(r"[A-Z][A-Z0-9_]{0,15}", fullmatch=True)
digests = st.binary(min_size=1, max_size=16).map(lambda raw: hashlib.sha256(raw).hexdigest())
tenant_entries = st.builds(
    lambda name, env, digest, by_env: (
        {"name": name, "api_key_env": env} if by_env else {"name": name, "api_key_sha256": digest}
    ),
    st.text(min_size=1, max_size=12),
    env_names,
    digests,
    st.booleans(),
)
positive_floats = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False)
sections: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "server": {
        "host": st.sampled_from(["127.0.0.1", "0.0.0.0", "localhost", "::1"]),
        "port": st.integers(0, 65535),
        "max_body_bytes": st.integers(1, 2**31),
    },
    "upstream": {
        "api_base": st.sampled_from(["http://127.0.0.1:9000/v1", "https://api.openai.com/v1"]),
        "provider": st.sampled_from(["openai", "hosted_vllm", "ollama"]),
        "api_key_env": st.none() | env_names,
        "timeout_s": positive_floats | st.integers(1, 600),
        "models": st.lists(st.text(min_size=1, max_size=10), max_size=4),
    },
    "embedding": {
        "model": st.sampled_from(["packaged:all-MiniLM-L6-v2", "/models/mini", "sentence-transformers/x"]),
        "max_batch": st.integers(1, 4096),
        "max_wait_ms": st.floats(0, 1000, allow_nan=False),
        "max_queue": st.integers(1, 10**6),
        "deadline_ms": positive_floats,
        "threads": st.integers(1, 256),
        "backend": st.sampled_from(["onnx", "torch"]),
        # int8 needs the onnx backend: that rule has its own case above.
        "quantize": st.just("none"),
        "onnx_cache_dir": st.none() | st.text(min_size=1),
    },
    "cache": {
        "similarity_threshold": st.floats(min_value=0, max_value=1, exclude_min=True, allow_nan=False),
        "ttl_s": positive_floats,
        "cleanup_interval_s": positive_floats,
        "search_k": st.integers(1, 256),
        "index_deadline_ms": st.floats(1, 60_000, allow_nan=False),
        "hit_flush_interval_s": st.floats(0.01, 3600, allow_nan=False),
        "store": st.builds(
            lambda kind, path, deadline: {**kind, **path, **deadline},
            st.sampled_from([{}, {"kind": "sqlite"}]),
            st.sampled_from([{}]) | st.builds(lambda path: {"path": path}, st.text(min_size=1)),
            st.sampled_from([{}]) | st.builds(lambda ms: {"deadline_ms": ms}, st.floats(1, 60_000, allow_nan=False)),
        ),
    },
}


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    """Some sections, each with some of its fields: whatever is left out takes its default."""
    data: dict[str, Any] = {}
    for name in draw(st.sets(st.sampled_from(sorted(sections)))):
        fields = sections[name]
        data[name] = {key: draw(fields[key]) for key in draw(st.sets(st.sampled_from(sorted(fields))))}
    if draw(st.booleans()):
        data["tenants"] = draw(st.lists(tenant_entries, max_size=4))
    if data.get("upstream", {}).get("api_key_env") and not data.get("tenants"):
        data["clients"] = {"allow_anonymous": True}  # else refused: the gateway's key open to anyone
    return data


@untimed
@given(data=valid_configs())
def test_generated_valid_configs_load_with_their_values(data: dict[str, Any]) -> None:
    config = parse_config(yaml.safe_load(yaml.safe_dump(data)))

    for name, fields in data.items():
        if name == "tenants":
            continue
        section = getattr(config, name)
        for key, value in fields.items():
            if key == "store":
                for store_key, store_value in value.items():
                    assert getattr(section.store, store_key) == store_value
            elif key == "models":
                assert section.models == tuple(value)
            else:
                assert getattr(section, key) == value
    assert [tenant.name for tenant in config.tenants] == [entry["name"] for entry in data.get("tenants", [])]


@untimed
@given(threshold=st.floats(allow_nan=False).filter(lambda value: not 0 < value <= 1))
def test_any_threshold_outside_the_unit_interval_is_reported(threshold: float) -> None:
    assert problems_of({"cache": {"similarity_threshold": threshold}}) == [
        f"cache.similarity_threshold: must be in (0, 1], got {threshold!r}"
    ]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_resolve_secrets_reads_the_named_variables_from_the_mapping() -> None:
    config = parse_config(
        {
            "upstream": {"api_key_env": "UPSTREAM_KEY"},
            "tenants": [
                {"name": "team-a", "api_key_env": "TEAM_A_KEY"},
                {"name": "team-b", "api_key_sha256": sha("sk-team-b").upper()},
            ],
        }
    )

    resolved = resolve_secrets(config, {"UPSTREAM_KEY": "sk-upstream", "TEAM_A_KEY": "sk-team-a", "OTHER": "x"})

    assert resolved.upstream.api_key == "sk-upstream"
    assert resolved.tenant_by_key_sha256 == {sha("sk-team-a"): "team-a", sha("sk-team-b"): "team-b"}
    assert config.upstream.api_key is None  # the input config is left as it was
    assert "sk-upstream" not in repr(resolved)
    assert "sk-team-a" not in repr(resolved)


def test_resolve_secrets_without_any_named_variable_changes_nothing_but_the_table() -> None:
    config = load_config(EXAMPLE)

    resolved = resolve_secrets(config, {})

    assert resolved.upstream.api_key is None
    assert resolved.tenant_by_key_sha256 == {}
    assert resolved.server == config.server
    assert resolved.cache == config.cache


def test_resolve_secrets_reports_every_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Set in the process environment, but not in the mapping handed in: must not be read.
    monkeypatch.setenv("UPSTREAM_KEY", "sk-from-os-environ")
    config = parse_config(
        {
            "upstream": {"api_key_env": "UPSTREAM_KEY"},
            "tenants": [
                {"name": "team-a", "api_key_env": "TEAM_A_KEY"},
                {"name": "team-b", "api_key_env": "TEAM_B_KEY"},
                {"name": "team-c", "api_key_env": "TEAM_C_KEY"},
            ],
        }
    )

    with pytest.raises(ConfigError) as raised:
        resolve_secrets(config, {"TEAM_B_KEY": "sk-b", "TEAM_C_KEY": ""})

    assert raised.value.source == "environment"
    assert raised.value.problems == [
        "upstream.api_key_env: environment variable UPSTREAM_KEY is not set",
        "tenants[0].api_key_env: environment variable TEAM_A_KEY is not set",
        "tenants[2].api_key_env: environment variable TEAM_C_KEY is not set",
    ]
    assert "sk-b" not in str(raised.value)


def test_the_gateways_own_upstream_key_needs_listed_client_keys_or_an_explicit_opt_out() -> None:
    assert problems_of({"upstream": {"api_key_env": "OPENAI_API_KEY"}}) == [
        "clients: upstream.api_key_env is set, so the gateway would spend its own key for any caller: list the "
        "client keys under tenants (api_key_env or api_key_sha256), or set clients.allow_anonymous: true to "
        "serve anyone who can reach the port"
    ]
    listed = parse_config(
        {"upstream": {"api_key_env": "OPENAI_API_KEY"}, "tenants": [{"name": "a", "api_key_env": "A_KEY"}]}
    )
    assert listed.requires_listed_key
    anonymous = parse_config({"upstream": {"api_key_env": "OPENAI_API_KEY"}, "clients": {"allow_anonymous": True}})
    assert not anonymous.requires_listed_key
    assert not parse_config({}).requires_listed_key  # each caller's own key is forwarded
    assert problems_of({"clients": {"require_listed_key": True}}) == [
        "clients.require_listed_key: no client key is listed: list them under tenants"
    ]
    assert problems_of({"clients": {"require_listed_key": True, "allow_anonymous": True}}) == [
        "clients: require_listed_key and allow_anonymous contradict each other: set one"
    ]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"upstream": {"api_base": "api.openai.com/v1"}}, "upstream.api_base: must be an http:// or https:// URL"),
        ({"upstream": {"api_base": "ftp://example.com/v1"}}, "upstream.api_base: must be an http:// or https:// URL"),
        (
            {"upstream": {"passthrough": [{"method": "GET", "path": "/files/*"}]}},
            "upstream.passthrough[0].path: must be a path under /v1/",
        ),
        (
            {"upstream": {"passthrough": [{"method": "GET", "path": "/v1/files/../x"}]}},
            "upstream.passthrough[0].path: must be a path under /v1/",
        ),
        (
            {"upstream": {"passthrough": [{"method": "FETCH", "path": "/v1/files/*"}]}},
            "upstream.passthrough[0].method:",
        ),
        ({"feedback": {"max_step": 0}}, "feedback.max_step: must be in (0, 1]"),
    ],
)
def test_upstream_and_feedback_settings_are_checked(data: dict[str, Any], problem: str) -> None:
    problems = problems_of(data)
    assert len(problems) == 1
    assert problems[0].startswith(problem), problems


def test_a_policy_or_verifier_file_that_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("policy: no-such-policy.yaml\nverifier: calib/verifier.json\n")

    with pytest.raises(ConfigError) as raised:
        load_config(path)

    assert raised.value.source == str(path)
    assert raised.value.problems == [
        f"policy: no such file: {tmp_path / 'no-such-policy.yaml'}",
        f"verifier: no such file: {tmp_path / 'calib' / 'verifier.json'}",
    ]


def test_the_docker_example_config_loads_and_requires_listed_keys() -> None:
    config = load_config(EXAMPLE.parent / "examples" / "docker-config.yaml")

    assert config.requires_listed_key
    assert config.server.host == "0.0.0.0"


def test_store_and_index_deadlines_are_checked_and_named() -> None:
    problems = problems_of({"cache": {"index_deadline_ms": 0, "store": {"deadline_ms": -5}}})

    assert any(problem.startswith("cache.index_deadline_ms") for problem in problems)
    assert any(problem.startswith("cache.store.deadline_ms") for problem in problems)


_DEPLOYMENT = {"name": "small-1", "tier": "small", "model": "openai/sim-small", "api_base": "http://127.0.0.1:9/v1",
               "max_concurrency": 4}  # fmt: skip


def test_deployments_and_routes_are_checked_with_their_yaml_paths() -> None:
    problems = problems_of(
        {
            "deployments": [
                _DEPLOYMENT,
                {**_DEPLOYMENT, "model": "sim-small", "tier": "medium", "max_concurrency": 0},
                {**_DEPLOYMENT, "colour": "red"},
            ],
            "routes": ["auto"],
            "routing": {"high_watermark": 1.5, "pressure": {"watermark": 0.9, "full_at": 0.5}},
        }
    )
    text = "; ".join(problems)
    assert "deployments[1].model: must be a litellm model string" in text
    assert "deployments[1].tier: must be one of 'small', 'large'" in text
    assert "deployments[1].max_concurrency" in text
    assert "deployments[2].colour" in text
    assert "routing.high_watermark" in text
    assert "routing.pressure" in text
    duplicates = "; ".join(problems_of({"deployments": [_DEPLOYMENT, _DEPLOYMENT], "routes": ["auto", "small-1"]}))
    assert "deployments[1].name: duplicate of deployments[0].name ('small-1')" in duplicates
    assert "routes[1]: 'small-1' is already the name of deployments[0].name" in duplicates


def test_a_deployment_key_is_named_by_environment_variable_and_resolved_from_it() -> None:
    assert "deployments[0].api_key: secrets go in environment variables" in "; ".join(
        problems_of({"deployments": [{**_DEPLOYMENT, "api_key": "sk-raw"}], "routes": ["auto"]})
    )
    config = parse_config(
        {
            "deployments": [{**_DEPLOYMENT, "api_key_env": "SMALL_KEY"}],
            "routes": ["auto"],
            "clients": {"allow_anonymous": True},
        }
    )
    resolved = resolve_secrets(config, {"SMALL_KEY": "sk-small"})
    assert resolved.deployments[0].api_key == "sk-small"
    assert "sk-small" not in repr(resolved)
    with pytest.raises(ConfigError, match=r"deployments\[0\]\.api_key_env: environment variable SMALL_KEY"):
        resolve_secrets(config, {})


def test_without_deployments_the_upstream_is_the_one_deployment() -> None:
    config = parse_config({"upstream": {"models": ["m"]}})
    assert config.deployments == ()
    assert config.served_models == ("m",)
    assert "routes: routes need deployments" in "; ".join(problems_of({"routes": ["auto"]}))


def test_a_deployment_called_with_the_gateways_own_key_needs_listed_client_keys() -> None:
    data = {"deployments": [{**_DEPLOYMENT, "api_key_env": "SMALL_KEY"}], "routes": ["auto"]}
    assert "clients: a deployment's api_key_env is set, so the gateway would spend its own key" in "; ".join(
        problems_of(data)
    )
    assert parse_config({**data, "clients": {"allow_anonymous": True}}).spends_own_key
