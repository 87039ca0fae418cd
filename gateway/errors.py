"""The gateway's exceptions: client-facing errors carry an OpenAI error body; cache errors never
reach a client (the engine turns them into a miss and counts them)."""

from __future__ import annotations

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


class PayloadTooLarge(ClientFacingError):
    status_code = 413


class ModelNotFound(ClientFacingError):
    status_code = 404


class RouteNotFound(ClientFacingError):
    status_code = 404


class MethodNotAllowed(ClientFacingError):
    status_code = 405


class ServiceUnavailable(ClientFacingError):
    status_code = 503
    error_type = "server_error"


class UpstreamError(ClientFacingError):
    """The upstream answered with an error or did not answer; its status is kept (429 stays 429)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        error_type: str = "upstream_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.status_code = status_code
        self.error_type = error_type


class CacheError(GatewayError):
    """A fault in the cache (store, index, embedder). Never shown to a client: the request fails open."""


class StoreError(CacheError):
    """The document store failed."""


class ConfigError(GatewayError):
    """The configuration file is invalid; `problems` lists every error, each with its YAML path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems
