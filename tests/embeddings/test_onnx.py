"""The ONNX Runtime backend against the torch one, with the real packaged model: the same vectors,
the same hit decisions, the same truncation flag; and its on-disk cache of exported graphs."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from embeddings import (
    PACKAGED_MODEL,
    Embedder,
    EmbedderSpec,
    OnnxEmbedder,
    SentenceTransformerEmbedder,
    open_embedder,
)
from embeddings.model_folder import resolve_model_path, weights_digest
from embeddings.onnx_export import graph_key, sha256_of
from embeddings.protocol import Vector

_: Embedder = OnnxEmbedder.__new__(OnnxEmbedder)

# Read by path, never copied into the repository (third-party, research licences).
PAIRS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pairs"
PAIRS_PER_FILE = 200  # the first ones of each file: enough to see a difference, quick on a shared CPU
THRESHOLDS = (0.8, 0.9, 0.95)
# Within this of a threshold, float rounding may put a pair on either side: no decision is asserted.
MARGIN = 1e-4

HAND_WRITTEN = [
    ("How do I reverse a list in Python?", "python: reverse a list"),
    ("What is the capital of France?", "Which city is France's capital?"),
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("Write a haiku about autumn leaves", "Compose a short haiku on falling leaves in autumn"),
    ("How many grams are in a pound?", "Convert one pound to grams"),
    ("Explain TCP slow start", "What is the boiling point of water at sea level?"),
    ("x", "y"),
    ("SELECT * FROM users WHERE id = 1;", "sql query to fetch the user with id 1"),
    ("Wie spät ist es in Zürich?", "What time is it in Zurich?"),
    ("Summarize: " + " ".join(["the quick brown fox jumps over the lazy dog"] * 20), "Summarize a story about a fox"),
]


@pytest.fixture(scope="module")
def onnx_cache(onnx_graphs: Path) -> Path:
    return onnx_graphs


@pytest.fixture(scope="module")
def onnx_embedder(onnx_cache: Path) -> OnnxEmbedder:
    return OnnxEmbedder(cache_dir=onnx_cache)


@pytest.fixture(scope="module")
def int8_embedder(onnx_cache: Path, onnx_embedder: OnnxEmbedder) -> OnnxEmbedder:
    return OnnxEmbedder(cache_dir=onnx_cache, quantize="int8")


def vectors(embedder: Embedder, texts: list[str], batch: int = 32) -> Vector:
    """In batches, as the batcher calls it: padded to each batch's longest text."""
    chunks = [embedder.embed(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    return np.stack([item.vector for chunk in chunks for item in chunk])


def assert_equivalent(real_embedder: Embedder, onnx_embedder: OnnxEmbedder, pairs: list[tuple[str, str]]) -> None:
    texts = [text for pair in pairs for text in pair]
    torch_vectors, onnx_vectors = vectors(real_embedder, texts), vectors(onnx_embedder, texts)

    assert np.sum(torch_vectors * onnx_vectors, axis=1).min() >= 0.9999
    torch_similarity = np.sum(torch_vectors[0::2] * torch_vectors[1::2], axis=1)
    onnx_similarity = np.sum(onnx_vectors[0::2] * onnx_vectors[1::2], axis=1)
    for threshold in THRESHOLDS:
        clear = np.abs(torch_similarity - threshold) >= MARGIN
        assert ((torch_similarity >= threshold) == (onnx_similarity >= threshold))[clear].all(), threshold


def read_pairs(path: Path) -> list[tuple[str, str]]:
    pairs = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            pairs.append((str(row["a"]), str(row["b"])))
            if len(pairs) == PAIRS_PER_FILE:
                break
    return pairs


def test_satisfies_the_embedder_protocol_and_shares_the_torch_name(
    onnx_embedder: OnnxEmbedder, real_embedder: Embedder
) -> None:
    assert isinstance(onnx_embedder, Embedder)
    assert onnx_embedder.dimension == real_embedder.dimension == 384
    # The same vectors, so the same name: a store keeps its entries across the switch of backend.
    assert onnx_embedder.name == real_embedder.name == PACKAGED_MODEL
    assert onnx_embedder.window_tokens == 256
    assert onnx_embedder.embed([]) == []


def test_vectors_match_torch_on_hand_written_pairs(real_embedder: Embedder, onnx_embedder: OnnxEmbedder) -> None:
    assert_equivalent(real_embedder, onnx_embedder, HAND_WRITTEN)
    for item in onnx_embedder.embed(["a question", "x"]):
        assert item.vector.dtype == np.float32
        assert abs(float(np.linalg.norm(item.vector)) - 1.0) < 1e-5


@pytest.mark.parametrize("name", ["qqp_dev", "mrpc", "stsb"])
def test_vectors_and_hit_decisions_match_torch_on_the_shared_pairs(
    name: str, real_embedder: Embedder, onnx_embedder: OnnxEmbedder
) -> None:
    path = PAIRS / f"{name}.jsonl"
    if not path.is_file():
        pytest.skip(f"no shared pairs at {path}")
    assert_equivalent(real_embedder, onnx_embedder, read_pairs(path))


def test_truncation_flag_matches_torch(real_embedder: Embedder, onnx_embedder: OnnxEmbedder) -> None:
    # [CLS] + word pieces + [SEP]: 254 words fill the 256-token window exactly, 255 overflow it.
    texts = ["a short question", " ".join(["word"] * 254), " ".join(["word"] * 255), " ".join(["word"] * 2000)]

    onnx_items, torch_items = onnx_embedder.embed(texts), real_embedder.embed(texts)

    assert [item.truncated for item in onnx_items] == [item.truncated for item in torch_items]
    assert [item.truncated for item in onnx_items] == [False, False, True, True]
    for ours, theirs in zip(onnx_items, torch_items, strict=True):
        assert float(ours.vector @ theirs.vector) >= 0.9999


def test_int8_is_the_same_model_under_another_name(int8_embedder: OnnxEmbedder, onnx_embedder: OnnxEmbedder) -> None:
    texts = [text for pair in HAND_WRITTEN for text in pair]

    # The vectors move a little (bench/embedders.py measures what that costs), so the name says so.
    assert int8_embedder.name == f"{PACKAGED_MODEL}+int8"
    assert np.sum(vectors(int8_embedder, texts) * vectors(onnx_embedder, texts), axis=1).min() > 0.95


def test_a_cached_graph_is_reused(onnx_cache: Path, onnx_embedder: OnnxEmbedder) -> None:
    before = onnx_embedder.graph_path.stat().st_mtime_ns

    again = OnnxEmbedder(cache_dir=onnx_cache)

    assert again.graph_path == onnx_embedder.graph_path
    assert again.graph_path.stat().st_mtime_ns == before


@pytest.mark.parametrize("damage", ["cut_short", "flipped_byte"])
def test_a_damaged_cached_graph_is_detected_and_exported_again(
    damage: str, onnx_cache: Path, onnx_embedder: OnnxEmbedder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.copytree(onnx_cache, tmp_path, dirs_exist_ok=True)
    # The int8 graph: re-made from the fp32 one in seconds; the fp32 one is cut short too, below.
    int8 = OnnxEmbedder(cache_dir=tmp_path, quantize="int8").graph_path
    graph = int8 if damage == "flipped_byte" else tmp_path / onnx_embedder.graph_path.name
    data = bytearray(graph.read_bytes())
    if damage == "cut_short":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF  # loads fine, wrong weights: only the checksum notices
    graph.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="semcache.embeddings"):
        repaired = OnnxEmbedder(cache_dir=tmp_path, quantize="int8" if graph == int8 else "none")

    assert "exporting it again" in caplog.text
    assert repaired.graph_path == graph
    manifest = json.loads(graph.with_suffix(".json").read_text(encoding="utf-8"))
    assert manifest["onnx_sha256"] == sha256_of(graph)
    reference = onnx_embedder.embed(["How do I reverse a list in Python?"])[0].vector
    assert float(repaired.embed(["How do I reverse a list in Python?"])[0].vector @ reference) > 0.95
    assert not list(tmp_path.glob("*.tmp")), "temporary files are removed"


def test_the_cache_key_follows_the_weights(onnx_cache: Path, onnx_embedder: OnnxEmbedder, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    original = Path(resolve_model_path(PACKAGED_MODEL))
    copy = tmp_path / "mini"
    shutil.copytree(original, copy)
    # An identical copy: the same digest, so the same cached graph (no export).
    assert OnnxEmbedder(str(copy), cache_dir=onnx_cache).graph_path == onnx_embedder.graph_path
    # The window and pooling settings shape the graph too: editing them is another key.
    settings = copy / "sentence_bert_config.json"
    key = graph_key(copy, weights_digest(copy))
    settings.write_text(settings.read_text(encoding="utf-8").replace("256", "128"), encoding="utf-8")
    assert graph_key(copy, weights_digest(copy)) != key
    settings.write_text(settings.read_text(encoding="utf-8").replace("128", "256"), encoding="utf-8")
    assert graph_key(copy, weights_digest(copy)) == key
    weights = load_file(str(copy / "model.safetensors"))
    rng = np.random.default_rng(0)
    for key, tensor in weights.items():
        if key.endswith("intermediate.dense.weight"):
            weights[key] = tensor + rng.normal(0, 0.05, tensor.shape).astype(tensor.dtype)
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})

    retuned = OnnxEmbedder(str(copy), cache_dir=onnx_cache)

    assert weights_digest(copy) != weights_digest(original)
    assert retuned.graph_path != onnx_embedder.graph_path
    assert weights_digest(copy) in retuned.graph_path.name
    assert retuned.name == f"mini@{weights_digest(copy)}"
    # Its graph is the new weights', as the torch backend loads them, not the old graph.
    text = ["How do I reverse a list in Python?"]
    torch_retuned = SentenceTransformerEmbedder(str(copy)).embed(text)[0].vector
    assert float(retuned.embed(text)[0].vector @ torch_retuned) >= 0.9999
    assert float(retuned.embed(text)[0].vector @ onnx_embedder.embed(text)[0].vector) < 0.9999


def test_the_backend_table(onnx_cache: Path, onnx_embedder: OnnxEmbedder) -> None:
    onnx = open_embedder(EmbedderSpec(model=PACKAGED_MODEL, onnx_cache_dir=onnx_cache))
    torch = open_embedder(EmbedderSpec(model=PACKAGED_MODEL, backend="torch", onnx_cache_dir=onnx_cache))

    assert isinstance(onnx, OnnxEmbedder) and onnx.graph_path == onnx_embedder.graph_path
    assert isinstance(torch, SentenceTransformerEmbedder)


def test_a_model_the_onnx_path_cannot_run_falls_back_to_torch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "no-fast-tokenizer"
    shutil.copytree(Path(resolve_model_path(PACKAGED_MODEL)), folder)
    (folder / "tokenizer.json").unlink()

    with caplog.at_level(logging.WARNING, logger="semcache.embeddings"):
        embedder = open_embedder(EmbedderSpec(model=str(folder), onnx_cache_dir=tmp_path / "onnx"))

    assert isinstance(embedder, SentenceTransformerEmbedder)
    assert "embedding with torch instead" in caplog.text
    assert "tokenizer.json" in caplog.text
