"""The gateway's exceptions, all of them. Client-facing errors carry an OpenAI error body; cache
errors never reach a client (the engine turns them into a miss and counts them).

    GatewayError
    ├── ClientFacingError             (status, OpenAI error.type, message, param, code)
    │   ├── InvalidRequest            400
    │   │   └── ThresholdTooLoose     400  a per-request threshold looser than the category's
    │   ├── Unauthorized              401
    │   ├── RouteNotFound             404
    │   ├── ModelNotFound             404
    │   ├── HitNotFound               404  feedback for a hit not served to this caller
    │   ├── MethodNotAllowed          405
    │   ├── AlreadyRated              409
    │   ├── PayloadTooLarge           413
    │   ├── Overloaded                429  every deployment that could answer is past capacity (Retry-After)
    │   ├── ServiceUnavailable        503
    │   └── UpstreamError             the upstream's own status, body fields and headers (429 stays 429)
    ├── CacheError                    never shown to a client: the request fails open
    │   ├── StoreError                the document store failed or missed its deadline
    │   └── VectorIndexError          an in-memory index failed or missed its deadline
    ├── ConfigError                   every problem of a config file, each with its YAML path
    └── LiteLLMDependencyMissing      LiteLLM's cache-hit path cannot be imported

`policies.errors` and `embeddings.errors` hold those packages' own trees.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ClientFacingError(GatewayError):
    """An error answered to the client as an OpenAI-style body with an HTTP status."""

    status_code = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(ClientFacingError):
    status_code = 400


class ThresholdTooLoose(InvalidRequest):
    pass


class Unauthorized(ClientFacingError):
    status_code = 401  # OpenAI answers a missing or wrong key with type invalid_request_error


class HitNotFound(ClientFacingError):
    status_code = 404


class AlreadyRated(ClientFacingError):
    status_code = 409


class PayloadTooLarge(ClientFacingError):
    status_code = 413


class ModelNotFound(ClientFacingError):
    status_code = 404


class RouteNotFound(ClientFacingError):
    status_code = 404


class MethodNotAllowed(ClientFacingError):
    status_code = 405


class Overloaded(ClientFacingError):
    """Load shed: every deployment that could take the request is at capacity or cooling down."""

    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, code="rate_limit_exceeded")
        self.retry_after_s = retry_after_s


class ServiceUnavailable(ClientFacingError):
    status_code = 503
    error_type = "server_error"


class UpstreamError(ClientFacingError):
    """The upstream answered with an error or did not answer. What it said is kept as it said it:
    status (429 stays 429), error type, code, param, message, and the headers a client acts on
    (`retry-after`, `x-ratelimit-*`, `x-request-id`), which the gateway forwards with the error."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        error_type: str = "upstream_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.status_code = status_code
        self.error_type = error_type
        self.headers: Mapping[str, str] = dict(headers or {})


class CacheError(GatewayError):
    """A fault in the cache (store, index, embedder). Never shown to a client: the request fails open."""


class StoreError(CacheError):
    """The document store failed, or did not answer within `cache.store.deadline_ms`."""


class VectorIndexError(CacheError):
    """An in-memory vector index failed, or did not answer within `cache.index_deadline_ms`."""


class ConfigError(GatewayError):
    """The configuration file is invalid; `problems` lists every error, each with its YAML path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


class LiteLLMDependencyMissing(GatewayError):
    """LiteLLM's cache-hit path cannot be imported: a dependency of its proxy extra is missing."""
