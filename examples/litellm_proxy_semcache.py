"""semcache inside the LiteLLM *proxy*: the callback module that examples/litellm_proxy_config.yaml
names. The LiteLLM proxy loads `litellm_proxy_semcache.semcache_headers` from the folder of its
config file; importing this module installs semcache as `litellm.cache`, before the proxy builds its
router, and the router then looks every chat and text completion up in it (and stores the answers).
`semcache_headers` adds `x-semcache`, `x-semcache-similarity` and `x-semcache-category` to the
proxy's responses. The cache opens on the first request and closes at the proxy's shutdown (it calls
`litellm.cache.disconnect()`).

Tenants: the caller's LiteLLM virtual key (the proxy's `user_api_key`), see gateway/litellm_cache.py.
One proxy worker per cache file: each worker process would hold its own index.

The LiteLLM proxy server (`pip install 'litellm[proxy]'`) is not installed in this project, so this
module is checked by tests/test_examples.py by importing it, not by running a proxy.

    SEMCACHE_CONFIG=my-semcache.yaml litellm --config examples/litellm_proxy_config.yaml

The LiteLLM proxy's plugin model is module-level objects: this module builds them at import. The
`gateway` package itself keeps no module-level state.
"""

from __future__ import annotations

import os

from gateway import SemanticCache, load_config, resolve_secrets
from gateway.litellm_cache import LiteLLMSemanticCache, SemanticCacheHeaders
from gateway.upstream import import_litellm

litellm = import_litellm()
_config = resolve_secrets(load_config(os.environ.get("SEMCACHE_CONFIG", "semcache.yaml")), os.environ)
litellm.cache = LiteLLMSemanticCache(SemanticCache(_config)).litellm_cache()
semcache_headers = SemanticCacheHeaders()
