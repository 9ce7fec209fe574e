"""Classification metrics from a model's outputs and the ground truth, with bootstrap CIs.

Three task shapes are supported:

* ``"multiclass"`` (single-label): ``y_true`` is ``(N,)`` integer class indices and ``scores`` is
  ``(N, K)`` logits or probabilities. The prediction is the arg-max.
* ``"binary"`` (one sigmoid head): ``scores`` is ``(N,)`` or ``(N, 1)``, one logit or probability
  of the positive class (index 1); the prediction is ``probability >= threshold``. A two-column
  ``(N, 2)`` softmax head is accepted too (the positive-class probability is its column 1).
* ``"multilabel"``: ``y_true`` and ``scores`` are both ``(N, L)``, one sigmoid per label.

Whether ``scores`` hold logits or probabilities is never guessed: every entry point takes
``scores_are="logits" | "probs"`` (default ``"logits"``). AUROC is computed on the raw scores
(the sigmoid is monotone, so the ranking is the same and no resolution is lost to saturation).

Conventions, chosen so that nothing divides by zero and nothing warns:

* A class that is never predicted has precision 0 and F1 0.
* A class with no true samples has sensitivity NaN and F1 NaN, and is left out of every macro
  average (macro-F1, balanced accuracy, macro precision/specificity).
* A label that is never (or always) present has AUROC NaN and is left out of the mean AUROC.
* :func:`evaluate` turns every NaN into ``None`` so that its result is plain JSON.

Bootstrap confidence intervals resample the evaluation set with replacement (seeded
``numpy.random.default_rng``) and take the 2.5th and 97.5th percentiles (percentile method).
All resamples of a chunk are evaluated at once: confusion matrices come from one ``bincount``,
AUROC from weighted tie-group sums, so 1000 resamples of a few thousand samples take a fraction
of a second. Resamples on which a metric is undefined (NaN, e.g. a rare class absent from the
resample) are left out of its percentiles; ``n_valid`` says how many remained.

This module only computes: it never prints and depends on numpy alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edgekit.errors import ConfigError

Task = Literal["multiclass", "binary", "multilabel"]
ScoresAre = Literal["logits", "probs"]
#: A user metric for :func:`bootstrap_ci` / :func:`delta_ci`: ``f(y_true, scores) -> float``,
#: called once per resample with the resampled rows of the arrays as given.
MetricFn = Callable[[np.ndarray, np.ndarray], float]

TASKS: tuple[str, ...] = ("multiclass", "binary", "multilabel")
SCORES_ARE: tuple[str, ...] = ("logits", "probs")
ECE_BINS = 15
CI_LEVEL = 0.95
_CI_PERCENTILES = (100.0 * (1.0 - CI_LEVEL) / 2.0, 100.0 * (1.0 + CI_LEVEL) / 2.0)
_PROB_TOL = 1e-6  # probabilities may overshoot [0, 1] by this much (float rounding)
_ROW_SUM_TOL = 0.05  # softmax rows may miss 1 by this much (quantized outputs)
_CHUNK_ELEMENTS = 1 << 22  # resampled indices held at once (32 MiB of int64)

_CM_METRICS = ("accuracy", "macro_f1", "kappa", "balanced_accuracy", "ece")
_PER_CLASS_METRICS = ("sensitivity", "specificity", "precision", "f1")
_BINARY_METRICS = ("auroc", "sensitivity", "specificity", "precision", "f1")
_MULTILABEL_METRICS = ("mean_auroc",)
_PER_LABEL_METRICS = ("auroc", "sensitivity", "specificity")


# ---------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95 % percentile-bootstrap confidence interval.

    ``n_valid`` is the number of resamples on which the metric was defined (not NaN).
    """

    value: float
    lo: float
    hi: float
    n_boot: int
    n_valid: int

    def as_dict(self) -> dict[str, Any]:
        """``{"value": x, "ci95": [lo, hi]}`` with NaN as ``None`` (JSON-serialisable)."""
        return {"value": _json_float(self.value), "ci95": _json_ci(self.lo, self.hi)}


@dataclass(frozen=True)
class DeltaInterval(Interval):
    """A paired difference ``metric(a) - metric(b)`` with its CI, plus both point estimates."""

    a: float = math.nan
    b: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        out = super().as_dict()
        out["a"] = _json_float(self.a)
        out["b"] = _json_float(self.b)
        return out


# ---------------------------------------------------------------------------------- scores
def metric_value(m: Any) -> float | None:
    """The number of a metric written as ``{"value", "ci95"}`` (``evaluate``'s JSON) or as a
    bare number."""
    return m.get("value") if isinstance(m, dict) else m


def metric_ci(m: Any) -> tuple[float | None, float | None]:
    """The 95 % CI of a ``{"value", "ci95"}`` metric, (None, None) when it has none."""
    ci = m.get("ci95") if isinstance(m, dict) else None
    return (ci[0], ci[1]) if ci else (None, None)


