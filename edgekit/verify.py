"""Parity and accuracy of an exported artifact against its source model, on held-out images.

fp32 artifacts must reproduce the source's logits within the recipe's tolerance (1e-4);
INT8 and fp16 artifacts are held to the recipe's accuracy gate: top-1 accuracy and every
class's sensitivity may drop by at most so many points (multi-label: mean AUROC).

Pruned bundles (recipes with ``pruning``) are held to the gate against the UNPRUNED source at
every precision, fp32 included; their fp32 artifacts must also reproduce the pruned PyTorch
model within the tolerance (``parity_ref``, available at compress time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit import metrics
from edgekit.evaluate import as_logits, metrics_task, score, threshold_of
from edgekit.metrics import metric_value as _v


@dataclass(frozen=True)
class Check:
    """One line of the gate: what was measured, its limit, and whether it is within it."""

    check: str
    value: float | None
    limit: float
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "value": self.value, "limit": self.limit,
                "passed": self.passed}


@dataclass(frozen=True)
class Verification:
    """One artifact (or pruned model) held to its source on the same held-out images.

    ``metrics`` is ``edgekit.metrics``' JSON for the artifact's outputs; ``top1_agreement`` and
    ``accuracy_delta`` (the paired accuracy difference with its 95 % CI) are single-label only;
    ``max_abs_logit_diff_vs_pruned`` only for artifacts of a pruned model. ``passed``: every
    check of the gate passed. ``to_json()`` is the record in the bundle manifest."""

    n: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    metrics: dict[str, Any]
    checks: tuple[Check, ...]
    top1_agreement: float | None = None
    accuracy_delta: dict[str, Any] | None = None
    max_abs_logit_diff_vs_pruned: float | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n, "max_abs_logit_diff": self.max_abs_logit_diff,
                               "mean_abs_logit_diff": self.mean_abs_logit_diff,
                               "metrics": self.metrics}
        if self.top1_agreement is not None:
            out["top1_agreement"] = self.top1_agreement
            out["accuracy_delta"] = self.accuracy_delta
        if self.max_abs_logit_diff_vs_pruned is not None:
            out["max_abs_logit_diff_vs_pruned"] = self.max_abs_logit_diff_vs_pruned
        out["checks"] = [c.to_json() for c in self.checks]
        out["passed"] = self.passed
        return out


def _within(drop: float, limit: float) -> bool:
    """``drop <= limit`` up to float rounding: a drop of exactly the limit (e.g. 0.912 − 0.902
    = 1.0000000000000009 points) passes."""
    return drop <= limit + 1e-9 * max(1.0, abs(limit))


def compare(ref: np.ndarray, out: np.ndarray, y: np.ndarray, *, task: str,
            class_names: tuple[str, ...], precision: str, recipe: Any,
            source_metrics: dict[str, Any], seed: int = 0,
            parity_ref: np.ndarray | None = None,
            head: dict[str, Any] | None = None) -> Verification:
    """Everything the bundle records about one artifact's agreement with its source.

    ``ref`` and ``source_metrics`` are the source model's; ``parity_ref`` (pruned bundles) the
    logits of the pruned model the artifact was converted from; ``head`` how to read the outputs
    (probabilities or logits, the threshold of a binary sigmoid head)."""
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    kind = metrics_task(task, ref)
    result: dict[str, Any] = {
        "n": int(len(y)),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "metrics": score(y, out, task=task, class_names=class_names, seed=seed, head=head),
    }
    if kind != "multilabel":  # single-label: argmax, or a binary head's thresholded decision
        t = threshold_of(head)
        lo_out, lo_ref = as_logits(out, head, kind), as_logits(ref, head, kind)
        result["top1_agreement"] = metrics.top1_agreement(lo_out, lo_ref, task=kind,
                                                          threshold=t)
        delta = metrics.delta_ci("accuracy", y, lo_out, lo_ref, task=kind, threshold=t,
                                 class_names=list(class_names), seed=seed)
        result["accuracy_delta"] = {"value": delta.value, "ci95": [delta.lo, delta.hi]}
    checks = []
    pruned = getattr(recipe, "pruning", None) is not None
    if precision == "fp32" and (parity_ref is not None or not pruned):
        tol = recipe.verification.fp32_tolerance
        base = ref if parity_ref is None else parity_ref
        parity = float(np.abs(out.astype(np.float64) - base.astype(np.float64)).max())
        checks.append({"check": "max |logit diff|" + (" vs the pruned model" if pruned else ""),
                       "value": parity, "limit": tol, "passed": parity <= tol})
    if parity_ref is not None:
        result["max_abs_logit_diff_vs_pruned"] = float(np.abs(
            out.astype(np.float64) - parity_ref.astype(np.float64)).max())
    exempt = precision == "fp32" and not pruned  # exact copies: held to parity, not to a gate
    gate = recipe.gate
    am = result["metrics"]
    if kind == "multilabel":
        src, art = _v(source_metrics["mean_auroc"]), _v(am["mean_auroc"])
        if src is not None and art is not None:
            drop = src - art
            checks.append({"check": "mean AUROC drop", "value": drop,
                           "limit": gate.max_auroc_drop,
                           "passed": exempt or _within(drop, gate.max_auroc_drop)})
        elif not exempt:  # no label has positives and negatives: nothing was checked
            checks.append({"check": "mean AUROC drop (undefined: no label has both positive "
                                    "and negative images)", "value": None,
                           "limit": gate.max_auroc_drop, "passed": False})
    else:
        drop = 100 * (_v(source_metrics["accuracy"]) - _v(am["accuracy"]))
        checks.append({"check": "top-1 accuracy drop (points)", "value": drop,
                       "limit": gate.max_top1_drop,
                       "passed": exempt or _within(drop, gate.max_top1_drop)})
        positive = class_names[-1] if kind == "binary" else None
        for name in class_names:
            s_src = _v(source_metrics["per_class"][name]["sensitivity"])
            s_art = _v(am["per_class"][name]["sensitivity"])
            if s_src is None or s_art is None:
                continue
            drop = 100 * (s_src - s_art)
            # a binary head: the negative class's sensitivity is the specificity
            what = (f"sensitivity drop: {name} (points)" if kind != "binary" else
                    f"sensitivity drop: {name} (points)" if name == positive else
                    f"specificity drop: {positive} vs {name} (points)")
            checks.append({"check": what, "value": drop,
                           "limit": gate.max_sensitivity_drop,
                           "passed": exempt or _within(drop, gate.max_sensitivity_drop)})
        if kind == "binary" and _v(source_metrics.get("auroc")) is not None \
                and _v(am.get("auroc")) is not None:
            drop = _v(source_metrics["auroc"]) - _v(am["auroc"])
            checks.append({"check": "AUROC drop", "value": drop, "limit": gate.max_auroc_drop,
                           "passed": exempt or _within(drop, gate.max_auroc_drop)})
    return Verification(**result, checks=tuple(Check(**c) for c in checks))
