"""A model folder's ONNX graph: exported once from its own weights, cached on disk, checked on load.

The graph is the sentence-transformers model itself (whatever its modules.json lists: for MiniLM the
transformer, mean pooling over the attention mask and the Normalize module) traced by the TorchScript
exporter, so pooling and normalization are sentence-transformers' own code, not a copy of it. Before
a graph is kept it must reproduce the torch model's vectors on a probe batch.

Files in `cache_dir`, named by the weights' digest and a digest of the folder's settings:
`<weights>-<settings>-v<N>-<fp32|int8>.onnx`, and a JSON manifest beside it with the graph's SHA-256.
Both are written to a temporary file and renamed, the manifest last: a graph cut short by a crash,
or altered on disk, fails the checksum and is exported again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from embeddings.protocol import Vector
from embeddings.tokenizer import WindowTokenizer

logger = logging.getLogger("semcache.embeddings")

Quantize = Literal["none", "int8"]

# Raised when the graph or its recipe changes, so that old files are not taken for new ones.
FORMAT_VERSION = 1
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_OUTPUT = "sentence_embedding"
_OPSET = 17  # LayerNormalization as one operator
# Texts of several lengths, cases and scripts: the probe batch is padded, so the mask is exercised.
_PROBE = (
    "How do I reverse a list in Python?",
    "THE QUICK BROWN FOX jumps over the lazy dog, twice.",
    "Wie spät ist es in Zürich? 東京の天気は",
    "x",
)
# Least cosine to the reference on every probe text: fp32 must match torch; int8 (checked against the
# fp32 graph) must only be the same model, its cost is measured in bench/embedders.py.
_PROBE_SIMILARITY: dict[Quantize, float] = {"none": 0.9999, "int8": 0.95}


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportedGraph:
    path: Path
    window_tokens: int
    dimension: int


def graph_key(folder: Path, digest: str) -> str:
    """The weights' digest, and one of the folder's JSON files (modules, pooling, window, tokenizer):
    they shape the graph too, so that editing one gives a new graph rather than the old one reused."""
    settings = hashlib.sha256()
    for path in sorted(folder.rglob("*.json")):
        settings.update(path.relative_to(folder).as_posix().encode())
        settings.update(path.read_bytes())
    return f"{digest}-{settings.hexdigest()[:8]}"


def graph_stem(key: str, quantize: Quantize) -> str:
    return f"{key}-v{FORMAT_VERSION}-{'fp32' if quantize == 'none' else quantize}"


def exported_graph(folder: Path, digest: str, *, cache_dir: Path, quantize: Quantize) -> ExportedGraph:
    """The cached graph of the model in `folder` whose weights have `digest`; exported (and
    quantized) first when it is missing or fails its checksum. Blocking: seconds on a first export."""
    key = graph_key(folder, digest)
    found = _cached(cache_dir, key, quantize)
    if found is not None:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    if quantize == "none":
        return _export_fp32(folder, key, cache_dir)
    return _quantize_int8(folder, exported_graph(folder, digest, cache_dir=cache_dir, quantize="none"), key)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached(cache_dir: Path, key: str, quantize: Quantize) -> ExportedGraph | None:
    stem = graph_stem(key, quantize)
    graph, manifest_path = cache_dir / f"{stem}.onnx", cache_dir / f"{stem}.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        problem = _manifest_problem(manifest, graph, key)
        if problem is None:
            return ExportedGraph(
                path=graph, window_tokens=int(manifest["window_tokens"]), dimension=int(manifest["dimension"])
            )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        problem = f"{type(exc).__name__}: {exc}"
    logger.warning("cached ONNX graph %s is unusable (%s); exporting it again", graph, problem)
    return None


def _manifest_problem(manifest: Any, graph: Path, key: str) -> str | None:
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        return "written by another version"
    if manifest.get("key") != key:
        return "exported from another model"
    if sha256_of(graph) != manifest.get("onnx_sha256"):
        return "its checksum does not match: cut short or altered"
    return None


def _export_fp32(folder: Path, key: str, cache_dir: Path) -> ExportedGraph:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True).eval()
    window = int(model.max_seq_length or 512)
    tokenizer = WindowTokenizer(folder, window_tokens=window)
    reference = model.encode(list(_PROBE), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)

    class Graph(torch.nn.Module):
        """Positional tensors in, the model's sentence embedding out: what the exporter can trace."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            features = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.model(features)[_OUTPUT]

    # Traced on a padded batch, so that no "mask is all ones" shortcut is baked into the graph.
    example = tokenizer.encode(list(_PROBE[:2])).feeds
    axes = {name: {0: "batch", 1: "sequence"} for name in _INPUTS}
    target = cache_dir / f"{graph_stem(key, 'none')}.onnx"
    with _temporary_beside(target) as temporary, torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python branch on a tensor's shape; whether the graph it
        # produced is right for other shapes is what the probe below checks.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Graph().eval(),
            tuple(torch.from_numpy(example[name]) for name in _INPUTS),
            str(temporary),
            input_names=list(_INPUTS),
            output_names=[_OUTPUT],
            dynamic_axes={**axes, _OUTPUT: {0: "batch"}},
            opset_version=_OPSET,
            dynamo=False,
        )
        _probe(temporary, tokenizer, reference, "none")
        return _keep(temporary, target, key, window, int(reference.shape[1]))


