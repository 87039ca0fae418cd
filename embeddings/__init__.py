"""Embedder backends and the micro-batcher. Never imports `gateway`."""

from embeddings.batcher import BatcherConfig, EmbeddingBatcher
from embeddings.errors import EmbedderError, EmbedderFailed, EmbedderOverloaded, EmbedderTimeout
from embeddings.protocol import EmbeddedText, Embedder, Vector
from embeddings.sentence_transformer import PACKAGED_MODEL, SentenceTransformerEmbedder

__all__ = [
    "PACKAGED_MODEL",
    "BatcherConfig",
    "EmbeddedText",
    "Embedder",
    "EmbedderError",
    "EmbedderFailed",
    "EmbedderOverloaded",
    "EmbedderTimeout",
    "EmbeddingBatcher",
    "SentenceTransformerEmbedder",
    "Vector",
]
