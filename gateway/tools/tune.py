"""`semcache tune`: fine-tune the embedding model on your own labelled pairs.

A general-purpose embedder puts "price of X in 2023" and "in 2024" next to each other; a few
thousand of your own labelled pairs teach it which differences matter in your traffic. The loss is
sentence-transformers' `OnlineContrastiveLoss`: within each batch it pulls together the duplicate
pairs that are still far apart and pushes apart the non-duplicates that are still close (cosine
distance, `margin`), so the easy pairs, most of any real set, cost no gradient.

The tuned model is a sentence-transformers folder; point `embedding.model` at it. A cache filled
by another model is not searched with it (the store remembers which model made its vectors).
Synchronous and CPU-bound: a command-line job, never run inside the gateway.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from embeddings.sentence_transformer import resolve_model_path
from gateway.tools.calibrate import LabelledPair

Progress = Callable[[str], None]
TUNE_RECORD = "semcache-tune.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class TuneSettings:
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-5
    # Share of the steps over which the learning rate ramps up from 0: a pretrained model's
    # first large steps are the ones that can wreck it.
    warmup_share: float = 0.1
    # Cosine distance below which a non-duplicate pair still costs loss.
    margin: float = 0.5
    seed: int = 7
    threads: int = 1
    device: str | None = None  # None: "cuda" where torch sees one, else "cpu"

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            problems.append(f"batch_size must be >= 2, got {self.batch_size}")
        if not 0 < self.learning_rate < 1:
            problems.append(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not 0 <= self.warmup_share < 1:
            problems.append(f"warmup_share must be in [0, 1), got {self.warmup_share}")
        if not 0 < self.margin <= 2:
            problems.append(f"margin must be in (0, 2], got {self.margin}")
        if self.threads < 1:
            problems.append(f"threads must be >= 1, got {self.threads}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True, slots=True, kw_only=True)
class TuneResult:
    out: Path
    base_model: str
    pairs: int
    duplicates: int
    steps: int
    first_loss: float
    last_loss: float
    seconds: float
    device: str


def tune_embedder(
    pairs: Sequence[LabelledPair],
    *,
    base_model: str,
    out: Path,
    settings: TuneSettings = TuneSettings(),
    progress: Progress = lambda message: None,
) -> TuneResult:
    """Fine-tune `base_model` on `pairs` and save it to `out` (a sentence-transformers folder, with
    `semcache-tune.json` beside the weights saying how it was made)."""
    duplicates = sum(1 for pair in pairs if pair.same)
    if duplicates == 0 or duplicates == len(pairs):
        raise ValueError(f"need both duplicate and non-duplicate pairs, got {duplicates} of {len(pairs)} duplicates")
    import torch
    from sentence_transformers import SentenceTransformer

    try:  # the layout of sentence-transformers 6; older releases export it from `losses`
        from sentence_transformers.sentence_transformer.losses import OnlineContrastiveLoss
    except ImportError:
        from sentence_transformers.losses import OnlineContrastiveLoss  # type: ignore[import-not-found,no-redef]
    from transformers import get_linear_schedule_with_warmup

    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = resolve_model_path(base_model)
    model = SentenceTransformer(path, device=device, local_files_only=Path(path).is_dir())
    loss = OnlineContrastiveLoss(model, margin=settings.margin)
    order = list(pairs)
    batches_per_epoch = math.ceil(len(order) / settings.batch_size)
    total = batches_per_epoch * settings.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    schedule = get_linear_schedule_with_warmup(optimizer, int(total * settings.warmup_share), total)  # type: ignore[no-untyped-call]
    shuffle = random.Random(settings.seed)
    losses: list[float] = []
    model.train()
    for epoch in range(settings.epochs):
        shuffle.shuffle(order)
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            features = [
                _tokenized(model, [pair.a for pair in batch], device),
                _tokenized(model, [pair.b for pair in batch], device),
            ]
            labels = torch.tensor([int(pair.same) for pair in batch], device=device)
            value = loss(features, labels)
            value.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(float(value.detach()))
            step = len(losses)
            if step == 1 or step % 50 == 0 or step == total:
                recent = losses[-50:]
                progress(
                    f"epoch {epoch + 1}/{settings.epochs}, step {step}/{total}: "
                    f"loss {sum(recent) / len(recent):.4f} ({time.perf_counter() - started:.0f} s)"
                )
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    result = TuneResult(
        out=out,
        base_model=base_model,
        pairs=len(pairs),
        duplicates=duplicates,
        steps=len(losses),
        first_loss=_mean(losses[: max(1, batches_per_epoch // 10)]),
        last_loss=_mean(losses[-max(1, batches_per_epoch // 10) :]),
        seconds=time.perf_counter() - started,
        device=device,
    )
    record: dict[str, Any] = {
        "base_model": base_model,
        "pairs": result.pairs,
        "duplicates": duplicates,
        "loss": "OnlineContrastiveLoss",
        "settings": asdict(settings),
        "steps": result.steps,
        "first_loss": result.first_loss,
        "last_loss": result.last_loss,
        "seconds": round(result.seconds, 1),
        "device": device,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / TUNE_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return result


def _tokenized(model: Any, texts: list[str], device: str) -> dict[str, Any]:
    # Renamed `preprocess` in sentence-transformers 6; `tokenize` still works, with a warning.
    prepare = getattr(model, "preprocess", None) or model.tokenize
    features = prepare(texts)
    return {name: value.to(device) if hasattr(value, "to") else value for name, value in features.items()}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan
