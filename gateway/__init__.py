"""semcache: a semantic cache gateway for OpenAI-compatible LLM APIs.

Three ways in: the proxy (`semcache serve`, or `create_app(config)` under any ASGI server), the
library (`SemanticCache`), and the ASGI middleware (`SemanticCacheMiddleware`). LiteLLM's SDK and
proxy plug in through `gateway.litellm_cache` (imported on its own, since it imports litellm).
"""

from gateway.app import create_app
from gateway.cache.decisions import Bypass, Candidate, Decision, Hit, Miss, NearMiss, Outcome
from gateway.cache.semantic_cache import CacheHit, CacheMiss, Lookup, NotCacheable, SemanticCache
from gateway.config import GatewayConfig, load_config, parse_config, resolve_secrets
from gateway.errors import ClientFacingError, ConfigError, GatewayError, InvalidRequest, UpstreamError
from gateway.http.middleware import SemanticCacheMiddleware
from gateway.wire.cache_control import CacheControl

__all__ = [
    "Bypass",
    "CacheControl",
    "CacheHit",
    "CacheMiss",
    "Candidate",
    "ClientFacingError",
    "ConfigError",
    "Decision",
    "GatewayConfig",
    "GatewayError",
    "Hit",
    "InvalidRequest",
    "Lookup",
    "Miss",
    "NearMiss",
    "NotCacheable",
    "Outcome",
    "SemanticCache",
    "SemanticCacheMiddleware",
    "UpstreamError",
    "create_app",
    "load_config",
    "parse_config",
    "resolve_secrets",
]
