"""Where misses go: the `Upstream` and `Router` protocols, the litellm backend (litellm itself is
imported only when a backend is built) and the routers."""

from gateway.upstream.base import (
    Answer,
    Chunk,
    Deployment,
    Route,
    Router,
    RouteRequest,
    Tier,
    Upstream,
    UpstreamStream,
)
from gateway.upstream.litellm_backend import LiteLLMUpstream, import_litellm, translate_error
from gateway.upstream.routing import SingleDeploymentRouter

__all__ = [
    "Answer",
    "Chunk",
    "Deployment",
    "LiteLLMUpstream",
    "Route",
    "RouteRequest",
    "Router",
    "SingleDeploymentRouter",
    "Tier",
    "Upstream",
    "UpstreamStream",
    "import_litellm",
    "translate_error",
]
