"""Pure policy code: YAML values → typed, validated config. Never imports `gateway` or does I/O
beyond reading one YAML file."""

from policies.schema import build, check, in_range, positive

__all__ = ["build", "check", "in_range", "positive"]
