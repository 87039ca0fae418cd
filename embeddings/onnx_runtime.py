"""The ONNX Runtime backend: the model's own graph (embeddings/onnx_export.py) run without torch.

For one short prompt, the hit path's whole cost, it is a few times faster than the torch forward
pass on a CPU (bench/embedders.py) and gives the same vectors (cosine ≥ 0.9999, tests/embeddings/
test_onnx.py), so it shares the torch backend's name: a store keeps its vectors across the switch.
Quantized to int8 the vectors move slightly, so the name says so and a store re-embeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embeddings.errors import BackendUnavailable
from embeddings.model_folder import PACKAGED_MODEL, model_name, resolve_model_path, weights_digest
from embeddings.onnx_export import Quantize, exported_graph, open_session, run_graph
from embeddings.protocol import EmbeddedText
from embeddings.tokenizer import WindowTokenizer


class OnnxEmbedder:
    """Exports (first time) and loads the graph; `embed` is CPU-bound and must run on a worker thread.

    Raises `BackendUnavailable` for a model this path cannot run: not a local folder (a hub name
    would need a download), no fast tokenizer, or an export that fails or does not reproduce the
    model's vectors, or a cache folder it cannot write."""

    def __init__(
        self,
        model: str = PACKAGED_MODEL,
        *,
        cache_dir: Path,
        threads: int = 1,
        quantize: Quantize = "none",
    ) -> None:
        folder = Path(resolve_model_path(model))
        if not folder.is_dir():
            raise BackendUnavailable(f"{model!r} is not a local model folder: the ONNX backend exports local ones only")
        if not (folder / "tokenizer.json").is_file():
            raise BackendUnavailable(f"{folder} has no tokenizer.json (a fast tokenizer)")
        digest = weights_digest(folder)
        try:
            graph = exported_graph(folder, digest, cache_dir=cache_dir, quantize=quantize)
        except Exception as exc:  # the exporter's, onnxruntime's and the cache folder's boundary: torch still can
            raise BackendUnavailable(f"could not export {model!r} to ONNX: {type(exc).__name__}: {exc}") from exc
        self._tokenizer = WindowTokenizer(folder, window_tokens=graph.window_tokens)
        self._session: Any = open_session(graph.path, threads=threads)
        self._window = graph.window_tokens
        self._dimension = graph.dimension
        self._graph_path = graph.path
        base = model_name(model, str(folder), digest)
        self._name = base if quantize == "none" else f"{base}+{quantize}"

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def name(self) -> str:
        """The torch backend's name for the same weights (the same vectors); `+int8` when quantized."""
        return self._name

    @property
    def window_tokens(self) -> int:
        return self._window

    @property
    def graph_path(self) -> Path:
        return self._graph_path

    def embed(self, texts: list[str]) -> list[EmbeddedText]:
        if not texts:
            return []
        batch = self._tokenizer.encode(texts)
        vectors = run_graph(self._session, batch.feeds)
        return [
            EmbeddedText(vector=vector, truncated=truncated)
            for vector, truncated in zip(vectors, batch.truncated, strict=True)
        ]
