"""Why an embedding was not produced, or an embedder not built.

EmbedderError          per request: the gateway treats each as a cache miss, never a failure
├── EmbedderOverloaded
├── EmbedderTimeout
└── EmbedderFailed
BackendUnavailable     at start: this backend cannot run this model; the caller falls back
"""


class EmbedderError(Exception):
    """Base of every embedding failure."""


class EmbedderOverloaded(EmbedderError):
    """The bounded queue is full: shed this request rather than queue without limit."""


class EmbedderTimeout(EmbedderError):
    """The embedding did not arrive within the request's deadline."""


class EmbedderFailed(EmbedderError):
    """The model raised, or the batcher is not running."""


class BackendUnavailable(Exception):
    """A backend cannot run this model (the ONNX one: not a local folder, or its export failed).
    Raised when the embedder is built, never per request; the caller falls back to torch."""
