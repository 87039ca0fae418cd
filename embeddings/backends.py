"""From the configured backend name to an embedder: a table, and the fall-back to torch."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from embeddings.errors import BackendUnavailable
from embeddings.onnx_export import Quantize
from embeddings.onnx_runtime import OnnxEmbedder
from embeddings.protocol import Embedder
from embeddings.sentence_transformer import SentenceTransformerEmbedder

logger = logging.getLogger("semcache.embeddings")

Backend = Literal["onnx", "torch"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbedderSpec:
    model: str
    backend: Backend = "onnx"
    threads: int = 1
    quantize: Quantize = "none"
    # Where exported ONNX graphs are kept (by the weights' digest); unused by torch.
    onnx_cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "semcache" / "onnx")


def _torch(spec: EmbedderSpec) -> Embedder:
    return SentenceTransformerEmbedder(spec.model, threads=spec.threads)


def _onnx(spec: EmbedderSpec) -> Embedder:
    try:
        return OnnxEmbedder(spec.model, cache_dir=spec.onnx_cache_dir, threads=spec.threads, quantize=spec.quantize)
    except BackendUnavailable as exc:
        # Serving slower beats not serving: torch runs every model sentence-transformers loads.
        logger.warning("ONNX backend unavailable, embedding with torch instead: %s", exc)
        return _torch(spec)


_BACKENDS: dict[Backend, Callable[[EmbedderSpec], Embedder]] = {"onnx": _onnx, "torch": _torch}


def open_embedder(spec: EmbedderSpec) -> Embedder:
    """Load the model (seconds; the ONNX backend's first run also exports it): call off the event loop."""
    return _BACKENDS[spec.backend](spec)
