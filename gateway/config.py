"""The gateway's configuration: typed, frozen, validated from YAML with every problem reported.

Secrets are named by environment variable here; `resolve_secrets` reads them from the mapping
the CLI hands in, so nothing below the CLI reads the process environment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from embeddings import PACKAGED_MODEL, EmbedderSpec
from gateway.errors import ConfigError
from policies import build, check, check_each, in_range, positive
from policies.load import PressureSettings
from policies.model import error_rate


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = field(default=8080, metadata=check(in_range(0, 65535)))
    max_body_bytes: int = field(default=1_048_576, metadata=check(positive))


def _http_url(value: Any) -> str | None:
    parts = urlsplit(str(value))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// URL with a host (e.g. https://api.openai.com/v1), got {value!r}"
    return None


HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


def _non_blank(value: Any) -> str | None:
    return None if str(value).strip() else "must not be blank"


def _route_pattern(value: Any) -> str | None:
    segments = str(value).split("/")
    if not str(value).startswith("/v1/") or any(segment in ("", ".", "..") for segment in segments[1:]):
        return f"must be a path under /v1/ without empty, '.' or '..' segments, got {value!r}"
    if "**" in segments[:-1] or any("*" in segment and segment not in ("*", "**") for segment in segments):
        return "'*' stands for one whole path segment, and '**' (the last segment only) for one or more"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class PassthroughRoute:
    """A route forwarded to the upstream as it is: `*` is one path segment, a final `**` one or more."""

    method: HttpMethod
    path: str = field(metadata=check(_route_pattern))


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamConfig:
    api_base: str = field(default="http://127.0.0.1:9000/v1", metadata=check(_http_url))
    # litellm provider prefix: "openai" speaks the OpenAI wire format to any compatible server.
    provider: str = "openai"
    # Name of the environment variable that holds the upstream key. Unset: each caller's own key
    # is forwarded (pass-through), which suits a gateway in front of a shared provider account.
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False, metadata={"secret": True})
    timeout_s: float = field(default=60.0, metadata=check(positive))
    # Served by GET /v1/models; when non-empty, other models are refused with 404.
    models: tuple[str, ...] = ()
    # Routes other than the gateway's own forwarded to the upstream unchanged, beyond the two always
    # forwarded (GET /v1/models, POST /v1/embeddings); every other /v1 route is a 404, so that a
    # caller cannot reach the provider's files, batches or fine-tuning APIs through the gateway.
    passthrough: tuple[PassthroughRoute, ...] = ()


def _litellm_model(value: Any) -> str | None:
    provider, _, model = str(value).partition("/")
    if not provider or not model:
        return f"must be a litellm model string '<provider>/<model>' (e.g. openai/gpt-4o-mini), got {value!r}"
    return None


def _route_name(value: Any) -> str | None:
    return None if str(value).strip() and str(value) == str(value).strip() else f"must be a name, got {value!r}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeploymentConfig:
    """One model endpoint misses may be routed to. The policy names tiers; these hold the endpoints."""

    # Reported in x-semcache-model and the metrics; a client naming it (or its model) is pinned to it.
    name: str = field(metadata=check(_route_name))
    tier: Literal["small", "large"]
    # litellm model string: "<provider>/<model>", e.g. "openai/gpt-4o-mini".
    model: str = field(metadata=check(_litellm_model))
    api_base: str = field(metadata=check(_http_url))
    # Environment variable with this deployment's key. Unset: each caller's own key is forwarded.
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False, metadata={"secret": True})
    # Most concurrent requests it takes (load 1 at this many in flight).
    max_concurrency: int = field(metadata=check(in_range(1, 1_000_000)))
    # Tokens (prompt + completion) it takes per minute; unset: not a load signal.
    tokens_per_minute: int | None = field(default=None, metadata=check(positive))
    # Latency (time to first token for streams) it keeps at capacity; unset: not a load signal.
    target_latency_ms: float | None = field(default=None, metadata=check(positive))
    timeout_s: float = field(default=60.0, metadata=check(positive))
    # Dollars per million tokens, for the operator's cost reports.
    input_price_per_1m: float = field(default=0.0, metadata=check(in_range(0, 1_000_000)))
    output_price_per_1m: float = field(default=0.0, metadata=check(in_range(0, 1_000_000)))


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingConfig:
    """How misses are spread over `deployments` (only read when there are some)."""

    # Past this load the preferred tier offloads to the other one (when the category allows it).
    high_watermark: float = field(default=0.8, metadata=check(in_range(0, 1, low_open=True)))
    # A deployment that answered 429/5xx or timed out gets no routed traffic for this long.
    cooldown_s: float = field(default=5.0, metadata=check(in_range(0, 3600)))
    # What a shed request's Retry-After says.
    retry_after_s: int = field(default=1, metadata=check(in_range(1, 3600)))
    # Load of the tier a category's misses go to → how far its threshold and TTL move within bounds.
    pressure: PressureSettings = field(default_factory=PressureSettings)
    # EWMA weight of each new latency sample; recent outcomes counted for the error rate.
    latency_alpha: float = field(default=0.2, metadata=check(in_range(0, 1, low_open=True)))
    error_window_s: float = field(default=30.0, metadata=check(positive))


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddingConfig:
    model: str = PACKAGED_MODEL
    max_batch: int = field(default=32, metadata=check(in_range(1, 4096)))
    max_wait_ms: float = field(default=0.0, metadata=check(in_range(0, 1000)))
    max_queue: int = field(default=1024, metadata=check(positive))
    deadline_ms: float = field(default=1000.0, metadata=check(positive))
    threads: int = field(default=1, metadata=check(in_range(1, 256)))
    # "onnx": ONNX Runtime on the model's own graph, exported once per weights (embeddings/onnx_runtime.py):
    # the same vectors as torch, a few times faster for one short prompt (bench/embedders.py). A model
    # it cannot export is embedded with torch, with a warning. "torch": sentence-transformers.
    backend: Literal["onnx", "torch"] = "onnx"
    # ONNX only. "int8": weights quantized (dynamic, per channel), about 2x faster again, but the vectors
    # move (cosine ~0.99 to fp32): measured on 500 pairs each of QQP/MRPC/STS-B, AUC -0.0004..-0.0015,
    # hit rate at precision 0.90 -0.005..-0.015, and 1.4-3.6 % of pairs change side of 0.8/0.9/0.95,
    # so thresholds calibrated on fp32 no longer hold: off by default (bench/embedders.py). The store's
    # vectors are another model's then, and are dropped on the switch.
    quantize: Literal["none", "int8"] = "none"
    # ONNX only: where exported graphs are kept; relative to the config file. Unset: the user's
    # `~/.cache/semcache/onnx`, so that a gateway on a fresh store (a demo, a test) exports only once.
    onnx_cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.quantize != "none" and self.backend != "onnx":
            raise ValueError(f"quantize {self.quantize!r} needs backend 'onnx' (torch runs the model as it is)")


def _redis_url(value: Any) -> str | None:
    parts = urlsplit(str(value))
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        return f"must be a redis://, rediss:// or unix:// URL (e.g. redis://127.0.0.1:6379/0), got {value!r}"
    return None


def _key_prefix(value: Any) -> str | None:
    text = str(value)
    if not text or any(char in text for char in "{}: \t\n"):
        return f"must be a non-empty name without ':', '{{', '}}' or spaces, got {value!r}"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    # "sqlite": one embedded file, one gateway process. "redis": several replicas share one Redis
    # (documents, state and the change feed there; each replica keeps its own in-memory index).
    kind: Literal["sqlite", "redis"] = "sqlite"
    path: str = "semcache.db"  # sqlite only
    url: str = field(default="redis://127.0.0.1:6379/0", metadata=check(_redis_url))  # redis only
    # Every key starts with this (redis only): several caches can share one Redis.
    prefix: str = field(default="semcache", metadata=check(_key_prefix))
    # The change feed (a Redis Stream) keeps about this many events; a replica further behind rebuilds.
    stream_maxlen: int = field(default=100_000, metadata=check(in_range(100, 100_000_000)))
    # Every store call (each page of a scan too) waits at most this long; past it the request
    # fails open to a miss, counted in semcache_fail_open_total.
    deadline_ms: float = field(default=250.0, metadata=check(in_range(1, 60_000)))


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheConfig:
    similarity_threshold: float = field(default=0.9, metadata=check(in_range(0, 1, low_open=True)))
    ttl_s: float = field(default=86_400.0, metadata=check(positive))
    store: StoreConfig = field(default_factory=StoreConfig)
    cleanup_interval_s: float = field(default=60.0, metadata=check(positive))
    # How many neighbours the index returns before the scope/expiry filter has its say.
    search_k: int = field(default=4, metadata=check(in_range(1, 256)))
    # Quota of the one implicit category when no policy file is given.
    max_entries: int = field(default=100_000, metadata=check(positive))
    # Every index read waits at most this long per 16 entries it handles (a search: once); past it
    # the request fails open to a miss, counted in semcache_fail_open_total. Writes (after the
    # answer is sent) get 10 times as long, and an insert that resizes the index more for the copy.
    index_deadline_ms: float = field(default=100.0, metadata=check(in_range(1, 60_000)))
    # Hit counts are kept in memory and written to the store in one batch this often (and at close).
    hit_flush_interval_s: float = field(default=5.0, metadata=check(in_range(0.01, 3600)))


def _confidence(value: Any) -> str | None:
    return None if 0.5 <= value < 1 else f"must be in [0.5, 1), got {value!r}"


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackConfig:
    """POST /v1/feedback: ratings of served hits tighten (bad) or slowly relax (good) each
    category's threshold to hold a target error rate (policies/feedback.py)."""

    # Share of rated semantic hits allowed to be bad; a policy category's feedback.target_error_rate
    # overrides it.
    target_error_rate: float = field(default=0.05, metadata=check(error_rate))
    # Confidence of the error rate's bounds: tighten when its lower bound is above the target,
    # relax towards where its upper bound is within it.
    confidence: float = field(default=0.95, metadata=check(_confidence))
    # The most one good rating lowers a threshold.
    relax_step: float = field(default=0.005, metadata=check(in_range(0, 1)))
    # The most one bad rating raises a threshold: no single rating, honest or not, moves a category
    # far; repeated bad ratings still reach the safe threshold, a step at a time.
    max_step: float = field(default=0.01, metadata=check(in_range(0, 1, low_open=True)))
    # Ratings kept per category (the most recent), in the store.
    window: int = field(default=1000, metadata=check(in_range(1, 100_000)))
    # Hits remembered (in memory) so that a rating can name the response `id`; older ones can
    # still be rated by entry, which removes a bad entry but cannot move the threshold.
    remember_hits: int = field(default=50_000, metadata=check(in_range(1, 10_000_000)))
    # Whose ratings move the thresholds, which every tenant shares: only callers of a tenant listed
    # under `tenants` ("listed_tenants"), so that an unknown key cannot tighten a category for all,
    # or "everyone" where every caller is trusted. Anyone may still rate their own hits, and a bad
    # rating removes the entry.
    moves_thresholds: Literal["everyone", "listed_tenants"] = "listed_tenants"


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMJudgeSettings:
    """`verified.judge: llm`: a model asked whether two answers say the same thing."""

    model: str = field(metadata=check(_non_blank))
    api_base: str | None = field(default=None, metadata=check(_http_url))
    # Name of the environment variable holding the judge's key; unset: none is sent.
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False, metadata={"secret": True})
    timeout_s: float = field(default=30.0, metadata=check(positive))


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedConfig:
    """Verified thresholds (policies/verified.py): above a category's threshold, which becomes a hard
    floor, a candidate is served only while the traffic shows it is right often enough; otherwise the
    request is explored (answered fresh, and the fresh answer judged against the cached one in the
    background) or refused. The error bound δ is the policy's (`error_bound`, per category)."""

    # Off by default in the library, so that embedding `SemanticCache` keeps serving by threshold
    # until a caller opts in; config.example.yaml (what `semcache serve` is started with) turns it on.
    enabled: bool = False
    # The most extra upstream calls exploration may cause per minute (a token bucket): past it a
    # candidate that would be explored is refused (a plain miss), so a burst cannot multiply cost.
    explore_budget_per_minute: float = field(default=60.0, metadata=check(in_range(0, 1_000_000)))
    # "default": text, tool calls, JSON, then the answers' embeddings; "llm": ask `llm_judge.model`.
    judge: Literal["default", "llm"] = "default"
    # The default judge's answer-embedding cosine at or above which two answers are equivalent.
    judge_min_similarity: float = field(default=0.95, metadata=check(in_range(0, 1, low_open=True)))
    llm_judge: LLMJudgeSettings | None = None
    # Judgements waiting or running at most (beyond: dropped and counted), and running at once.
    judge_queue: int = field(default=256, metadata=check(in_range(1, 1_000_000)))
    judge_concurrency: int = field(default=2, metadata=check(in_range(1, 256)))
    # Observations kept per entry and per category (the most recent), and how often (in new
    # observations) a category's prior is refitted.
    max_observations: int = field(default=64, metadata=check(in_range(1, 10_000)))
    max_category_observations: int = field(default=4096, metadata=check(in_range(1, 1_000_000)))
    refit_every: int = field(default=16, metadata=check(in_range(1, 100_000)))
    # Entries whose observations are kept in memory (the most recently used).
    cached_entries: int = field(default=10_000, metadata=check(in_range(1, 10_000_000)))
    # Seed of the exploration draws, for reproducible runs (tests, benches); unset: random.
    seed: int | None = None

    @staticmethod
    def schema_rules(values: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        if values.get("judge") == "llm" and values.get("llm_judge") is None:
            yield "llm_judge", "judge: llm needs llm_judge.model"


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantConfig:
    name: str
    # Either the key's environment variable or its SHA-256 (hex), so no raw key sits in the file.
    api_key_env: str | None = None
    api_key_sha256: str | None = None

    def __post_init__(self) -> None:
        if (self.api_key_env is None) == (self.api_key_sha256 is None):
            raise ValueError(f"tenant {self.name!r}: give exactly one of api_key_env, api_key_sha256")
        digest = self.api_key_sha256
        if digest is not None and (len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest)):
            raise ValueError(f"tenant {self.name!r}: api_key_sha256 must be 64 hex characters")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientsConfig:
    """Who may call the gateway. The client keys are the keys listed under `tenants`."""

    # Only callers presenting a listed key are served; any other gets a 401. Unset: on whenever the
    # gateway calls the upstream with its own key (`upstream.api_key_env`), since otherwise anyone
    # who reaches the port spends that key; off when each caller's own key is forwarded.
    require_listed_key: bool | None = None
    # Serve any caller, with any key or none, although the gateway uses its own upstream key: only
    # as an explicit choice (e.g. behind a reverse proxy that authenticates callers itself).
    allow_anonymous: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    # Environment variable holding the key for /admin/*; unset: the admin routes are disabled.
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False, metadata={"secret": True})


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    # Deployments misses are routed to by tier and load. Empty: every miss goes to `upstream`.
    deployments: tuple[DeploymentConfig, ...] = ()
    # Model names clients ask for to be routed (e.g. "auto"); naming a deployment pins it instead.
    routes: tuple[str, ...] = field(default=(), metadata=check_each(_route_name))
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    # A category policy file (see examples/policy_files/); relative to the config file. Unset: one
    # "default" category with cache.similarity_threshold, cache.ttl_s and cache.max_entries.
    policy: str | None = None
    # A verifier fitted by `semcache calibrate` (verifier.json); relative to the config file. With
    # it, semantic candidates from its floor up are served only if it accepts them.
    verifier: str | None = None
    admin: AdminConfig = field(default_factory=AdminConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    verified: VerifiedConfig = field(default_factory=VerifiedConfig)
    # Callers whose key is listed share their tenant's cache; any other key is its own tenant.
    tenants: tuple[TenantConfig, ...] = ()
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    # Filled by `resolve_secrets`: SHA-256 of an API key → tenant name.
    tenant_by_key_sha256: Mapping[str, str] = field(default_factory=dict, metadata={"secret": True})

    @staticmethod
    def schema_rules(values: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        problems = list(_routing_problems(values))
        upstream, clients, tenants = values.get("upstream"), values.get("clients"), values.get("tenants")
        if upstream is None or clients is None or tenants is None:
            return problems  # reported where it is wrong
        own_key = any(d.api_key_env is not None for d in values.get("deployments") or ())
        return problems + client_problems(upstream, clients, listed=bool(tenants), own_key=own_key)

    @property
    def served_models(self) -> tuple[str, ...]:
        """What clients may name: with deployments, the routes, the deployments and their models;
        without, `upstream.models` (empty: any)."""
        if not self.deployments:
            return self.upstream.models
        named = [*self.routes, *(d.name for d in self.deployments), *(d.model for d in self.deployments)]
        named += [d.model.partition("/")[2] for d in self.deployments]
        return tuple(dict.fromkeys(named))

    @property
    def requires_listed_key(self) -> bool:
        """Whether only callers with a key listed under `tenants` are served."""
        return requires_listed_key(self.upstream, self.clients, own_key=self.spends_own_key)

    @property
    def spends_own_key(self) -> bool:
        """Whether some deployment is called with the gateway's own key (not the caller's)."""
        return any(d.api_key_env is not None or d.api_key is not None for d in self.deployments)


def _routing_problems(values: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    deployments: tuple[DeploymentConfig, ...] = values.get("deployments") or ()
    routes: tuple[str, ...] = values.get("routes") or ()
    seen: dict[str, str] = {}
    for i, deployment in enumerate(deployments):
        if deployment.name in seen:
            yield f"deployments[{i}].name", f"duplicate of {seen[deployment.name]} ({deployment.name!r})"
        seen.setdefault(deployment.name, f"deployments[{i}].name")
    for i, route in enumerate(routes):
        if route in seen:
            yield f"routes[{i}]", f"{route!r} is already the name of {seen[route]}"
        seen.setdefault(route, f"routes[{i}]")
    if routes and values.get("deployments") == ():  # None: wrong, and reported there
        yield "routes", "routes need deployments to route to"


def requires_listed_key(upstream: UpstreamConfig, clients: ClientsConfig, *, own_key: bool = False) -> bool:
    """`own_key`: a deployment is called with the gateway's own key, as with `upstream.api_key_env`."""
    if clients.require_listed_key is not None:
        return clients.require_listed_key
    spends = own_key or upstream.api_key_env is not None or upstream.api_key is not None
    return spends and not clients.allow_anonymous


def client_problems(
    upstream: UpstreamConfig, clients: ClientsConfig, *, listed: bool, own_key: bool = False
) -> list[tuple[str, str]]:
    """Why these settings would leave the gateway open to anyone or closed to everyone."""
    if clients.require_listed_key and clients.allow_anonymous:
        return [("clients", "require_listed_key and allow_anonymous contradict each other: set one")]
    if requires_listed_key(upstream, clients, own_key=own_key) and not listed:
        if clients.require_listed_key:
            return [("clients.require_listed_key", "no client key is listed: list them under tenants")]
        whose = "upstream.api_key_env" if upstream.api_key_env is not None else "a deployment's api_key_env"
        return [
            (
                "clients",
                f"{whose} is set, so the gateway would spend its own key for any caller: list the "
                "client keys under tenants (api_key_env or api_key_sha256), or set clients.allow_anonymous: "
                "true to serve anyone who can reach the port",
            )
        ]
    return []


def embedder_spec(config: GatewayConfig, model: str) -> EmbedderSpec:
    """What to build the embedder from: `model` (the policy's or the config's) the way the config says."""
    embedding = config.embedding
    cache_dir = embedding.onnx_cache_dir
    return EmbedderSpec(
        model=model,
        backend=embedding.backend,
        threads=embedding.threads,
        quantize=embedding.quantize,
        onnx_cache_dir=Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "semcache" / "onnx",
    )


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def _without_raw_keys(data: dict[str, Any], found: list[str]) -> dict[str, Any]:
    """`data` without the raw `api_key`s written where a key's environment variable belongs (the
    upstream, admin, each deployment, the LLM judge); their paths go to `found`, so that the rest
    of the file is still checked."""

    def strip(section: Any, path: str) -> Any:
        if isinstance(section, dict) and "api_key" in section:
            found.append(f"{path}.api_key")
            return {key: value for key, value in section.items() if key != "api_key"}
        return section

    data = dict(data)
    for name in ("upstream", "admin"):
        if name in data:
            data[name] = strip(data[name], name)
    if isinstance(data.get("deployments"), list):
        data["deployments"] = [strip(item, f"deployments[{i}]") for i, item in enumerate(data["deployments"])]
    verified = data.get("verified")
    if isinstance(verified, dict) and "llm_judge" in verified:
        data["verified"] = {**verified, "llm_judge": strip(verified["llm_judge"], "verified.llm_judge")}
    return data


def parse_config(data: Any, *, source: str = "<config>") -> GatewayConfig:
    """Validate parsed YAML; raise `ConfigError` listing every problem."""
    secret_problems: list[str] = []
    if isinstance(data, dict):
        data = _without_raw_keys(data, secret_problems)
        secret_problems += [key for key in ("api_key", "tenant_by_key_sha256") if data.pop(key, None) is not None]
    secret_problems = [f"{path}: secrets go in environment variables, not the file" for path in secret_problems]
    config, problems = build(GatewayConfig, data)
    if secret_problems or problems or config is None:
        raise ConfigError(source, secret_problems + problems)
    return config


def load_config(path: str | Path) -> GatewayConfig:
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from exc
    config = parse_config(data, source=str(path))
    here = Path(path).parent
    if config.policy is not None:
        config = replace(config, policy=str((here / config.policy).resolve()))
    if config.verifier is not None:
        config = replace(config, verifier=str((here / config.verifier).resolve()))
    if config.embedding.onnx_cache_dir is not None:
        cache_dir = str((here / config.embedding.onnx_cache_dir).resolve())
        config = replace(config, embedding=replace(config.embedding, onnx_cache_dir=cache_dir))
    missing = [
        f"{name}: no such file: {value}"
        for name, value in (("policy", config.policy), ("verifier", config.verifier))
        if value is not None and not Path(value).is_file()
    ]
    if missing:
        raise ConfigError(str(path), missing)
    model = Path(config.embedding.model)
    if not model.is_absolute() and (here / model).is_dir():  # a local folder; else a hub name
        config = replace(config, embedding=replace(config.embedding, model=str((here / model).resolve())))
    return config


def resolve_secrets(config: GatewayConfig, environ: Mapping[str, str]) -> GatewayConfig:
    """Read the environment variables the config names; every missing one is reported at once."""
    problems: list[str] = []

    def read(name: str, path: str) -> str | None:
        value = environ.get(name)
        if not value:
            problems.append(f"{path}: environment variable {name} is not set")
        return value or None

    upstream, admin, verified = config.upstream, config.admin, config.verified
    judge = verified.llm_judge
    if judge is not None and judge.api_key_env is not None:
        judge = replace(judge, api_key=read(judge.api_key_env, "verified.llm_judge.api_key_env"))
        verified = replace(verified, llm_judge=judge)
    if upstream.api_key_env is not None:
        upstream = replace(upstream, api_key=read(upstream.api_key_env, "upstream.api_key_env"))
    if admin.api_key_env is not None:
        admin = replace(admin, api_key=read(admin.api_key_env, "admin.api_key_env"))
    deployments = tuple(
        replace(deployment, api_key=read(deployment.api_key_env, f"deployments[{i}].api_key_env"))
        if deployment.api_key_env is not None
        else deployment
        for i, deployment in enumerate(config.deployments)
    )
    tenants: dict[str, str] = {}
    for i, tenant in enumerate(config.tenants):
        if tenant.api_key_sha256 is not None:
            tenants[tenant.api_key_sha256.lower()] = tenant.name
            continue
        assert tenant.api_key_env is not None
        key = read(tenant.api_key_env, f"tenants[{i}].api_key_env")
        if key is not None:
            tenants[key_digest(key)] = tenant.name
    if problems:
        raise ConfigError("environment", problems)
    return replace(
        config, upstream=upstream, admin=admin, verified=verified, deployments=deployments, tenant_by_key_sha256=tenants
    )
