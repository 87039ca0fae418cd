"""Where misses go: the `Upstream` protocol and its litellm backend (litellm itself is imported only
when a backend is built)."""

from gateway.upstream.base import Chunk, Deployment, Route, Router, RouteRequest, Upstream
from gateway.upstream.litellm_backend import LiteLLMUpstream, import_litellm, translate_error

__all__ = [
    "Chunk",
    "Deployment",
    "LiteLLMUpstream",
    "Route",
    "RouteRequest",
    "Router",
    "Upstream",
    "import_litellm",
    "translate_error",
]
