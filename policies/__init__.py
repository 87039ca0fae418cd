"""Pure policy code: YAML values → typed, validated config; the category classifier. Never imports
`gateway` or does I/O beyond reading one YAML file."""

from policies.classifier import CategoryClassifier, Classification, Classifier, Via
from policies.errors import Invalid, PolicyError
from policies.model import (
    DEFAULT,
    Bounds,
    Category,
    ClassifierMethod,
    ClassifierSettings,
    FeedbackRules,
    ModelSpec,
    Policy,
    Tier,
    load_policy,
    parse_policy,
)
from policies.schema import build, check, check_each, in_range, positive
from policies.verifier import Verifier

__all__ = [
    "DEFAULT",
    "Bounds",
    "Category",
    "CategoryClassifier",
    "Classification",
    "Classifier",
    "ClassifierMethod",
    "ClassifierSettings",
    "FeedbackRules",
    "Invalid",
    "ModelSpec",
    "Policy",
    "PolicyError",
    "Tier",
    "Verifier",
    "Via",
    "build",
    "check",
    "check_each",
    "in_range",
    "load_policy",
    "parse_policy",
    "positive",
]
