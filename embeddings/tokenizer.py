"""A model folder's fast tokenizer (`tokenizer.json`), cut at the model's window and padded to the
longest text of the batch, as sentence-transformers tokenizes for the torch backend."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

Ids = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenBatch:
    """The graph's inputs by name, and which texts were cut to fit the window."""

    feeds: dict[str, Ids]
    truncated: list[bool]


class WindowTokenizer:
    """Not thread-safe; used from the embedder's one thread."""

    def __init__(self, folder: Path, *, window_tokens: int) -> None:
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        padding = self._tokenizer.padding
        self._pad_id = int(padding["pad_id"]) if padding else 0
        self._pad_type_id = int(padding["pad_type_id"]) if padding else 0
        # tokenizer.json carries the length it was saved with (128 for MiniLM); sentence-transformers
        # cuts at the model's max_seq_length instead, and so must we.
        self._tokenizer.enable_truncation(max_length=window_tokens)
        # Padding is done below, for the whole batch at once: the library's batch call pads too but
        # spreads each batch over every core, which the model's `threads` setting is meant to bound.
        self._tokenizer.no_padding()

    def encode(self, texts: list[str]) -> TokenBatch:
        encodings = [self._tokenizer.encode(text) for text in texts]
        width = max((len(encoding.ids) for encoding in encodings), default=0)
        shape = (len(encodings), width)
        input_ids = np.full(shape, self._pad_id, dtype=np.int64)
        attention_mask = np.zeros(shape, dtype=np.int64)
        token_type_ids = np.full(shape, self._pad_type_id, dtype=np.int64)
        for row, encoding in enumerate(encodings):
            length = len(encoding.ids)
            input_ids[row, :length] = encoding.ids
            attention_mask[row, :length] = encoding.attention_mask
            token_type_ids[row, :length] = encoding.type_ids
        return TokenBatch(
            feeds={"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids},
            # A text longer than the window leaves its rest in `overflowing`: the torch backend's
            # "more tokens (special ones included) than the window" test, without tokenizing twice.
            truncated=[bool(encoding.overflowing) for encoding in encodings],
        )
