"""Where misses go: the `Upstream` and `Router` protocols, the litellm backend (litellm itself is
imported only when a backend is built) and the routers."""

from gateway.upstream.base import (
    Answer,
    Call,
    Chunk,
    Deployment,
    Route,
    Router,
    RouteRequest,
    Shed,
    Tier,
    Upstream,
    UpstreamStream,
)
from gateway.upstream.litellm_backend import LiteLLMUpstream, import_litellm, translate_error
from gateway.upstream.load import LoadSettings, LoadTracker
from gateway.upstream.routing import LoadRouter, SingleDeploymentRouter

__all__ = [
    "Answer",
    "Call",
    "Chunk",
    "Deployment",
    "LiteLLMUpstream",
    "LoadRouter",
    "LoadSettings",
    "LoadTracker",
    "Route",
    "RouteRequest",
    "Router",
    "Shed",
    "SingleDeploymentRouter",
    "Tier",
    "Upstream",
    "UpstreamStream",
    "import_litellm",
    "translate_error",
]
