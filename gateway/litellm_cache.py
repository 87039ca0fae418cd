"""Kept so that `from gateway.litellm_cache import LiteLLMSemanticCache` (the documented import) keeps
working; the integration lives in `gateway.http.litellm_cache`. Importing it imports litellm."""

from gateway.errors import LiteLLMDependencyMissing
from gateway.http.litellm_cache import LiteLLMSemanticCache, SemanticCacheHeaders

__all__ = ["LiteLLMDependencyMissing", "LiteLLMSemanticCache", "SemanticCacheHeaders"]
