"""Embedder backends and the micro-batcher. Never imports `gateway`."""

from embeddings.backends import Backend, EmbedderSpec, open_embedder
from embeddings.batcher import BatcherConfig, EmbeddingBatcher
from embeddings.errors import BackendUnavailable, EmbedderError, EmbedderFailed, EmbedderOverloaded, EmbedderTimeout
from embeddings.model_folder import PACKAGED_MODEL
from embeddings.onnx_export import Quantize
from embeddings.onnx_runtime import OnnxEmbedder
from embeddings.protocol import EmbeddedText, Embedder, Vector
from embeddings.sentence_transformer import SentenceTransformerEmbedder

__all__ = [
    "PACKAGED_MODEL",
    "Backend",
    "BackendUnavailable",
    "BatcherConfig",
    "EmbeddedText",
    "Embedder",
    "EmbedderError",
    "EmbedderFailed",
    "EmbedderOverloaded",
    "EmbedderSpec",
    "EmbedderTimeout",
    "EmbeddingBatcher",
    "OnnxEmbedder",
    "Quantize",
    "SentenceTransformerEmbedder",
    "Vector",
    "open_embedder",
]
