"""The cache as a library: the `SemanticCache` facade, the decision (engine), the indexes, scopes,
feedback, single-flight and background tasks. Knows nothing of HTTP."""
