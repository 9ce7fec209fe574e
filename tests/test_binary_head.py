"""Binary (one sigmoid unit) heads and probability outputs: scoring, verification, the runner."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.evaluate import as_logits, score
from edgekit.recipes import load_recipe
from edgekit.verify import compare

CLASSES = ("no", "yes")
PROBS = {"scores_are": "probs", "threshold": 0.5}


def _binary(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.5 + (y - 0.5) * 0.6 + rng.normal(0, 0.2, n), 0, 1).astype(np.float32)
    return y, p[:, None]


def test_probabilities_map_back_to_logits_exactly_where_it_matters():
    p = np.array([[0.2, 0.7, 0.1], [0.5, 0.25, 0.26]])  # an INT8 row need not sum to 1
    lo = as_logits(p, PROBS, "multiclass")
    e = np.exp(lo - lo.max(1, keepdims=True))
    assert np.allclose(e / e.sum(1, keepdims=True), p / p.sum(1, keepdims=True))
    s = np.array([[0.0], [0.25], [1.0]])
    lo = as_logits(s, PROBS, "binary")
    assert np.allclose(1 / (1 + np.exp(-lo[1])), 0.25) and np.isfinite(lo).all()
    assert as_logits(p, {"scores_are": "logits"}, "multiclass") is p


def test_binary_score_has_sensitivity_specificity_auroc_at_the_threshold():
    y, p = _binary()
    m = score(y, p, task="multiclass", class_names=CLASSES, head=PROBS, ci=False)
    assert m["task"] == "binary" and m["positive_class"] == "yes"
    pred = (p[:, 0] >= 0.5).astype(int)
    assert m["sensitivity"]["value"] == pytest.approx(np.mean(pred[y == 1] == 1))
    assert m["specificity"]["value"] == pytest.approx(np.mean(pred[y == 0] == 0))
    assert 0.8 < m["auroc"]["value"] <= 1.0
    # probabilities scored as logits would call everything positive: the head must be honoured
    wrong = score(y, p, task="multiclass", class_names=CLASSES, ci=False)
    assert wrong["specificity"]["value"] == 0.0
    strict = score(y, p, task="multiclass", class_names=CLASSES, ci=False,
                   head={**PROBS, "threshold": 0.9})
    assert strict["threshold"] == 0.9
    assert strict["sensitivity"]["value"] < m["sensitivity"]["value"]


def test_binary_verification_gates_sensitivity_specificity_and_auroc():
    y, ref = _binary()
    recipe = load_recipe("int8")
    src = score(y, ref, task="multiclass", class_names=CLASSES, head=PROBS)
    close = np.clip(ref + 0.01, 0, 1)
    v = compare(ref, close, y, task="multiclass", class_names=CLASSES, precision="int8",
                recipe=recipe, source_metrics=src, head=PROBS).to_json()
    checks = {c["check"] for c in v["checks"]}
    assert "AUROC drop" in checks and "sensitivity drop: yes (points)" in checks
    assert "specificity drop: yes vs no (points)" in checks
    assert v["top1_agreement"] > 0.9 and "accuracy_delta" in v
    flipped = 1.0 - ref  # an artifact that inverted its output
    bad = compare(ref, flipped, y, task="multiclass", class_names=CLASSES, precision="int8",
                  recipe=recipe, source_metrics=src, head=PROBS).to_json()
    assert not bad["passed"] and bad["top1_agreement"] < 0.2


def test_runner_reads_a_binary_head_and_its_threshold(tmp_path, monkeypatch):
    """The runner turns one sigmoid probability into the two folders' classes."""
    from edgekit.runner import Runner

    runner = Runner.__new__(Runner)
    runner.classes, runner.task = ["no", "yes"], "multiclass"
    runner.head = {"scores_are": "probs", "threshold": 0.5}
    runner.spec = type("S", (), {"load": staticmethod(lambda p, small=None: np.zeros((4, 4, 3)))})()
    monkeypatch.setattr(runner, "logits", lambda x: np.array([[0.7]], np.float32), raising=False)
    res = runner.predict_one("a.png")
    assert res["prediction"] == "yes" and res["probability"] == pytest.approx(0.7)
    assert runner.predict_one("a.png", threshold=0.8)["prediction"] == "no"
    runner.head = {"scores_are": "logits", "threshold": 0.5}
    monkeypatch.setattr(runner, "logits", lambda x: np.array([[-2.0]], np.float32))
    res = runner.predict_one("a.png")
    assert res["prediction"] == "no" and res["probabilities"]["yes"] == pytest.approx(
        1 / (1 + np.exp(2.0)))
    json.dumps(res)


def test_a_drop_of_exactly_the_limit_passes_despite_float_rounding():
    from edgekit.verify import _within

    assert _within(100 * (0.912 - 0.902), 1.0)
    assert not _within(1.01, 1.0)
