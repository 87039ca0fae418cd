"""The policy file `semcache calibrate` writes: the input policy with calibrated thresholds filled in.

    written = write_calibrated_policy(source, {"code": 0.9312}, out=Path("calib/policy.yaml"))
    written.path, written.kept_comments

The original YAML text is edited in place (only the `similarity_threshold` lines of the calibrated
categories, and an appended `default` entry when the file relied on the implicit one), so its
comments survive. When the text cannot be edited safely (flow-style categories, anchors, anything
the check below rejects), the policy is dumped plainly under a header comment instead. Either way
the file is loaded with `load_policy` before it replaces anything at `out`, and must come back as
exactly the intended policy. Synchronous: a command-line job.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from gateway.cache.semantic_cache import implied_policy
from gateway.config import GatewayConfig
from policies import DEFAULT, Policy, PolicyError, load_policy
from policies.errors import Invalid


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicySource:
    """What the thresholds are filled into: a policy file's text, or (no file) the implied data."""

    policy: Policy
    # The file's YAML text and path; None: the policy the config's cache section implies.
    text: str | None
    path: Path | None
    # The parsed data of `text`, or the implied policy as data.
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class WrittenPolicy:
    path: Path
    policy: Policy
    kept_comments: bool  # False: the plain dump (no file to keep, or its text could not be edited)
    applied: dict[str, float]  # the thresholds written, rounded
    notes: dict[str, str]  # category -> why its calibrated threshold was raised or left out


def policy_source(config: GatewayConfig) -> PolicySource:
    """The config's policy file (read and validated), or the policy its cache section implies.
    Raises `PolicyError`."""
    if config.policy is None:
        policy = implied_policy(config)
        default = policy.default
        data = {"categories": [{"name": DEFAULT, "similarity_threshold": default.similarity_threshold,
                                "ttl_s": default.ttl_s, "max_entries": default.max_entries}]}  # fmt: skip
        return PolicySource(policy=policy, text=None, path=None, data=data)
    path = Path(config.policy)
    policy = load_policy(path)  # every problem, with its YAML path, before anything is calibrated
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    return PolicySource(policy=policy, text=text, path=path, data=data if isinstance(data, dict) else {})


def threshold_value(threshold: float) -> float:
    """Four decimals, rounded up: the written threshold is never looser than the calibrated one."""
    return min(1.0, math.ceil(threshold * 10_000 - 1e-9) / 10_000)


def _applicable(policy: Policy, thresholds: Mapping[str, float]) -> tuple[dict[str, float], dict[str, str]]:
    """Thresholds each category's other rules allow (near_miss_floor, bounds, feedback ceiling), and
    a note for each one that had to be raised or left out."""
    applied: dict[str, float] = {}
    notes: dict[str, str] = {}
    for name, threshold in thresholds.items():
        category = policy.category(name)
        value = threshold_value(threshold)
        floor = category.bounds.min_threshold
        if floor is not None and value < floor:
            # Stricter than calibrated is still safe; looser than the operator's floor is not theirs.
            notes[name] = (
                f"calibrated {value:g} is below its bounds.min_threshold {floor:g}: written as {floor:g} "
                f"(lower bounds.min_threshold to use {value:g})"
            )
            value = floor
        if not 0 < value <= 1:
            notes[name] = f"calibrated {value:g} is not in (0, 1]; left as it was"
            continue
        try:
            replace(category, similarity_threshold=value)
        except (Invalid, ValueError) as exc:
            notes[name] = f"calibrated {value:g} conflicts with its other rules ({exc}); left as it was"
            continue
        applied[name] = value
    return applied, notes


def _intended(policy: Policy, applied: Mapping[str, float]) -> Policy:
    categories = tuple(
        replace(category, similarity_threshold=applied[category.name]) if category.name in applied else category
        for category in policy.categories
    )
    return replace(policy, categories=categories)