def _quantize_int8(folder: Path, fp32: ExportedGraph, key: str) -> ExportedGraph:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tokenizer = WindowTokenizer(folder, window_tokens=fp32.window_tokens)
    reference = run_graph(open_session(fp32.path, threads=1), tokenizer.encode(list(_PROBE)).feeds)
    target = fp32.path.parent / f"{graph_stem(key, 'int8')}.onnx"
    with _temporary_beside(target) as temporary:
        # Weights stored as int8, activations quantized per batch at run time: no calibration data.
        # One scale per output channel: with one per tensor MiniLM's vectors moved to cosine 0.91
        # of fp32 on the probe (measured), per channel ≥ 0.98.
        quantize_dynamic(str(fp32.path), str(temporary), weight_type=QuantType.QInt8, per_channel=True)
        _probe(temporary, tokenizer, reference, "int8")
        return _keep(temporary, target, key, fp32.window_tokens, fp32.dimension)


def open_session(path: Path, *, threads: int) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # One model call at a time (the batcher's one thread): no pool for parallel branches.
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_graph(session: Any, feeds: dict[str, Any]) -> Vector:
    """Unit vectors from the graph (renormalized in float32: the torch backend asks for
    `normalize_embeddings` too, so a model without a Normalize module matches it)."""
    wanted = {name: feeds[name] for name in (item.name for item in session.get_inputs())}
    vectors = np.asarray(session.run([_OUTPUT], wanted)[0], dtype=np.float32)
    norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    result: Vector = (vectors / norms).astype(np.float32, copy=False)
    return result


def _probe(graph: Path, tokenizer: WindowTokenizer, reference: Vector, quantize: Quantize) -> None:
    """Load the new graph as the embedder will and compare it with the reference vectors."""
    vectors = run_graph(open_session(graph, threads=1), tokenizer.encode(list(_PROBE)).feeds)
    if vectors.shape != reference.shape:
        raise ValueError(f"the exported graph gives vectors of shape {vectors.shape}, not {reference.shape}")
    least = float(np.min(np.sum(vectors * reference, axis=1)))
    if least < _PROBE_SIMILARITY[quantize]:
        raise ValueError(f"the exported graph's vectors differ from the model's (least cosine {least:.6f})")


@contextlib.contextmanager
def _temporary_beside(target: Path) -> Iterator[Path]:
    """A fresh name in the target's folder (so the rename is atomic), removed unless it was kept."""
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
    finally:
        temporary.unlink(missing_ok=True)


def _keep(temporary: Path, target: Path, key: str, window: int, dimension: int) -> ExportedGraph:
    checksum = sha256_of(temporary)
    temporary.chmod(0o644)  # mkstemp's 0600 would keep a shared cache folder's graphs from other users
    os.replace(temporary, target)
    manifest = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "onnx_sha256": checksum,
        "window_tokens": window,
        "dimension": dimension,
    }
    manifest_path = target.with_suffix(".json")
    with _temporary_beside(manifest_path) as written:
        written.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        written.chmod(0o644)
        os.replace(written, manifest_path)
    logger.info("exported the ONNX graph %s", target)
    return ExportedGraph(path=target, window_tokens=window, dimension=dimension)
