"""The sentence-transformers backend, loading a local model folder or a hub name."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embeddings.model_folder import PACKAGED_MODEL, model_name, resolve_model_path
from embeddings.protocol import EmbeddedText

__all__ = ["PACKAGED_MODEL", "SentenceTransformerEmbedder", "resolve_model_path"]


class SentenceTransformerEmbedder:
    """Loads the model once; `embed` is CPU-bound and must run on a worker thread."""

    def __init__(self, model: str = PACKAGED_MODEL, *, device: str = "cpu", threads: int = 1) -> None:
        path = resolve_model_path(model)
        import torch
        from sentence_transformers import SentenceTransformer

        # With 2 intra-op threads torch collapses when the other core is busy (measured): one is
        # steadier, and the batcher gives throughput by batching instead.
        torch.set_num_threads(threads)
        # A local folder needs no hub: never let the hub client try (there may be no network).
        self._model = SentenceTransformer(path, device=device, local_files_only=Path(path).is_dir())
        self._tokenizer = self._model.tokenizer
        self._window = int(self._model.max_seq_length or 512)
        # Renamed in sentence-transformers 6; the old name still works on older releases.
        get_dimension = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension
        )
        dimension = get_dimension()
        if dimension is None:
            raise ValueError(f"model {model!r} does not report its embedding dimension")
        self._dimension = int(dimension)
        # A local folder is named by its content, not its path: see `name`.
        self._name = model_name(model, path, None)

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def name(self) -> str:
        """Identifies the model whose vectors these are: the packaged model or a hub name as given; a
        local folder as its name and a digest of its weights, so that a store can tell a re-tuned
        model's vectors from the old ones, and a copy of the same model from another model."""
        return self._name

    @property
    def window_tokens(self) -> int:
        return self._window

    def embed(self, texts: list[str]) -> list[EmbeddedText]:
        lengths = [len(ids) for ids in self._tokenizer(texts, add_special_tokens=True)["input_ids"]]
        vectors = self._model.encode(
            texts,
            batch_size=max(1, len(texts)),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32, copy=False)
        return [
            EmbeddedText(vector=vector, truncated=length > self._window)
            for vector, length in zip(vectors, lengths, strict=True)
        ]
