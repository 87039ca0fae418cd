"""The YAML → dataclass converter under every policy and config: unions are tried member by member."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from policies import build, check, positive


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    size: int = field(default=1, metadata=check(positive))


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    limit: int | Literal["unlimited"] = 10
    window: Window | str | None = None


def test_a_value_of_the_second_union_member_is_accepted() -> None:
    settings, problems = build(Settings, {"limit": "unlimited", "window": "rolling"})

    assert problems == []
    assert settings == Settings(limit="unlimited", window="rolling")


def test_the_first_member_that_fits_wins() -> None:
    settings, problems = build(Settings, {"limit": 5, "window": {"size": 3}})

    assert problems == []
    assert settings == Settings(limit=5, window=Window(size=3))


def test_a_value_that_fits_no_member_names_them_all() -> None:
    _, problems = build(Settings, {"limit": "lots"})

    assert problems == ["limit: must be an integer or 'unlimited', got 'lots'"]


def test_a_value_of_the_right_shape_reports_what_is_wrong_inside_it() -> None:
    _, problems = build(Settings, {"window": {"size": 0}})

    assert len(problems) == 1
    assert problems[0].startswith("window.size: ")
