"""Why an embedding was not produced. The gateway treats each as a cache miss, never a failure."""


class EmbedderError(Exception):
    """Base of every embedding failure."""


class EmbedderOverloaded(EmbedderError):
    """The bounded queue is full: shed this request rather than queue without limit."""


class EmbedderTimeout(EmbedderError):
    """The embedding did not arrive within the request's deadline."""


class EmbedderFailed(EmbedderError):
    """The model raised, or the batcher is not running."""