def _embedding_model_entry(source: PolicySource, out: Path) -> str | None:
    """The `embedding_model` value for a file at `out`: a local folder the source named relative to
    itself is named relative to `out` (absolute if no relative path exists); anything else stays."""
    raw = source.data.get("embedding_model")
    resolved = source.policy.embedding_model
    if not isinstance(raw, str) or resolved is None or raw == resolved:
        return None
    try:
        relative = os.path.relpath(resolved, out.parent.resolve())
    except ValueError:  # another drive (Windows)
        return resolved
    return relative if relative.startswith(".") else f"./{relative}"


# --- editing the text in place ---------------------------------------------------------------------


def _scalar(value: float | str) -> str:
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def _line_end(text: str, index: int) -> int:
    end = text.find("\n", index)
    return len(text) if end < 0 else end


def _last_content_end(node: yaml.Node) -> int:
    """Where the last character of a block node's content is (its own end mark may lie past the
    comments and blank lines that follow it)."""
    if isinstance(node, yaml.MappingNode) and node.value and not node.flow_style:
        return _last_content_end(node.value[-1][1])
    if isinstance(node, yaml.SequenceNode) and node.value and not node.flow_style:
        return _last_content_end(node.value[-1])
    return int(node.end_mark.index)


def _value_of(node: yaml.MappingNode, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return key_node, value_node
    return None


class _CannotEdit(Exception):
    """The text is not in a shape this module edits safely: dump instead."""


_Edit = tuple[int, int, str]  # (start, end, replacement) in the text


def _threshold_edits(text: str, items: list[yaml.Node], applied: Mapping[str, float]) -> tuple[list[_Edit], set[str]]:
    edits: list[_Edit] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, yaml.MappingNode):
            raise _CannotEdit("a category is not a mapping")
        name = _value_of(item, "name")
        if name is None or not isinstance(name[1], yaml.ScalarNode) or name[1].value not in applied:
            continue
        if item.flow_style:
            raise _CannotEdit(f"category {name[1].value!r} is written in flow style")
        seen.add(name[1].value)
        value = _scalar(applied[name[1].value])
        existing = _value_of(item, "similarity_threshold")
        if existing is None:  # a line of its own, under `name`, at the mapping's indentation
            at = _line_end(text, name[1].end_mark.index)
            edits.append((at, at, "\n" + " " * name[0].start_mark.column + f"similarity_threshold: {value}"))
        elif isinstance(existing[1], yaml.ScalarNode):
            edits.append((existing[1].start_mark.index, existing[1].end_mark.index, value))
        else:
            raise _CannotEdit("a similarity_threshold is not a scalar")
    return edits, seen


def _appended_item(text: str, items: list[yaml.Node], values: Mapping[str, Any]) -> _Edit:
    """A new last entry of the categories, indented like the first one."""
    if not items:
        raise _CannotEdit("no category to align the appended default with")
    first = items[0]
    line_start = text.rfind("\n", 0, first.start_mark.index) + 1
    dash = text.find("-", line_start, first.start_mark.index)
    if dash < 0:
        raise _CannotEdit("cannot find the dash of the first category")
    dash_column, item_column = dash - line_start, first.start_mark.column
    lines = [f"{key}: {_scalar(value)}" for key, value in values.items()]
    block = "\n" + " " * dash_column + "-" + " " * (item_column - dash_column - 1) + lines[0]
    block += "".join("\n" + " " * item_column + line for line in lines[1:])
    at = _line_end(text, _last_content_end(items[-1]))
    return at, at, block


def _edited_text(text: str, applied: Mapping[str, float], append_default: Mapping[str, Any] | None,
                 embedding_model: str | None) -> str:  # fmt: skip
    root = yaml.compose(text)
    if not isinstance(root, yaml.MappingNode) or root.flow_style:
        raise _CannotEdit("the top level is not a block mapping")
    found = _value_of(root, "categories")
    if found is None or not isinstance(found[1], yaml.SequenceNode) or found[1].flow_style:
        raise _CannotEdit("categories is not a block sequence")
    items = found[1].value
    edits, seen = _threshold_edits(text, items, applied)
    if set(applied) - seen - ({DEFAULT} if append_default is not None else set()):
        raise _CannotEdit("a calibrated category is not in the file")
    if append_default is not None:
        edits.append(_appended_item(text, items, append_default))
    if embedding_model is not None:
        model = _value_of(root, "embedding_model")
        if model is None or not isinstance(model[1], yaml.ScalarNode):
            raise _CannotEdit("embedding_model is not a plain value")
        edits.append((model[1].start_mark.index, model[1].end_mark.index, _scalar(embedding_model)))
    for start, end, replacement in sorted(edits, reverse=True):  # from the back: earlier offsets hold
        text = text[:start] + replacement + text[end:]
    return text