def softmax(logits: npt.ArrayLike, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (float64)."""
    x = np.asarray(logits, dtype=np.float64)
    z = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return z / np.sum(z, axis=axis, keepdims=True)


def sigmoid(logits: npt.ArrayLike) -> np.ndarray:
    """Numerically stable logistic function (float64), without overflow warnings."""
    x = np.asarray(logits, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def to_probabilities(
    scores: npt.ArrayLike, *, task: Task, scores_are: ScoresAre = "logits"
) -> np.ndarray:
    """Class probabilities: ``(N, K)`` for multiclass, ``(N,)`` positive-class for binary,
    ``(N, L)`` for multilabel."""
    return _interpret_scores(scores, task, scores_are, 0.5).probs


def predict(
    scores: npt.ArrayLike,
    *,
    task: Task,
    scores_are: ScoresAre = "logits",
    threshold: float = 0.5,
) -> np.ndarray:
    """Predicted labels: arg-max for multiclass, ``probability >= threshold`` otherwise."""
    return _interpret_scores(scores, task, scores_are, threshold).pred


def top1_agreement(
    scores_a: npt.ArrayLike,
    scores_b: npt.ArrayLike,
    *,
    task: Task = "multiclass",
    scores_are: ScoresAre = "logits",
    scores_are_b: ScoresAre | None = None,
    threshold: float = 0.5,
) -> float:
    """Fraction of samples on which two models predict the same class.

    Used to compare an exported artifact with its source model. For ``"binary"`` both are
    thresholded at ``threshold``; for ``"multilabel"`` it is the fraction of (sample, label)
    decisions that agree. ``scores_are_b`` defaults to ``scores_are``.
    """
    va = _interpret_scores(scores_a, task, scores_are, threshold, what="scores_a")
    vb = _interpret_scores(
        scores_b, task, scores_are if scores_are_b is None else scores_are_b, threshold,
        what="scores_b",
    )
    if va.raw.shape != vb.raw.shape:
        raise ConfigError(
            f"scores_a has shape {va.raw.shape} but scores_b has shape {vb.raw.shape}; "
            "both models must score the same samples and classes"
        )
    return float(np.mean(va.pred == vb.pred))


# ---------------------------------------------------------------------------------- confusion
def confusion_matrix(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, n_classes: int) -> np.ndarray:
    """``(K, K)`` int64 counts; rows are the true class, columns the predicted class."""
    if not isinstance(n_classes, int | np.integer) or n_classes < 1:
        raise ConfigError(f"n_classes must be a positive integer, got {n_classes!r}")
    t = _as_int_labels(y_true, "y_true")
    p = _as_int_labels(y_pred, "y_pred")
    if t.ndim != 1 or p.ndim != 1 or t.shape != p.shape:
        raise ConfigError(
            f"y_true and y_pred must be 1-D of the same length, got {t.shape} and {p.shape}"
        )
    for name, arr in (("y_true", t), ("y_pred", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise ConfigError(f"{name} holds class indices outside [0, {n_classes - 1}]")
    k = int(n_classes)
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def accuracy(cm: npt.ArrayLike) -> float:
    """Fraction of samples on the diagonal of a confusion matrix (NaN when empty)."""
    return float(_accuracy_b(_as_cm(cm)[None])[0])


def cohen_kappa(cm: npt.ArrayLike) -> float:
    """Cohen's kappa ``(p_o - p_e) / (1 - p_e)`` of a confusion matrix.

    NaN when undefined (empty matrix, or ``p_e == 1``: both raters always say the same class).
    """
    return float(_kappa_b(_as_cm(cm)[None])[0])


def per_class_metrics(cm: npt.ArrayLike) -> dict[str, np.ndarray]:
    """Per-class ``support``, ``sensitivity``, ``specificity``, ``precision`` and ``f1``.

    Each is a ``(K,)`` array. Never-predicted class: precision 0, F1 0. Class with no true
    samples: sensitivity NaN, F1 NaN. Specificity is NaN only when every sample is of that class.
    """
    out = _per_class_b(_as_cm(cm)[None])
    return {key: value[0] for key, value in out.items()}


def macro_f1(cm: npt.ArrayLike) -> float:
    """Mean F1 over the classes that have true samples (NaN when none has)."""
    return float(_macro_f1_b(_as_cm(cm)[None])[0])


def expected_calibration_error(
    y_true: npt.ArrayLike, probs: npt.ArrayLike, *, n_bins: int = ECE_BINS
) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width confidence bins.

    ``probs`` is ``(N, K)`` class probabilities, or ``(N,)`` positive-class probabilities of a
    binary model (treated as ``[1 - p, p]``). The confidence is the max probability, bin ``m``
    is ``((m-1)/M, m/M]`` (confidence 0 goes to the first bin) and
    ``ECE = sum_m |B_m|/N * |acc(B_m) - conf(B_m)|``.
    """
    if not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ConfigError(f"n_bins must be a positive integer, got {n_bins!r}")
    p = _as_float(probs, "probs")
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2:
        raise ConfigError(f"probs must have shape (N, K) or (N,), got {p.shape}")
    _check_probs(p, "probs", rows_sum_to_one=True)
    y = _as_int_labels(y_true, "y_true")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ConfigError(f"y_true has shape {y.shape} but probs has {p.shape[0]} rows")
    if p.shape[0] == 0:
        return math.nan
    mat = _ece_matrix(p, y, n_bins)
    return float(_ece_b(np.ones((1, p.shape[0])), mat)[0])


# ---------------------------------------------------------------------------------- AUROC
def auroc(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve by the Mann–Whitney U statistic on average ranks.

    Ties between a positive and a negative count one half. NaN when ``y_true`` has no positives
    or no negatives. ``scores`` may be logits or probabilities (only their order matters).
    """
    y = _as_binary(y_true, "y_true")
    s = _as_float(scores, "scores")
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise ConfigError(
            f"y_true and scores must be 1-D of the same length, got {y.shape} and {s.shape}"
        )
    _check_finite(s, "scores")
    return _rank_auroc(y, s)


def multilabel_auroc(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> np.ndarray:
    """Per-label AUROC ``(L,)`` of ``(N, L)`` labels and scores; NaN for a label that is never
    or always present."""
    y = _as_binary(y_true, "y_true")
    s = _as_float(scores, "scores")
    if y.ndim != 2 or y.shape != s.shape:
        raise ConfigError(
            f"y_true and scores must both have shape (N, L), got {y.shape} and {s.shape}"
        )
    _check_finite(s, "scores")
    return np.array([_rank_auroc(y[:, j], s[:, j]) for j in range(y.shape[1])], dtype=np.float64)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, tied values sharing the mean of their ranks."""
    n = x.shape[0]
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]]) if n else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], n]
    mean_rank = (starts + 1 + ends) / 2.0  # mean of start+1 .. end
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _rank_auroc(y: np.ndarray, s: np.ndarray) -> float:
    n_pos = int(y.sum())
    n_neg = int(y.shape[0] - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    u = float(_average_ranks(s)[y == 1].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


@dataclass(frozen=True)
class _AucSpec:
    """One label's scores sorted once, with tie groups, for weighted (resampled) AUROC."""

    order: np.ndarray
    starts: np.ndarray
    pos_sorted: np.ndarray

    @classmethod
    def build(cls, y: np.ndarray, s: np.ndarray) -> _AucSpec:
        order = np.argsort(s, kind="mergesort")
        ss = s[order]
        starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
        return cls(order, starts, y[order].astype(np.float64))

    def auroc(self, counts: np.ndarray) -> np.ndarray:
        """AUROC of each row of ``counts`` (``(b, N)`` sample multiplicities).

        ``sum_groups pos_g * (neg below g + neg_g / 2) / (P * N)`` equals the Mann–Whitney
        statistic of the resample with ties counting one half.
        """
        w = counts[:, self.order]
        pos = w * self.pos_sorted
        neg = w - pos
        pos_g = np.add.reduceat(pos, self.starts, axis=1)
        neg_g = np.add.reduceat(neg, self.starts, axis=1)
        below = np.cumsum(neg_g, axis=1) - neg_g
        num = np.sum(pos_g * (below + 0.5 * neg_g), axis=1)
        den = pos_g.sum(axis=1) * neg_g.sum(axis=1)
        return _safe_div(num, den, math.nan)


# ---------------------------------------------------------------------------------- batched
def _as_cm(cm: npt.ArrayLike) -> np.ndarray:
    arr = np.asarray(cm)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 1:
        raise ConfigError(f"a confusion matrix must be square (K, K), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or (arr.size and arr.min() < 0):
        raise ConfigError("a confusion matrix must hold non-negative counts")
    return arr.astype(np.float64)


def _safe_div(num: npt.ArrayLike, den: npt.ArrayLike, fill: float) -> np.ndarray:
    num_a = np.asarray(num, dtype=np.float64)
    den_a = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num_a, den_a).shape, fill, dtype=np.float64)
    np.divide(num_a, den_a, out=out, where=den_a != 0)
    return out


def _nanmean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    valid = ~np.isnan(x)
    return _safe_div(np.where(valid, x, 0.0).sum(axis=axis), valid.sum(axis=axis), math.nan)


def _accuracy_b(cm: np.ndarray) -> np.ndarray:
    return _safe_div(np.trace(cm, axis1=-2, axis2=-1), cm.sum(axis=(-2, -1)), math.nan)


def _kappa_b(cm: np.ndarray) -> np.ndarray:
    # (p_o - p_e) / (1 - p_e) with p_o = tr/n, p_e = sum(row*col)/n^2, multiplied through by n^2
    # so that it stays exact on counts.
    n = cm.sum(axis=(-2, -1))
    agree = np.trace(cm, axis1=-2, axis2=-1)
    chance = np.sum(cm.sum(axis=-1) * cm.sum(axis=-2), axis=-1)
    return _safe_div(n * agree - chance, n * n - chance, math.nan)


def _per_class_b(cm: np.ndarray) -> dict[str, np.ndarray]:
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    row = cm.sum(axis=-1)
    col = cm.sum(axis=-2)
    n = cm.sum(axis=(-2, -1))[..., None]
    fp = col - tp
    fn = row - tp
    tn = n - row - col + tp
    f1 = _safe_div(2.0 * tp, 2.0 * tp + fp + fn, 0.0)
    f1[row == 0] = math.nan
    return {
        "support": row,
        "sensitivity": _safe_div(tp, row, math.nan),
        "specificity": _safe_div(tn, tn + fp, math.nan),
        "precision": _safe_div(tp, col, 0.0),
        "f1": f1,
    }


def _macro_f1_b(cm: np.ndarray) -> np.ndarray:
    return _nanmean(_per_class_b(cm)["f1"])


def _ece_matrix(probs: np.ndarray, y: np.ndarray, n_bins: int) -> np.ndarray:
    """``(N, n_bins)``: ``correct - confidence`` of each sample in its confidence bin's column."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], conf, side="left")  # bin m holds (edge m, edge m+1]
    mat = np.zeros((probs.shape[0], n_bins), dtype=np.float64)
    mat[np.arange(probs.shape[0]), bins] = correct - conf
    return mat


def _ece_b(counts: np.ndarray, mat: np.ndarray) -> np.ndarray:
    # sum_m |B_m|/N |acc_m - conf_m| = sum_m |sum_{i in B_m} (correct_i - conf_i)| / N
    return _safe_div(np.abs(counts @ mat).sum(axis=1), counts.sum(axis=1), math.nan)


# ---------------------------------------------------------------------------------- inputs
def _as_float(x: npt.ArrayLike, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ConfigError(f"{what} must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ConfigError(f"{what} must be real, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _check_finite(x: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise ConfigError(f"{what} contains {bad} NaN or infinite value(s)")


def _as_int_labels(y: npt.ArrayLike, what: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ConfigError(f"{what} must hold integer class indices, got non-integer values")
        return arr.astype(np.int64)
    raise ConfigError(f"{what} must hold integer class indices, got dtype {arr.dtype}")


def _as_binary(y: npt.ArrayLike, what: str) -> np.ndarray:
    arr = _as_int_labels(y, what)
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise ConfigError(f"{what} must hold 0/1 labels, got values {np.unique(arr)[:6].tolist()}")
    return arr


def _check_probs(p: np.ndarray, what: str, *, rows_sum_to_one: bool) -> None:
    _check_finite(p, what)
    if p.size and (p.min() < -_PROB_TOL or p.max() > 1.0 + _PROB_TOL):
        raise ConfigError(
            f"scores_are='probs' but {what} range over [{p.min():.4g}, {p.max():.4g}], outside "
            "[0, 1]; pass scores_are='logits' for raw model outputs"
        )
    if rows_sum_to_one and p.size:
        worst = float(np.max(np.abs(p.sum(axis=1) - 1.0)))
        if worst > _ROW_SUM_TOL:
            raise ConfigError(
                f"scores_are='probs' but the rows of {what} do not sum to 1 (off by up to "
                f"{worst:.3g}); pass softmax probabilities, or scores_are='logits'"
            )


def _check_choice(value: object, choices: tuple[str, ...], what: str) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_threshold(threshold: float) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ConfigError(f"threshold must be a number in [0, 1], got {threshold!r}") from None
    if not 0.0 <= t <= 1.0:
        raise ConfigError(f"threshold must be a probability in [0, 1], got {threshold!r}")
    return t


@dataclass(frozen=True)
class _ScoreView:
    """Scores interpreted for a task.

    ``probs``: multiclass ``(N, K)``, binary ``(N,)`` positive class, multilabel ``(N, L)``.
    ``rank``: monotone in the positive-class probability, for AUROC (binary/multilabel only).
    ``pred``: predicted labels, ``(N,)`` or ``(N, L)`` int64.
    """

    raw: np.ndarray
    probs: np.ndarray
    rank: np.ndarray | None
    pred: np.ndarray
    n_outputs: int


def _interpret_scores(
    scores: npt.ArrayLike, task: str, scores_are: str, threshold: float, what: str = "scores"
) -> _ScoreView:
    _check_choice(task, TASKS, "task")
    _check_choice(scores_are, SCORES_ARE, "scores_are")
    t = _check_threshold(threshold)
    raw = _as_float(scores, what)
    _check_finite(raw, what)
    logits = scores_are == "logits"
    if task == "multiclass":
        if raw.ndim != 2 or raw.shape[1] < 2:
            hint = (
                "; a single output column is a binary head: use task='binary'"
                if raw.ndim == 1 or (raw.ndim == 2 and raw.shape[1] == 1)
                else ""
            )
            raise ConfigError(
                f"multiclass {what} must have shape (N, K) with K >= 2, got {raw.shape}{hint}"
            )
        if logits:
            probs = softmax(raw, axis=1)
        else:
            _check_probs(raw, what, rows_sum_to_one=True)
            probs = np.clip(raw, 0.0, 1.0)
        return _ScoreView(raw, probs, None, raw.argmax(axis=1).astype(np.int64), raw.shape[1])
    if task == "binary":
        if raw.ndim == 2 and raw.shape[1] == 2:
            if logits:
                p1 = softmax(raw, axis=1)[:, 1]
                rank = raw[:, 1] - raw[:, 0]
            else:
                _check_probs(raw, what, rows_sum_to_one=True)
                p1 = np.clip(raw[:, 1], 0.0, 1.0)
                rank = p1
        elif raw.ndim == 1 or (raw.ndim == 2 and raw.shape[1] == 1):
            flat = raw.reshape(-1)
            if logits:
                p1 = sigmoid(flat)
            else:
                _check_probs(flat, what, rows_sum_to_one=False)
                p1 = np.clip(flat, 0.0, 1.0)
            rank = flat
        else:
            raise ConfigError(
                f"binary {what} must have shape (N,) or (N, 1) (one sigmoid output) or (N, 2) "
                f"(a two-class softmax), got {raw.shape}"
            )
        return _ScoreView(raw, p1, rank, (p1 >= t).astype(np.int64), 2)
    # multilabel
    if raw.ndim != 2 or raw.shape[1] < 1:
        raise ConfigError(f"multilabel {what} must have shape (N, L), got {raw.shape}")
    if logits:
        probs = sigmoid(raw)
    else:
        _check_probs(raw, what, rows_sum_to_one=False)
        probs = np.clip(raw, 0.0, 1.0)
    return _ScoreView(raw, probs, raw, (probs >= t).astype(np.int64), raw.shape[1])


def _check_names(class_names: Sequence[str] | None, n: int, task: str) -> tuple[str, ...]:
    noun = "label" if task == "multilabel" else "class"
    if class_names is None:
        return ("negative", "positive") if task == "binary" else tuple(str(i) for i in range(n))
    if isinstance(class_names, str):
        raise ConfigError(f"{noun} names must be a sequence of strings, got the string "
                          f"{class_names!r}")
    names = tuple(class_names)
    if not all(isinstance(c, str) and c for c in names):
        raise ConfigError(f"{noun} names must be non-empty strings, got {list(names)!r}")
    if len(set(names)) != len(names):
        dupes = sorted({c for c in names if names.count(c) > 1})
        raise ConfigError(f"{noun} names must be unique; repeated: {', '.join(dupes)}")
    if task == "binary" and len(names) != 2:
        raise ConfigError(
            f"a binary task needs 2 class names (negative, positive), got {len(names)}"
        )
    if len(names) != n:
        what = "columns" if task != "binary" else "outputs"
        raise ConfigError(f"scores has {n} {what} but {len(names)} {noun} names")
    return names


@dataclass(frozen=True)
class _Prepared:
    """Validated inputs plus everything the batched metrics need, computed once."""

    task: str
    names: tuple[str, ...]
    n: int
    y: np.ndarray
    scores: np.ndarray
    view: _ScoreView
    threshold: float
    scores_are: str

    @property
    def k(self) -> int:
        return len(self.names)

    @cached_property
    def code(self) -> np.ndarray:
        """``true * K + predicted`` per sample (multiclass/binary)."""
        return self.y * self.k + self.view.pred

    @cached_property
    def ece_mat(self) -> np.ndarray:
        p = self.view.probs
        probs = p if self.task == "multiclass" else np.stack([1.0 - p, p], axis=1)
        return _ece_matrix(probs, self.y, ECE_BINS)

    @cached_property
    def auc_specs(self) -> tuple[_AucSpec, ...]:
        rank = self.view.rank
        assert rank is not None
        if self.task == "binary":
            return (_AucSpec.build(self.y, rank),)
        return tuple(_AucSpec.build(self.y[:, j], rank[:, j]) for j in range(self.k))

    @cached_property
    def label_mats(self) -> tuple[np.ndarray, ...]:
        """Multilabel ``(N, L)`` indicator matrices: TP, positive, TN, negative."""
        y = self.y.astype(np.float64)
        p = self.view.pred.astype(np.float64)
        return y * p, y, (1.0 - y) * (1.0 - p), 1.0 - y


def _prepare(
    y_true: npt.ArrayLike,
    scores: npt.ArrayLike,
    task: str,
    class_names: Sequence[str] | None,
    scores_are: str,
    threshold: float,
    what: str = "scores",
) -> _Prepared:
    view = _interpret_scores(scores, task, scores_are, threshold, what)
    n = view.raw.shape[0]
    names = _check_names(class_names, view.n_outputs, task)
    if task == "multilabel":
        y = _as_binary(y_true, "y_true")
        if y.shape != view.raw.shape:
            raise ConfigError(
                f"y_true has shape {y.shape} but {what} has shape {view.raw.shape}; multilabel "
                "targets must be (N, L) 0/1 with one column per label"
            )
    else:
        y = _as_int_labels(y_true, "y_true")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ConfigError(
                f"y_true must be 1-D class indices for task={task!r}, got shape {y.shape}"
                + ("; for one-hot/multi-hot targets use y.argmax(1) or task='multilabel'"
                   if y.ndim == 2 else "")
            )
        if y.shape[0] != n:
            raise ConfigError(f"y_true has {y.shape[0]} samples but {what} has {n} rows")
        if y.size and (y.min() < 0 or y.max() >= len(names)):
            bad = int(y.max()) if y.max() >= len(names) else int(y.min())
            raise ConfigError(
                f"y_true holds class index {bad} but there are {len(names)} classes "
                f"({', '.join(names)})"
            )
    if n == 0:
        raise ConfigError(f"{what} has no samples")
    return _Prepared(task, names, n, y, view.raw, view, _check_threshold(threshold), scores_are)


# ---------------------------------------------------------------------------------- resampling
class _Batch:
    """``b`` resamples of the evaluation set (``idx`` is ``(b, N)``), or the set itself (None).

    Intermediate results (confusion matrices, multiplicities, AUROCs) are cached so that many
    metrics of the same resamples cost little more than one.
    """

    def __init__(self, prep: _Prepared, idx: np.ndarray | None) -> None:
        self.prep = prep
        self.idx = idx
        self.b = 1 if idx is None else idx.shape[0]

    @cached_property
    def rows(self) -> np.ndarray:
        return np.arange(self.prep.n)[None, :] if self.idx is None else self.idx

    @cached_property
    def counts(self) -> np.ndarray:
        """``(b, N)`` float64: how many times each sample is drawn in each resample."""
        n = self.prep.n
        if self.idx is None:
            return np.ones((1, n), dtype=np.float64)
        flat = (self.idx + (np.arange(self.b) * n)[:, None]).ravel()
        return np.bincount(flat, minlength=self.b * n).reshape(self.b, n).astype(np.float64)

    @cached_property
    def confusion(self) -> np.ndarray:
        """``(b, K, K)`` confusion matrices (float64 counts)."""
        k = self.prep.k
        flat = (self.prep.code[self.rows] + (np.arange(self.b) * k * k)[:, None]).ravel()
        cm = np.bincount(flat, minlength=self.b * k * k).reshape(self.b, k, k)
        return cm.astype(np.float64)

    @cached_property
    def per_class(self) -> dict[str, np.ndarray]:
        return _per_class_b(self.confusion)

    @cached_property
    def aurocs(self) -> np.ndarray:
        """``(b, L)`` AUROC per label (``L == 1`` for binary)."""
        return np.stack([spec.auroc(self.counts) for spec in self.prep.auc_specs], axis=1)

    @cached_property
    def label_rates(self) -> tuple[np.ndarray, np.ndarray]:
        """Multilabel ``(b, L)`` sensitivity and specificity at the threshold."""
        tp, pos, tn, neg = (self.counts @ m for m in self.prep.label_mats)
        return _safe_div(tp, pos, math.nan), _safe_div(tn, neg, math.nan)


_BatchFn = Callable[[_Batch], np.ndarray]


def _index_of(prep: _Prepared, name: str, metric: str) -> int:
    if name in prep.names:
        return prep.names.index(name)
    noun = "label" if prep.task == "multilabel" else "class"
    raise ConfigError(
        f"metric {metric!r} names unknown {noun} {name!r}; {noun} names are "
        f"{', '.join(prep.names)}"
    )


def _metric_names(task: str) -> str:
    if task == "multilabel":
        names = [*_MULTILABEL_METRICS, *(f"{m}:<label>" for m in _PER_LABEL_METRICS)]
    else:
        names = [*_CM_METRICS, *(f"{m}:<class>" for m in _PER_CLASS_METRICS)]
        if task == "binary":
            names[:0] = _BINARY_METRICS
    return ", ".join(names)


def _resolve_metric(prep: _Prepared, metric: str | MetricFn) -> _BatchFn:
    """Turn a metric name (or callable) into a function of a :class:`_Batch` -> ``(b,)``."""
    if callable(metric):
        user = metric

        def call(batch: _Batch) -> np.ndarray:
            return np.array(
                [float(user(prep.y[r], prep.scores[r])) for r in batch.rows], dtype=np.float64
            )

        return call
    if not isinstance(metric, str):
        raise ConfigError(f"metric must be a name or a callable, got {metric!r}")
    name, sep, arg = metric.partition(":")
    if prep.task == "multilabel":
        if not sep and name == "mean_auroc":
            return lambda batch: _nanmean(batch.aurocs)
        if sep and name in _PER_LABEL_METRICS:
            j = _index_of(prep, arg, metric)
            if name == "auroc":
                return lambda batch: batch.aurocs[:, j]
            which = 0 if name == "sensitivity" else 1
            return lambda batch: batch.label_rates[which][:, j]
    else:
        if not sep:
            if name == "accuracy":
                return lambda batch: _accuracy_b(batch.confusion)
            if name == "macro_f1":
                return lambda batch: _nanmean(batch.per_class["f1"])
            if name == "kappa":
                return lambda batch: _kappa_b(batch.confusion)
            if name == "balanced_accuracy":
                return lambda batch: _nanmean(batch.per_class["sensitivity"])
            if name == "ece":
                return lambda batch: _ece_b(batch.counts, prep.ece_mat)
            if prep.task == "binary" and name == "auroc":
                return lambda batch: batch.aurocs[:, 0]
            if prep.task == "binary" and name in _BINARY_METRICS:
                return lambda batch: batch.per_class[name][:, 1]
        elif name in _PER_CLASS_METRICS:
            k = _index_of(prep, arg, metric)
            return lambda batch: batch.per_class[name][:, k]
    raise ConfigError(
        f"unknown metric {metric!r} for task={prep.task!r}; choose from {_metric_names(prep.task)}"
    )


def _check_seed(seed: int | None) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer or None, got {seed!r}")
    return int(seed)


def _check_n_boot(n_boot: int) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ConfigError(f"n_boot must be a positive integer, got {n_boot!r}")
    return int(n_boot)


def _resample(
    preps: Sequence[_Prepared],
    fns: Sequence[Sequence[_BatchFn]],
    n_boot: int,
    seed: int | None,
) -> list[list[np.ndarray]]:
    """Evaluate ``fns[i]`` on ``preps[i]`` for the same ``n_boot`` resamples of row indices.

    Returns ``out[i][j]``: the ``(n_boot,)`` values of metric ``j`` of ``preps[i]``.
    """
    n = preps[0].n
    rng = np.random.default_rng(_check_seed(seed))
    chunk = max(1, min(n_boot, _CHUNK_ELEMENTS // n))
    out = [[np.empty(n_boot, dtype=np.float64) for _ in f] for f in fns]
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        for i, prep in enumerate(preps):
            batch = _Batch(prep, idx)
            for j, fn in enumerate(fns[i]):
                out[i][j][start : start + b] = fn(batch)
    return out


def _percentile_ci(values: np.ndarray) -> tuple[float, float, int]:
    valid = values[~np.isnan(values)]
    if valid.size == 0:
        return math.nan, math.nan, 0
    lo, hi = np.percentile(valid, _CI_PERCENTILES)
    return float(lo), float(hi), int(valid.size)


def _point(prep: _Prepared, fn: _BatchFn) -> float:
    return float(fn(_Batch(prep, None))[0])


def bootstrap_ci(
    metric: str | MetricFn,
    y_true: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    task: Task = "multiclass",
    class_names: Sequence[str] | None = None,
    scores_are: ScoresAre = "logits",
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int | None = 0,
) -> Interval:
    """Point estimate and 95 % percentile-bootstrap CI of one scalar metric.

    ``metric`` is a name: ``accuracy``, ``macro_f1``, ``kappa``, ``balanced_accuracy``, ``ece``,
    ``sensitivity:<class>``, ``specificity:<class>``, ``precision:<class>``, ``f1:<class>``
    (multiclass and binary); ``auroc``, ``sensitivity``, ``specificity``, ``precision``, ``f1``
    (binary, positive class); ``mean_auroc``, ``auroc:<label>``, ``sensitivity:<label>``,
    ``specificity:<label>`` (multilabel). Class names default to ``"0"``, ``"1"``, ... (binary:
    ``"negative"``, ``"positive"``). It may also be a callable ``f(y_true, scores) -> float``,
    evaluated once per resample (slower).
    """
    n_boot = _check_n_boot(n_boot)
    prep = _prepare(y_true, scores, task, class_names, scores_are, threshold)
    fn = _resolve_metric(prep, metric)
    values = _resample([prep], [[fn]], n_boot, seed)[0][0]
    lo, hi, n_valid = _percentile_ci(values)
    return Interval(_point(prep, fn), lo, hi, n_boot, n_valid)


def delta_ci(
    metric: str | MetricFn,
    y_true: npt.ArrayLike,
    scores_a: npt.ArrayLike,
    scores_b: npt.ArrayLike,
    *,
    task: Task = "multiclass",
    class_names: Sequence[str] | None = None,
    scores_are: ScoresAre = "logits",
    scores_are_b: ScoresAre | None = None,
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int | None = 0,
) -> DeltaInterval:
    """Paired difference ``metric(scores_a) - metric(scores_b)`` with its 95 % bootstrap CI.

    Both models are evaluated on the SAME resampled indices, so the CI reflects the difference
    between the models rather than the sampling noise of each: pass the candidate (e.g. INT8) as
    ``scores_a`` and the reference (e.g. fp32) as ``scores_b`` to get "INT8 - fp32". The result
    also carries both point estimates (``a``, ``b``). ``scores_are_b`` defaults to
    ``scores_are``. Metric names are those of :func:`bootstrap_ci`.
    """
    n_boot = _check_n_boot(n_boot)
    prep_a = _prepare(y_true, scores_a, task, class_names, scores_are, threshold, "scores_a")
    prep_b = _prepare(
        y_true, scores_b, task, class_names,
        scores_are if scores_are_b is None else scores_are_b, threshold, "scores_b",
    )
    if prep_a.scores.shape != prep_b.scores.shape:
        raise ConfigError(
            f"scores_a has shape {prep_a.scores.shape} but scores_b has shape "
            f"{prep_b.scores.shape}; both models must score the same samples and classes"
        )
    fn_a = _resolve_metric(prep_a, metric)
    fn_b = _resolve_metric(prep_b, metric)
    (va,), (vb,) = _resample([prep_a, prep_b], [[fn_a], [fn_b]], n_boot, seed)
    lo, hi, n_valid = _percentile_ci(va - vb)
    a, b = _point(prep_a, fn_a), _point(prep_b, fn_b)
    return DeltaInterval(a - b, lo, hi, n_boot, n_valid, a=a, b=b)


# ---------------------------------------------------------------------------------- evaluate
def _json_float(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def _json_ci(lo: float, hi: float) -> list[float | None] | None:
    if math.isnan(lo) or math.isnan(hi):
        return None
    return [float(lo), float(hi)]


def evaluate(
    y_true: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    task: Task,
    class_names: Sequence[str] | None = None,
    scores_are: ScoresAre = "logits",
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int | None = 0,
    ci: bool = True,
    reference_scores: npt.ArrayLike | None = None,
    reference_scores_are: ScoresAre | None = None,
) -> dict[str, Any]:
    """Every metric of one model on one evaluation set, as a JSON-serialisable dict.

    Headline metrics are ``{"value": x, "ci95": [lo, hi]}`` (``ci95`` is ``None`` when
    ``ci=False`` or the metric is undefined on every resample); per-class / per-label entries are
    keyed by name; NaN is ``None``. All CIs of one call share the same ``n_boot`` resamples.

    * multiclass: accuracy, macro_f1, kappa, balanced_accuracy, ece (with CIs); macro precision
      and specificity; the confusion matrix (rows true, columns predicted); per class: support,
      sensitivity and specificity (with CIs), precision, f1.
    * binary: all of the above for the two classes, plus auroc, sensitivity, specificity (with
      CIs), precision and f1 of the positive class at ``threshold``.
    * multilabel: mean_auroc (with CI) over the labels with both positives and negatives,
      ``labels_without_auroc``; per label: n_positive, n_negative, auroc (with CI) or the reason
      it is undefined, sensitivity and specificity at ``threshold``.

    With ``reference_scores`` (the source model's outputs on the same samples), ``top1_agreement``
    is added.
    """
    if not isinstance(ci, bool | np.bool_):
        raise ConfigError(f"ci must be True or False, got {ci!r}")
    if ci:
        n_boot = _check_n_boot(n_boot)
        seed = _check_seed(seed)
    prep = _prepare(y_true, scores, task, class_names, scores_are, threshold)

    # Everything that gets a CI, keyed by its place in the output.
    keyed: dict[tuple[str, ...], _BatchFn] = {}
    if task == "multilabel":
        keyed[("mean_auroc",)] = _resolve_metric(prep, "mean_auroc")
        for name in prep.names:
            keyed[("per_label", name, "auroc")] = _resolve_metric(prep, f"auroc:{name}")
    else:
        head = ["accuracy", "macro_f1", "kappa", "balanced_accuracy", "ece"]
        if task == "binary":
            head[1:1] = ["sensitivity", "specificity", "auroc"]
        for m in head:
            keyed[(m,)] = _resolve_metric(prep, m)
        for name in prep.names:
            for m in ("sensitivity", "specificity"):
                keyed[("per_class", name, m)] = _resolve_metric(prep, f"{m}:{name}")

    fns = list(keyed.values())
    point_batch = _Batch(prep, None)
    points = [float(fn(point_batch)[0]) for fn in fns]
    if ci:
        boot = _resample([prep], [fns], n_boot, seed)[0]
        cis = [_percentile_ci(v)[:2] for v in boot]
    else:
        cis = [(math.nan, math.nan)] * len(fns)
    entries = {
        key: {"value": _json_float(p), "ci95": _json_ci(*c)}
        for key, p, c in zip(keyed, points, cis, strict=True)
    }

    out: dict[str, Any] = {
        "task": task,
        "n_samples": prep.n,
        "scores_are": scores_are,
    }
    if task == "multilabel":
        out.update(_multilabel_section(prep, point_batch, entries))
    else:
        out.update(_class_section(prep, point_batch, entries))
    out["bootstrap"] = (
        {"method": "percentile", "level": CI_LEVEL, "n_boot": n_boot, "seed": seed}
        if ci else None
    )
    if reference_scores is not None:
        ref_view = _interpret_scores(
            reference_scores, task,
            scores_are if reference_scores_are is None else reference_scores_are,
            prep.threshold, "reference_scores",
        )
        if ref_view.raw.shape != prep.scores.shape:
            raise ConfigError(
                f"reference_scores has shape {ref_view.raw.shape} but scores has shape "
                f"{prep.scores.shape}"
            )
        out["top1_agreement"] = float(np.mean(ref_view.pred == prep.view.pred))
    return out


def _class_section(
    prep: _Prepared, batch: _Batch, entries: dict[tuple[str, ...], dict[str, Any]]
) -> dict[str, Any]:
    pc = batch.per_class
    support = pc["support"][0]
    has_samples = support > 0
    out: dict[str, Any] = {"class_names": list(prep.names)}
    if prep.task == "binary":
        out["threshold"] = prep.threshold
        out["positive_class"] = prep.names[1]
        out["auroc"] = entries[("auroc",)]
        out["sensitivity"] = entries[("sensitivity",)]
        out["specificity"] = entries[("specificity",)]
        out["precision"] = _json_float(pc["precision"][0, 1])
        out["f1"] = _json_float(pc["f1"][0, 1])
    for key in ("accuracy", "macro_f1", "kappa", "balanced_accuracy", "ece"):
        out[key] = entries[(key,)]
    out["macro_precision"] = _json_float(
        _nanmean(np.where(has_samples, pc["precision"][0], math.nan))[()]
    )
    out["macro_specificity"] = _json_float(
        _nanmean(np.where(has_samples, pc["specificity"][0], math.nan))[()]
    )
    out["classes_without_samples"] = [c for c, ok in zip(prep.names, has_samples, strict=True)
                                     if not ok]
    out["confusion_matrix"] = batch.confusion[0].astype(np.int64).tolist()
    out["per_class"] = {
        name: {
            "support": int(support[k]),
            "sensitivity": entries[("per_class", name, "sensitivity")],
            "specificity": entries[("per_class", name, "specificity")],
            "precision": _json_float(pc["precision"][0, k]),
            "f1": _json_float(pc["f1"][0, k]),
        }
        for k, name in enumerate(prep.names)
    }
    return out


def _multilabel_section(
    prep: _Prepared, batch: _Batch, entries: dict[tuple[str, ...], dict[str, Any]]
) -> dict[str, Any]:
    n_pos = prep.y.sum(axis=0)
    sens, spec = (r[0] for r in batch.label_rates)
    aurocs = batch.aurocs[0]
    per_label: dict[str, Any] = {}
    missing: list[str] = []
    for j, name in enumerate(prep.names):
        pos, neg = int(n_pos[j]), prep.n - int(n_pos[j])
        reason = "no positive samples" if pos == 0 else "no negative samples" if neg == 0 else None
        if reason is not None:
            missing.append(name)
        per_label[name] = {
            "n_positive": pos,
            "n_negative": neg,
            "auroc": entries[("per_label", name, "auroc")],
            "auroc_undefined": reason,
            "sensitivity": _json_float(sens[j]),
            "specificity": _json_float(spec[j]),
        }
    return {
        "label_names": list(prep.names),
        "threshold": prep.threshold,
        "mean_auroc": entries[("mean_auroc",)],
        "n_labels_in_mean_auroc": int(np.count_nonzero(~np.isnan(aurocs))),
        "labels_without_auroc": missing,
        "macro_sensitivity": _json_float(_nanmean(sens)[()]),
        "macro_specificity": _json_float(_nanmean(spec)[()]),
        "per_label": per_label,
    }
