"""Metrics: hand-computed cases (arithmetic in the comments), edge cases and bootstrap checks."""

from __future__ import annotations

import json
import math
import time
import warnings

import numpy as np
import pytest

from edgekit import metrics as M
from edgekit.errors import ConfigError


def onehot_logits(pred: list[int], k: int) -> np.ndarray:
    """Logits whose arg-max is ``pred``."""
    return np.eye(k)[pred] * 5.0


def logit(p: list[float]) -> np.ndarray:
    a = np.asarray(p, dtype=np.float64)
    return np.log(a / (1.0 - a))


# ---------------------------------------------------------------------------------- multiclass
# y_true = [0, 0, 1, 1, 2, 2], predicted = [0, 0, 1, 0, 1, 1]; class 2 is never predicted.
#   confusion (rows true, cols predicted):
#     true 0: [2, 0, 0]
#     true 1: [1, 1, 0]
#     true 2: [0, 2, 0]
#   accuracy = (2 + 1 + 0) / 6 = 0.5
#   class 0: TP 2, FP 1, FN 0, TN 3 -> precision 2/3, recall 1, spec 3/4, F1 = 4/(4+1+0) = 0.8
#   class 1: TP 1, FP 2, FN 1, TN 2 -> precision 1/3, recall 1/2, spec 2/4, F1 = 2/(2+2+1) = 0.4
#   class 2: TP 0, FP 0, FN 2, TN 4 -> precision 0 (never predicted), recall 0, spec 1, F1 0
#   macro-F1 = (0.8 + 0.4 + 0) / 3 = 0.4
#   kappa: p_o = 0.5; rows [2, 2, 2], cols [3, 3, 0]; p_e = (6 + 6 + 0) / 36 = 1/3;
#          kappa = (1/2 - 1/3) / (1 - 1/3) = (1/6) / (2/3) = 0.25
Y3 = [0, 0, 1, 1, 2, 2]
P3 = [0, 0, 1, 0, 1, 1]


