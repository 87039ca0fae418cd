"""Second opinion on a semantic candidate before it is served: a similarity threshold alone is a
poor judge ("price of X in 2023" vs "2024" embed at ~0.98). Pure: texts and numbers in, a verdict out."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Verifier(Protocol):
    """Judges candidates whose similarity is at least `floor`; the engine serves a candidate only
    if `accepts` says so (below `floor` nothing is served)."""

    @property
    def floor(self) -> float: ...

    def accepts(self, *, query: str, candidate: str, similarity: float) -> bool: ...