# --- the plain dump ----------------------------------------------------------------------------------


def _dumped_text(source: PolicySource, applied: Mapping[str, float], append_default: Mapping[str, Any] | None,
                 embedding_model: str | None, header: str) -> str:  # fmt: skip
    data = dict(source.data)
    categories = [dict(item) for item in data.get("categories") or []]
    for item in categories:
        if item.get("name") in applied:
            item["similarity_threshold"] = applied[item["name"]]
    if append_default is not None:
        categories.append(dict(append_default))
    data["categories"] = categories
    if embedding_model is not None:
        data["embedding_model"] = embedding_model
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def _header(source: PolicySource, reason: str | None) -> str:
    origin = str(source.path) if source.path is not None else "the cache section of the config (no policy file)"
    lines = [f"# Written by `semcache calibrate` from {origin}, with calibrated similarity_threshold values."]
    if reason is not None:
        lines.append(f"# The original's comments could not be kept ({reason}).")
    if source.path is None:
        lines.append("# With `policy:` pointing here, the config's cache.similarity_threshold, ttl_s and")
        lines.append("# max_entries no longer apply: these values do.")
    return "\n".join(lines) + "\n"


def _validated_write(text: str, out: Path, intended: Policy) -> Policy:
    """Write `text` next to `out`, load it with `load_policy`, and only if it is `intended` move it
    into place (a rename: a reader never sees half a file). Raises `PolicyError` otherwise."""
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    moved = False
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        loaded = load_policy(temporary)
        if loaded == intended:
            os.replace(temporary, out)
            moved = True
    finally:
        if not moved:
            Path(temporary).unlink(missing_ok=True)
    if not moved:
        raise PolicyError(str(out), ["the written file does not load as the calibrated policy"])
    return loaded


def write_calibrated_policy(source: PolicySource, thresholds: Mapping[str, float], *, out: Path) -> WrittenPolicy:
    """The source policy with `thresholds` filled in, validated, at `out`. Raises `PolicyError` when
    even the plain dump does not load as the intended policy (a bug here, not the user's)."""
    applied, notes = _applicable(source.policy, thresholds)
    intended = _intended(source.policy, applied)
    declared = {item.get("name") for item in source.data.get("categories") or [] if isinstance(item, Mapping)}
    append_default: dict[str, Any] | None = None
    if DEFAULT in applied and DEFAULT not in declared:
        # The file relied on the implicit default: declare it with its values (its tier follows `models`).
        implicit = source.policy.default
        append_default = {"name": DEFAULT, "similarity_threshold": applied[DEFAULT], "tier": implicit.tier}
    embedding_model = _embedding_model_entry(source, out)
    reason: str | None = "there was no policy file" if source.text is None else None
    if source.text is not None:
        try:
            text = _edited_text(source.text, applied, append_default, embedding_model)
            policy = _validated_write(text, out, intended)
        except (_CannotEdit, yaml.YAMLError, PolicyError) as exc:
            reason = str(exc) if not isinstance(exc, PolicyError) else "the edited text did not load as intended"
        else:
            return WrittenPolicy(path=out, policy=policy, kept_comments=True, applied=applied, notes=notes)
    text = _dumped_text(source, applied, append_default, embedding_model,
                        _header(source, None if source.text is None else reason))  # fmt: skip
    policy = _validated_write(text, out, intended)
    return WrittenPolicy(path=out, policy=policy, kept_comments=False, applied=applied, notes=notes)