def test_three_class_never_predicted_no_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cm = M.confusion_matrix(Y3, P3, 3)
        pc = M.per_class_metrics(cm)
        out = M.evaluate(Y3, onehot_logits(P3, 3), task="multiclass",
                         class_names=["a", "b", "c"], n_boot=50)
    assert cm.tolist() == [[2, 0, 0], [1, 1, 0], [0, 2, 0]]
    assert out["confusion_matrix"] == cm.tolist()
    assert M.accuracy(cm) == pytest.approx(0.5)
    np.testing.assert_allclose(pc["precision"], [2 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(pc["sensitivity"], [1.0, 0.5, 0.0])
    np.testing.assert_allclose(pc["specificity"], [0.75, 0.5, 1.0])
    np.testing.assert_allclose(pc["f1"], [0.8, 0.4, 0.0])
    assert M.macro_f1(cm) == pytest.approx(0.4)
    assert M.cohen_kappa(cm) == pytest.approx(0.25)
    assert out["accuracy"]["value"] == pytest.approx(0.5)
    assert out["macro_f1"]["value"] == pytest.approx(0.4)
    assert out["kappa"]["value"] == pytest.approx(0.25)
    assert out["per_class"]["c"]["precision"] == 0.0
    assert out["per_class"]["c"]["f1"] == 0.0
    assert out["per_class"]["a"]["specificity"]["value"] == pytest.approx(0.75)
    assert out["classes_without_samples"] == []


# y_true = [0, 0, 1, 1] with 3 classes, predicted = [0, 1, 1, 2]; class 2 has no true samples.
#   class 0: TP 1, FP 0, FN 1 -> recall 1/2, F1 = 2/(2+0+1) = 2/3
#   class 1: TP 1, FP 1, FN 1 -> recall 1/2, F1 = 2/(2+1+1) = 1/2
#   class 2: no true samples -> sensitivity NaN, F1 NaN (excluded); predicted once -> precision 0
#   macro-F1 = (2/3 + 1/2) / 2 = 7/12 (not /3); balanced accuracy = (1/2 + 1/2) / 2 = 1/2
#   macro precision over classes 0 and 1 = (1/1 + 1/2) / 2 = 3/4
def test_class_without_true_samples_is_nan_and_excluded() -> None:
    y, pred = [0, 0, 1, 1], [0, 1, 1, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pc = M.per_class_metrics(M.confusion_matrix(y, pred, 3))
        out = M.evaluate(y, onehot_logits(pred, 3), task="multiclass",
                         class_names=["a", "b", "c"], n_boot=200)
    assert math.isnan(pc["sensitivity"][2]) and math.isnan(pc["f1"][2])
    assert pc["precision"][2] == 0.0
    assert M.macro_f1(M.confusion_matrix(y, pred, 3)) == pytest.approx(7 / 12)
    assert out["per_class"]["c"]["sensitivity"] == {"value": None, "ci95": None}
    assert out["per_class"]["c"]["f1"] is None
    assert out["per_class"]["c"]["support"] == 0
    assert out["classes_without_samples"] == ["c"]
    assert out["macro_f1"]["value"] == pytest.approx(7 / 12)
    assert out["balanced_accuracy"]["value"] == pytest.approx(0.5)
    assert out["macro_precision"] == pytest.approx(0.75)
    json.dumps(out, allow_nan=False)  # NaN became None


# Wikipedia's example: rows = rater A (yes, no), cols = rater B.
#   [[20, 5], [10, 15]], n = 50; p_o = (20 + 15) / 50 = 0.7
#   p_e = (25/50)(30/50) + (25/50)(20/50) = 0.3 + 0.2 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4
def test_kappa_wikipedia_example() -> None:
    assert M.cohen_kappa([[20, 5], [10, 15]]) == pytest.approx(0.4)
    y = [0] * 25 + [1] * 25
    pred = [0] * 20 + [1] * 5 + [0] * 10 + [1] * 15
    out = M.evaluate(y, onehot_logits(pred, 2), task="multiclass", ci=False)
    assert out["confusion_matrix"] == [[20, 5], [10, 15]]
    assert out["kappa"] == {"value": pytest.approx(0.4), "ci95": None}
    assert out["bootstrap"] is None


def test_kappa_undefined_when_chance_agreement_is_one() -> None:
    # Everything is class 0 for both: p_o = p_e = 1 -> 0/0 -> NaN, silently.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(M.cohen_kappa([[4, 0], [0, 0]]))


# 4 samples, 15 bins of width 1/15 = 0.0667; bin m holds ((m-1)/15, m/15].
#   s1 probs [0.90, 0.05, 0.05], y 0: correct, conf 0.90 -> bin (0.8667, 0.9333]
#   s2 probs [0.65, 0.25, 0.10], y 1: wrong,   conf 0.65 -> bin (0.6000, 0.6667]
#   s3 probs [0.20, 0.70, 0.10], y 1: correct, conf 0.70 -> bin (0.6667, 0.7333]
#   s4 probs [0.10, 0.20, 0.70], y 0: wrong,   conf 0.70 -> same bin as s3
#   ECE = 1/4 |1 - 0.9| + 1/4 |0 - 0.65| + 2/4 |0.5 - 0.7| = 0.025 + 0.1625 + 0.1 = 0.2875
def test_ece_by_hand() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.65, 0.25, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
    y = [0, 1, 1, 0]
    assert M.expected_calibration_error(y, probs) == pytest.approx(0.2875)
    out = M.evaluate(y, probs, task="multiclass", scores_are="probs", n_boot=100)
    assert out["ece"]["value"] == pytest.approx(0.2875)
    # The same model given as logits (log-probabilities) gives the same ECE.
    assert M.evaluate(y, np.log(probs), task="multiclass", ci=False)["ece"]["value"] == (
        pytest.approx(0.2875)
    )


def test_ece_bin_edge_goes_to_lower_bin() -> None:
    # conf exactly 1.0 and exactly 0.5 (binary [1-p, p]); bins are right-closed.
    # p = [1.0, 0.5], y = [1, 1]: s1 conf 1.0 correct (gap 0); s2 conf 0.5, argmax of
    # [0.5, 0.5] is class 0 -> wrong (gap 0.5). ECE = 1/2 * 0 + 1/2 * 0.5 = 0.25
    assert M.expected_calibration_error([1, 1], [1.0, 0.5]) == pytest.approx(0.25)


# ---------------------------------------------------------------------------------- AUROC
# y = [0, 0, 1, 1], s = [0.1, 0.4, 0.35, 0.8]: (pos, neg) pairs
#   0.35 > 0.1 (1), 0.35 < 0.4 (0), 0.8 > 0.1 (1), 0.8 > 0.4 (1) -> 3/4
# With a tie, s = [0.1, 0.4, 0.4, 0.8]: 0.4 > 0.1 (1), 0.4 = 0.4 (1/2), 0.8 (1 + 1) -> 3.5/4
# All tied: every pair counts 1/2 -> 0.5
def test_auroc_hand_cases_with_ties() -> None:
    assert M.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert M.auroc([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.8]) == pytest.approx(0.875)
    assert M.auroc([0, 1, 0, 1, 1], [0.3] * 5) == pytest.approx(0.5)
    assert math.isnan(M.auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(M.auroc([0, 0], [0.1, 0.2]))


def brute_force_auroc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = 0.0
    for p in pos:
        for q in neg:
            wins += 1.0 if p > q else 0.5 if p == q else 0.0
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(6))
def test_auroc_matches_brute_force_pair_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]  # both classes present
    s = rng.integers(0, 6, n) / 5.0  # few distinct values -> many ties
    expected = brute_force_auroc(y, s)
    assert M.auroc(y, s) == pytest.approx(expected, abs=1e-12)
    # The resampling path (weighted tie groups) gives the same point estimate.
    assert M.bootstrap_ci("auroc", y, s, task="binary", n_boot=5).value == pytest.approx(
        expected, abs=1e-12
    )
    # And a multilabel stack of labels agrees column by column.
    y2 = np.stack([y, 1 - y], axis=1)
    s2 = np.stack([s, rng.permutation(s)], axis=1)
    got = M.multilabel_auroc(y2, s2)
    assert got[0] == pytest.approx(expected, abs=1e-12)
    assert got[1] == pytest.approx(brute_force_auroc(y2[:, 1], s2[:, 1]), abs=1e-12)


def test_auroc_uses_logits_without_sigmoid_saturation() -> None:
    # sigmoid(40) == sigmoid(50) == 1.0 in float64; the ranking on logits still separates them.
    y = [0, 1]
    out = M.evaluate(y, [40.0, 50.0], task="binary", ci=False)
    assert out["auroc"]["value"] == 1.0


# ---------------------------------------------------------------------------------- multilabel
# Label "c" is never present and label "d" always present -> AUROC NaN for both, reported,
# and the mean is over "a" and "b" only.
#   a: y [1, 0, 1, 0], s [0.9, 0.1, 0.8, 0.3] -> perfectly separated -> 1.0
#   b: y [0, 1, 1, 0], s [0.6, 0.2, 0.7, 0.4] -> pairs (0.2 vs 0.6, 0.4) 0 + 0; (0.7) 1 + 1 -> 0.5
#   mean AUROC = (1.0 + 0.5) / 2 = 0.75
#   at 0.5: a predicted [1, 0, 1, 0] -> sens 1, spec 1; b predicted [1, 0, 1, 0] -> sens 1/2,
#   spec 1/2; c never present -> sens NaN, spec: predicted [0, 0, 0, 0] -> 4/4 = 1
def test_multilabel_label_never_present() -> None:
    y = np.array([[1, 0, 0, 1], [0, 1, 0, 1], [1, 1, 0, 1], [0, 0, 0, 1]])
    s = np.array([
        [0.9, 0.6, 0.1, 0.9],
        [0.1, 0.2, 0.2, 0.8],
        [0.8, 0.7, 0.3, 0.7],
        [0.3, 0.4, 0.4, 0.6],
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        per = M.multilabel_auroc(y, s)
        out = M.evaluate(y, s, task="multilabel", class_names=["a", "b", "c", "d"],
                         scores_are="probs", n_boot=200)
    np.testing.assert_allclose(per[:2], [1.0, 0.5])
    assert np.isnan(per[2:]).all()
    assert out["mean_auroc"]["value"] == pytest.approx(0.75)
    assert out["n_labels_in_mean_auroc"] == 2
    assert out["labels_without_auroc"] == ["c", "d"]
    assert out["per_label"]["c"]["auroc"] == {"value": None, "ci95": None}
    assert out["per_label"]["c"]["auroc_undefined"] == "no positive samples"
    assert out["per_label"]["d"]["auroc_undefined"] == "no negative samples"
    assert out["per_label"]["a"]["sensitivity"] == 1.0
    assert out["per_label"]["b"]["sensitivity"] == pytest.approx(0.5)
    assert out["per_label"]["b"]["specificity"] == pytest.approx(0.5)
    assert out["per_label"]["c"]["sensitivity"] is None
    assert out["per_label"]["c"]["specificity"] == 1.0
    json.dumps(out, allow_nan=False)


# ---------------------------------------------------------------------------------- binary
# p = [0.2, 0.4, 0.6, 0.9], y = [0, 1, 0, 1]
#   threshold 0.5: predicted [0, 0, 1, 1] -> TP 1 (0.9), FN 1 (0.4), FP 1 (0.6), TN 1 (0.2)
#                  sens 1/2, spec 1/2, accuracy 2/4
#   threshold 0.3: predicted [0, 1, 1, 1] -> TP 2, FN 0, FP 1, TN 1
#                  sens 1, spec 1/2, accuracy 3/4, confusion [[1, 1], [0, 2]]
#   AUROC (threshold-free): 0.4 > 0.2, 0.4 < 0.6, 0.9 > both -> 3/4
def test_binary_head_with_threshold() -> None:
    p = [0.2, 0.4, 0.6, 0.9]
    y = [0, 1, 0, 1]
    at_half = M.evaluate(y, p, task="binary", scores_are="probs", ci=False)
    assert at_half["sensitivity"]["value"] == pytest.approx(0.5)
    assert at_half["specificity"]["value"] == pytest.approx(0.5)
    assert at_half["accuracy"]["value"] == pytest.approx(0.5)
    assert at_half["auroc"]["value"] == pytest.approx(0.75)
    assert at_half["confusion_matrix"] == [[1, 1], [1, 1]]

    for scores, scores_are in ((p, "probs"), (logit(p)[:, None], "logits")):
        out = M.evaluate(y, scores, task="binary", scores_are=scores_are, threshold=0.3,
                         class_names=["benign", "malignant"], n_boot=200)
        assert out["positive_class"] == "malignant"
        assert out["sensitivity"]["value"] == pytest.approx(1.0)
        assert out["specificity"]["value"] == pytest.approx(0.5)
        assert out["accuracy"]["value"] == pytest.approx(0.75)
        assert out["auroc"]["value"] == pytest.approx(0.75)
        assert out["confusion_matrix"] == [[1, 1], [0, 2]]
        assert out["per_class"]["malignant"]["sensitivity"]["value"] == pytest.approx(1.0)
        json.dumps(out, allow_nan=False)


def test_binary_two_column_softmax_matches_single_logit() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=50)
    y = (rng.random(50) < 0.5).astype(int)
    one = M.evaluate(y, z, task="binary", ci=False)
    two = M.evaluate(y, np.stack([np.zeros(50), z], axis=1), task="binary", ci=False)
    for key in ("auroc", "sensitivity", "specificity", "accuracy", "ece"):
        assert one[key]["value"] == pytest.approx(two[key]["value"])


# ---------------------------------------------------------------------------------- bootstrap
def make_multiclass(n: int = 400, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    s = rng.normal(size=(n, k))
    s[np.arange(n), y] += 1.5
    return y, s


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1", "kappa", "sensitivity:2", "ece"])
def test_bootstrap_deterministic_and_contains_point(metric: str) -> None:
    y, s = make_multiclass()
    a = M.bootstrap_ci(metric, y, s, n_boot=300, seed=7)
    b = M.bootstrap_ci(metric, y, s, n_boot=300, seed=7)
    c = M.bootstrap_ci(metric, y, s, n_boot=300, seed=8)
    assert a == b
    assert (a.lo, a.hi) != (c.lo, c.hi)
    assert a.lo <= a.value <= a.hi
    assert a.lo < a.hi
    assert a.n_valid == 300


def test_bootstrap_point_matches_direct_functions() -> None:
    y, s = make_multiclass()
    cm = M.confusion_matrix(y, s.argmax(1), 4)
    assert M.bootstrap_ci("accuracy", y, s, n_boot=2).value == pytest.approx(M.accuracy(cm))
    assert M.bootstrap_ci("kappa", y, s, n_boot=2).value == pytest.approx(M.cohen_kappa(cm))
    assert M.bootstrap_ci("macro_f1", y, s, n_boot=2).value == pytest.approx(M.macro_f1(cm))
    assert M.bootstrap_ci("ece", y, s, n_boot=2).value == pytest.approx(
        M.expected_calibration_error(y, M.softmax(s))
    )


def test_bootstrap_callable_metric_matches_named() -> None:
    y, s = make_multiclass(n=200)

    def acc(yt: np.ndarray, sc: np.ndarray) -> float:
        return float(np.mean(sc.argmax(1) == yt))

    named = M.bootstrap_ci("accuracy", y, s, n_boot=100, seed=1)
    custom = M.bootstrap_ci(acc, y, s, n_boot=100, seed=1)
    assert custom.value == pytest.approx(named.value)
    assert (custom.lo, custom.hi) == pytest.approx((named.lo, named.hi))


def test_evaluate_cis_are_deterministic_and_json() -> None:
    y, s = make_multiclass()
    names = ["glioma", "meningioma", "none", "pituitary"]
    a = M.evaluate(y, s, task="multiclass", class_names=names, n_boot=200, seed=3)
    b = M.evaluate(y, s, task="multiclass", class_names=names, n_boot=200, seed=3)
    assert a == b
    assert json.loads(json.dumps(a, allow_nan=False)) == a
    lo, hi = a["accuracy"]["ci95"]
    assert lo <= a["accuracy"]["value"] <= hi
    assert set(a["per_class"]) == set(names)
    # Same seed and n_boot -> evaluate's CI equals bootstrap_ci's.
    one = M.bootstrap_ci("sensitivity:none", y, s, class_names=names, n_boot=200, seed=3)
    assert a["per_class"]["none"]["sensitivity"] == one.as_dict()


def test_delta_ci_of_model_against_itself_is_exactly_zero() -> None:
    y, s = make_multiclass()
    for metric in ("accuracy", "macro_f1", "kappa", "sensitivity:1"):
        d = M.delta_ci(metric, y, s, s.copy(), n_boot=200)
        assert (d.value, d.lo, d.hi) == (0.0, 0.0, 0.0)
        assert d.as_dict()["ci95"] == [0.0, 0.0]
    yl = (np.random.default_rng(0).random((100, 3)) < 0.3).astype(int)
    sl = np.random.default_rng(1).normal(size=(100, 3)) + yl
    d = M.delta_ci("mean_auroc", yl, sl, sl, task="multilabel", n_boot=100)
    assert (d.value, d.lo, d.hi) == (0.0, 0.0, 0.0)


def test_delta_ci_is_paired_and_signed_a_minus_b() -> None:
    y, s = make_multiclass()
    worse = s + np.random.default_rng(5).normal(scale=1.0, size=s.shape)
    d = M.delta_ci("accuracy", y, worse, s, n_boot=300, seed=0)
    a = M.bootstrap_ci("accuracy", y, worse, n_boot=300, seed=0)
    b = M.bootstrap_ci("accuracy", y, s, n_boot=300, seed=0)
    assert d.a == a.value and d.b == b.value
    assert d.value == pytest.approx(a.value - b.value)
    assert d.lo <= d.value <= d.hi
    # Pairing removes the shared sampling noise: the delta CI is narrower than either CI.
    assert d.hi - d.lo < min(a.hi - a.lo, b.hi - b.lo)


def test_bootstrap_speed_n2000_1000_resamples() -> None:
    y, s = make_multiclass(n=2000, k=4)
    M.bootstrap_ci("accuracy", y, s, n_boot=10)  # warm-up
    t0 = time.perf_counter()
    M.bootstrap_ci("macro_f1", y, s, n_boot=1000, seed=0)
    M.delta_ci("accuracy", y, s, s * 0.9, n_boot=1000, seed=0)
    assert time.perf_counter() - t0 < 2.0


def test_top1_agreement() -> None:
    a = onehot_logits([0, 1, 2, 2], 3)
    b = onehot_logits([0, 1, 2, 0], 3)
    assert M.top1_agreement(a, b) == pytest.approx(0.75)
    # Binary: logits vs probabilities of the same predictions agree fully.
    z = np.array([-2.0, 0.5, 3.0])
    assert M.top1_agreement(z, 1 / (1 + np.exp(-z)), task="binary", scores_are_b="probs") == 1.0
    out = M.evaluate([0, 1, 2, 0], a, task="multiclass", reference_scores=b, ci=False)
    assert out["top1_agreement"] == pytest.approx(0.75)


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"y_true": [0, 1], "scores": np.zeros((2, 3)), "class_names": list("abcd")},
         "scores has 3 columns but 4 class names"),
        ({"y_true": [0, 1, 2], "scores": np.zeros((2, 3))}, "y_true has 3 samples but scores"),
        ({"y_true": [0, 5], "scores": np.zeros((2, 3))}, "class index 5"),
        ({"y_true": [0, 1], "scores": np.zeros(2)}, "task='binary'"),
        ({"y_true": [0, 1], "scores": np.zeros((2, 3)), "task": "regression"}, "task must be"),
        ({"y_true": [0, 1], "scores": np.zeros((2, 3)), "scores_are": "probits"}, "scores_are"),
        ({"y_true": [0, 1], "scores": np.full((2, 3), 2.0), "scores_are": "probs"},
         "outside \\[0, 1\\]"),
        ({"y_true": [0, 1], "scores": np.full((2, 3), 0.9), "scores_are": "probs"},
         "do not sum to 1"),
        ({"y_true": [0, 1], "scores": np.array([[0.0, np.nan], [1.0, 0.0]])}, "NaN"),
        ({"y_true": [0, 1], "scores": np.zeros((2, 2)), "class_names": ["a", "a"]}, "unique"),
        ({"y_true": [0, 1], "scores": np.zeros(2), "task": "binary", "class_names": ["x"]},
         "needs 2 class names"),
        ({"y_true": [0, 2], "scores": np.zeros(2), "task": "binary"}, "class index 2"),
        ({"y_true": [0, 1], "scores": np.zeros(2), "task": "binary", "threshold": 1.5},
         "threshold"),
        ({"y_true": np.zeros((2, 3)), "scores": np.zeros((2, 4)), "task": "multilabel"},
         "y_true has shape \\(2, 3\\) but scores has shape \\(2, 4\\)"),
        ({"y_true": np.zeros((2, 3)), "scores": np.zeros((2, 3)), "task": "multilabel",
          "class_names": ["a", "b"]}, "scores has 3 columns but 2 label names"),
        ({"y_true": [0, 1], "scores": np.zeros((2, 2)), "n_boot": 0}, "n_boot"),
        ({"y_true": [], "scores": np.zeros((0, 2))}, "no samples"),
    ],
)
def test_evaluate_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    kwargs = {"task": "multiclass", **kwargs}
    with pytest.raises(ConfigError, match=match):
        M.evaluate(**kwargs)


def test_other_shape_errors() -> None:
    y, s = make_multiclass(n=20)
    with pytest.raises(ConfigError, match="scores_a has shape"):
        M.delta_ci("accuracy", y % 3, s, s[:, :3])
    with pytest.raises(ConfigError, match="unknown metric 'mean_auroc'"):
        M.bootstrap_ci("mean_auroc", y, s)
    with pytest.raises(ConfigError, match="unknown class 'x'"):
        M.bootstrap_ci("sensitivity:x", y, s)
    with pytest.raises(ConfigError, match="same length"):
        M.auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ConfigError, match="0/1 labels"):
        M.auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ConfigError, match="square"):
        M.cohen_kappa([[1, 2, 3]])
    with pytest.raises(ConfigError, match="shape"):
        M.top1_agreement(np.zeros((3, 2)), np.zeros((4, 2)))


def test_bad_seed_and_unknown_metric_type() -> None:
    y, s = make_multiclass(n=20)
    with pytest.raises(ConfigError, match="seed"):
        M.bootstrap_ci("accuracy", y, s, seed=-1)
    with pytest.raises(ConfigError, match="metric must be"):
        M.bootstrap_ci(3, y, s)  # type: ignore[arg-type]
