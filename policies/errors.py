"""The exceptions of `policies`:

PolicyError      a policy file is invalid (every problem, each with its YAML path)
VerifierError    a stored verifier is unreadable or was fitted on another feature set
Invalid          problems a dataclass finds in itself (schema.build turns them into paths)
"""

from __future__ import annotations

from collections.abc import Sequence


class PolicyError(Exception):
    """The policy file is invalid; `problems` lists every error, each as `<yaml path>: <reason>`."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


class VerifierError(ValueError):
    """A stored verifier is unreadable or was fitted on another feature set."""


class Invalid(ValueError):
    """Problems found by a dataclass itself, each at a path relative to it (`""`: the object)."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{where}: {reason}" if where else reason for where, reason in problems))
        self.problems = list(problems)
