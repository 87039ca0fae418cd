"""The seam between the cache and whatever turns text into vectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddedText:
    """One text's unit-length vector, and whether the model had to cut the text to fit its window.

    A truncated text was embedded from its beginning only, so two prompts that differ after the
    cut would look identical: the cache must not serve semantic hits for it.
    """

    vector: Vector
    truncated: bool


@runtime_checkable
class Embedder(Protocol):
    """A synchronous embedding model. Called from one worker thread only, never the event loop."""

    @property
    def dimension(self) -> int: ...

    @property
    def name(self) -> str: ...

    def embed(self, texts: list[str]) -> list[EmbeddedText]:
        """Embed a batch; vectors are L2-normalized float32 of length `dimension`."""
        ...
