"""The policy file `semcache calibrate` writes: loads as written, keeps comments, refuses nothing silently."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from gateway.config import CacheConfig, GatewayConfig, load_config
from gateway.tools.policy_file import policy_source, threshold_value, write_calibrated_policy
from policies import load_policy

REPO = Path(__file__).resolve().parents[3]

POLICY = """\
# The team's policy: why each number is what it is.
models:
  - {name: small-model, tier: small, max_concurrency: 4}

categories:
  # Code: dense embeddings, keep it strict.
  - name: code
    keywords: [python, javascript]
    tier: small
    similarity_threshold: 0.97   # chosen by hand in March
    ttl_s: 86400
  - name: chat   # loose and short-lived
    exemplars:
      - tell me a joke
      - how are you today
    tier: small
"""


def config_for(tmp_path: Path, policy_text: str | None) -> GatewayConfig:
    config = tmp_path / "config.yaml"
    lines = ["cache:", "  similarity_threshold: 0.9", "  ttl_s: 600", "  max_entries: 50"]
    if policy_text is not None:
        (tmp_path / "policy.yaml").write_text(policy_text)
        lines.append("policy: policy.yaml")
    config.write_text("\n".join(lines) + "\n")
    return load_config(config)


def test_thresholds_are_edited_in_place_and_comments_survive(tmp_path: Path) -> None:
    source = policy_source(config_for(tmp_path, POLICY))
    out = tmp_path / "calib" / "policy.yaml"

    written = write_calibrated_policy(source, {"code": 0.91237, "chat": 0.84, "default": 0.93}, out=out)

    assert written.kept_comments
    assert written.applied == {"code": 0.9124, "chat": 0.84, "default": 0.93}
    text = out.read_text()
    for comment in ("# The team's policy", "# Code: dense embeddings", "# chosen by hand in March", "# loose"):
        assert comment in text
    assert "similarity_threshold: 0.9124   # chosen by hand in March" in text
    loaded = load_policy(out)
    assert loaded.category("code").similarity_threshold == 0.9124
    assert loaded.category("chat").similarity_threshold == 0.84
    # The file relied on the implicit default (tier small: only small models are declared); it is
    # now declared with the same values and the calibrated threshold.
    assert loaded.default.similarity_threshold == 0.93
    assert loaded.default.tier == "small"
    assert replace(loaded, categories=source.policy.categories) == source.policy  # nothing else changed
    # And the gateway config takes it as it is.
    config = tmp_path / "gateway.yaml"
    config.write_text(f"policy: {out}\n")
    assert load_config(config).policy == str(out.resolve())
    assert not list(out.parent.glob(".policy.yaml.*"))  # no temporary file left behind


def test_without_a_policy_file_the_implied_policy_is_written(tmp_path: Path) -> None:
    config = config_for(tmp_path, None)
    out = tmp_path / "calib" / "policy.yaml"

    written = write_calibrated_policy(policy_source(config), {"default": 0.8712}, out=out)

    assert not written.kept_comments
    assert out.read_text().startswith("# Written by `semcache calibrate` from the cache section")
    loaded = load_policy(out)
    assert [c.name for c in loaded.categories] == ["default"]
    assert loaded.default.similarity_threshold == 0.8712
    assert loaded.default.ttl_s == 600  # the cache section's, which the policy now replaces
    assert loaded.default.max_entries == 50


def test_a_text_that_cannot_be_edited_is_dumped_with_a_header(tmp_path: Path) -> None:
    flow = "categories: [{name: code, keywords: [python], similarity_threshold: 0.97}]\n"
    source = policy_source(config_for(tmp_path, flow))
    out = tmp_path / "calib" / "policy.yaml"

    written = write_calibrated_policy(source, {"code": 0.9}, out=out)

    assert not written.kept_comments
    assert "could not be kept" in out.read_text()
    assert load_policy(out).category("code").similarity_threshold == 0.9


def test_a_relative_embedding_model_still_names_its_folder(tmp_path: Path) -> None:
    (tmp_path / "models" / "tuned").mkdir(parents=True)
    source = policy_source(config_for(tmp_path, "embedding_model: models/tuned  # ours\n" + POLICY))
    out = tmp_path / "calib" / "policy.yaml"

    written = write_calibrated_policy(source, {"code": 0.95}, out=out)

    assert written.kept_comments
    assert "embedding_model: ../models/tuned  # ours" in out.read_text()
    assert load_policy(out).embedding_model == str((tmp_path / "models" / "tuned").resolve())


def test_a_threshold_below_the_load_floor_is_raised_to_it_and_said(tmp_path: Path) -> None:
    source = policy_source(load_config(REPO / "config.example.yaml"))
    out = tmp_path / "policy.yaml"

    written = write_calibrated_policy(source, {"code": 0.9, "factual": 0.91}, out=out)

    code = source.policy.category("code")
    assert code.bounds.min_threshold is not None and code.bounds.min_threshold > 0.9
    assert written.applied["code"] == code.bounds.min_threshold
    assert "below its bounds.min_threshold" in written.notes["code"]
    assert load_policy(out).category("code").similarity_threshold == code.bounds.min_threshold
    assert written.kept_comments
    assert "# How the numbers were chosen" in out.read_text()


def test_a_threshold_above_the_feedback_ceiling_is_left_as_it_was(tmp_path: Path) -> None:
    # A feedback ceiling below the calibrated threshold: that category is left as it was, with a note.
    policy = POLICY.replace("    ttl_s: 86400\n", "    ttl_s: 86400\n    feedback: {max_threshold: 0.97}\n")
    source = policy_source(config_for(tmp_path, policy))
    out = tmp_path / "policy.yaml"

    written = write_calibrated_policy(source, {"code": 0.98, "chat": 0.9}, out=out)

    assert "code" not in written.applied and "feedback.max_threshold" in written.notes["code"]
    assert load_policy(out).category("code").similarity_threshold == 0.97
    assert load_policy(out).category("chat").similarity_threshold == 0.9


@pytest.mark.parametrize(("calibrated", "written"), [(0.91231, 0.9124), (0.9124, 0.9124), (0.99999, 1.0)])
def test_written_thresholds_are_never_looser_than_calibrated(calibrated: float, written: float) -> None:
    assert threshold_value(calibrated) == written
    assert threshold_value(calibrated) >= calibrated


def test_the_policy_is_read_with_its_problems_reported(tmp_path: Path) -> None:
    from policies import PolicyError

    with pytest.raises(PolicyError, match="categories"):
        policy_source(config_for(tmp_path, "categories: {}\n"))


def test_default_cache_section(tmp_path: Path) -> None:
    source = policy_source(GatewayConfig(cache=CacheConfig(similarity_threshold=0.8)))
    assert source.policy.default.similarity_threshold == 0.8
    assert yaml.safe_load(yaml.safe_dump(dict(source.data)))["categories"][0]["name"] == "default"
