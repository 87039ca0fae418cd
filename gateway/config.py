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

from embeddings import PACKAGED_MODEL
from gateway.errors import ConfigError
from policies import build, check, in_range, positive
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


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddingConfig:
    model: str = PACKAGED_MODEL
    max_batch: int = field(default=32, metadata=check(in_range(1, 4096)))
    max_wait_ms: float = field(default=0.0, metadata=check(in_range(0, 1000)))
    max_queue: int = field(default=1024, metadata=check(positive))
    deadline_ms: float = field(default=1000.0, metadata=check(positive))
    threads: int = field(default=1, metadata=check(in_range(1, 256)))


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
    # Every index call waits at most this long per 16 entries it handles (a search or one insert:
    # once); past it the request fails open to a miss, counted in semcache_fail_open_total.
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
    # Callers whose key is listed share their tenant's cache; any other key is its own tenant.
    tenants: tuple[TenantConfig, ...] = ()
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    # Filled by `resolve_secrets`: SHA-256 of an API key → tenant name.
    tenant_by_key_sha256: Mapping[str, str] = field(default_factory=dict, metadata={"secret": True})

    @staticmethod
    def schema_rules(values: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        upstream, clients, tenants = values.get("upstream"), values.get("clients"), values.get("tenants")
        if upstream is None or clients is None or tenants is None:
            return ()  # reported where it is wrong
        return client_problems(upstream, clients, listed=bool(tenants))

    @property
    def requires_listed_key(self) -> bool:
        """Whether only callers with a key listed under `tenants` are served."""
        return requires_listed_key(self.upstream, self.clients)


def requires_listed_key(upstream: UpstreamConfig, clients: ClientsConfig) -> bool:
    if clients.require_listed_key is not None:
        return clients.require_listed_key
    return (upstream.api_key_env is not None or upstream.api_key is not None) and not clients.allow_anonymous


def client_problems(upstream: UpstreamConfig, clients: ClientsConfig, *, listed: bool) -> list[tuple[str, str]]:
    """Why these settings would leave the gateway open to anyone or closed to everyone."""
    if clients.require_listed_key and clients.allow_anonymous:
        return [("clients", "require_listed_key and allow_anonymous contradict each other: set one")]
    if requires_listed_key(upstream, clients) and not listed:
        if clients.require_listed_key:
            return [("clients.require_listed_key", "no client key is listed: list them under tenants")]
        return [
            (
                "clients",
                "upstream.api_key_env is set, so the gateway would spend its own key for any caller: list the "
                "client keys under tenants (api_key_env or api_key_sha256), or set clients.allow_anonymous: "
                "true to serve anyone who can reach the port",
            )
        ]
    return []


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def parse_config(data: Any, *, source: str = "<config>") -> GatewayConfig:
    """Validate parsed YAML; raise `ConfigError` listing every problem."""
    secret_problems: list[str] = []
    if isinstance(data, dict):
        data = dict(data)
        upstream = data.get("upstream")
        if isinstance(upstream, dict) and "api_key" in upstream:
            data["upstream"] = {key: value for key, value in upstream.items() if key != "api_key"}
            secret_problems.append("upstream.api_key")
        admin = data.get("admin")
        if isinstance(admin, dict) and "api_key" in admin:
            data["admin"] = {key: value for key, value in admin.items() if key != "api_key"}
            secret_problems.append("admin.api_key")
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

    upstream, admin = config.upstream, config.admin
    if upstream.api_key_env is not None:
        upstream = replace(upstream, api_key=read(upstream.api_key_env, "upstream.api_key_env"))
    if admin.api_key_env is not None:
        admin = replace(admin, api_key=read(admin.api_key_env, "admin.api_key_env"))
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
    return replace(config, upstream=upstream, admin=admin, tenant_by_key_sha256=tenants)
