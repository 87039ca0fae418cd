"""Why a policy was refused."""

from __future__ import annotations


class PolicyError(Exception):
    """The policy file is invalid; `problems` lists every error, each as `<yaml path>: <reason>`."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems
