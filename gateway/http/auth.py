"""Caller authentication for the /v1 routes: where the config requires it, only a key listed under
`tenants` is served. Without it, a gateway that calls the upstream with its own key would spend that
key for anyone who can reach its port."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection

from starlette.requests import Request
from starlette.responses import Response

from gateway.config import GatewayConfig
from gateway.errors import Unauthorized
from gateway.http.responses import bearer_key, error_response

# What OpenAI answers for a missing and for a wrong key (401, type invalid_request_error); the key
# itself is not echoed, not even masked.
_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_WRONG_KEY = "Incorrect API key provided. Use a key listed for this gateway (ask its operator)."
_CHALLENGE = {"www-authenticate": "Bearer"}


class ClientKeys:
    """The listed client keys, by SHA-256; `None` from `refusal` means the caller may go on."""

    def __init__(self, digests: Collection[str], *, required: bool) -> None:
        self._digests = tuple(bytes.fromhex(digest) for digest in digests)
        self.required = required

    @classmethod
    def from_config(cls, config: GatewayConfig) -> ClientKeys:
        return cls(config.tenant_by_key_sha256.keys(), required=config.requires_listed_key)

    def is_listed(self, api_key: str) -> bool:
        presented = hashlib.sha256(api_key.encode()).digest()
        # Every digest is compared, each in constant time, so the time taken says nothing about
        # which listed key a guess came close to.
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(presented, digest)
        return found

    def refusal(self, request: Request) -> Response | None:
        if not self.required:
            return None
        api_key = bearer_key(request)
        if api_key is None:
            return error_response(Unauthorized(_NO_KEY), _CHALLENGE)
        if not self.is_listed(api_key):
            return error_response(Unauthorized(_WRONG_KEY, code="invalid_api_key"), _CHALLENGE)
        return None
