"""The front doors: the proxy's routes, the ASGI middleware, the pass-through, the admin routes, the
LiteLLM cache hook, and the responses they share (a lookup → JSON or SSE with `x-semcache-*` headers).
The only layer that imports Starlette (besides `gateway.app`)."""
