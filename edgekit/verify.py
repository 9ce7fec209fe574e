"""Parity and accuracy of an exported artifact against its source model, on held-out images.

fp32 artifacts must reproduce the source's logits within the recipe's tolerance (1e-4);
INT8 and fp16 artifacts are held to the recipe's accuracy gate: top-1 accuracy and every
class's sensitivity may drop by at most so many points (multi-label: mean AUROC).

Each check of the gate is decided on the confidence interval of the PAIRED drop (the same
images through source and artifact): **pass** when the whole interval is within the limit,
**fail** when the whole interval exceeds it, **inconclusive** when the images cannot tell —
with the number of images that would decide it. Accuracy and sensitivity drops use Tango's
score interval for a difference of paired proportions, which rests on the discordant pairs
(images one model gets right and the other wrong) and stays honest when there are none; AUROC
drops a paired bootstrap. A drop on one image of a small class is inconclusive, never a FAIL.

Pruned bundles (recipes with ``pruning``) are held to the gate against the UNPRUNED source at
every precision, fp32 included; their fp32 artifacts must also reproduce the pruned PyTorch
model within the tolerance (``parity_ref``, available at compress time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

from edgekit import metrics
from edgekit.evaluate import as_logits, metrics_task, score, threshold_of
from edgekit.metrics import metric_value as _v

Decision = Literal["pass", "fail", "inconclusive"]
DECISIONS: tuple[Decision, ...] = ("pass", "fail", "inconclusive")


@dataclass(frozen=True)
class Check:
    """One line of the gate: what was measured, its limit and the decision.

    ``value`` is the point estimate (a drop in points, AUROC or a logit difference), ``ci95``
    its confidence interval (same unit), ``n`` the images it rests on, ``discordant`` the paired
    images the artifact got wrong and right where the source did the opposite, and
    ``images_to_decide`` — for an inconclusive check — how many images (of that class, for a
    per-class check) would decide it if the rates seen held (None: the drop sits on the
    limit). ``passed`` is ``decision == "pass"``."""

    check: str
    value: float | None
    limit: float
    decision: Decision
    ci95: tuple[float, float] | None = None
    n: int | None = None
    discordant: tuple[int, int] | None = None
    images_to_decide: int | None = None

    @property
    def passed(self) -> bool:
        return self.decision == "pass"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"check": self.check, "value": self.value, "limit": self.limit,
                               "passed": self.passed, "decision": self.decision}
        if self.ci95 is not None:
            out["ci95"] = list(self.ci95)
        if self.n is not None:
            out["n"] = self.n
        if self.discordant is not None:
            out["discordant"] = {"worse": self.discordant[0], "better": self.discordant[1]}
        if self.decision == "inconclusive":
            out["images_to_decide"] = self.images_to_decide
        return out

    def describe(self) -> str:
        """``top-1 accuracy drop (points) 2.1 [0.4, 3.9] > 1`` style one-liner, with the
        images needed when inconclusive."""
        unit = "" if self.value is None else f" {self.value:.3g}"
        ci = (f" [95 % CI {self.ci95[0]:.3g}, {self.ci95[1]:.3g}]" if self.ci95 is not None
              else "")
        rel = {"pass": "within", "fail": "beyond"}.get(self.decision, "vs")
        text = f"{self.check}{unit}{ci} {rel} limit {self.limit:g}"
        if self.n is not None:
            text += f" on {self.n} images"
        if self.decision == "inconclusive":
            text += (f"; about {self.images_to_decide:,} images would decide it"
                     if self.images_to_decide else "; more images would not decide it"
                     if self.value is not None else "")
        return text


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
    def decision(self) -> Decision:
        """fail when any check fails, else inconclusive when any is, else pass."""
        found = {c.decision for c in self.checks}
        return "fail" if "fail" in found else "inconclusive" if "inconclusive" in found \
            else "pass"

    @property
    def passed(self) -> bool:
        return self.decision == "pass"

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if c.decision == "fail"]

    @property
    def inconclusive_checks(self) -> list[Check]:
        return [c for c in self.checks if c.decision == "inconclusive"]

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
        out["decision"] = self.decision
        return out


def _within(drop: float, limit: float) -> bool:
    """``drop <= limit`` up to float rounding: a drop of exactly the limit (e.g. 0.912 − 0.902
    = 1.0000000000000009 points) passes."""
    return drop <= limit + 1e-9 * max(1.0, abs(limit))


# ------------------------------------------------------------------------- gate statistics
# The gate decides on a CONFIDENCE INTERVAL of the paired drop, not on its point estimate:
# pass when the interval lies within the limit, fail when it lies beyond it, inconclusive when
# it straddles it. Source and artifact see the same images, so only the discordant pairs —
# images one gets right and the other wrong — carry information about the drop.

def _z(confidence: float) -> float:
    """Two-sided normal quantile of ``confidence`` (0.95 → 1.96)."""
    return float(NormalDist().inv_cdf(0.5 + confidence / 2))


def _tango_z(worse: float, better: float, n: float, delta: float) -> float:
    """Tango's score statistic for H0: drop = ``delta`` (drop = P(source right, artifact wrong)
    − P(source wrong, artifact right)), with the restricted maximum-likelihood estimate of the
    discordant cell under H0 (Tango 1998, Statistics in Medicine 17:891)."""
    a = 2 * n
    b = -worse - better + (2 * n - worse + better) * delta
    c = -better * delta * (1 - delta)
    q21 = max((math.sqrt(max(b * b - 4 * a * c, 0.0)) - b) / (2 * a), 0.0)
    num = worse - better - n * delta
    var = n * (2 * q21 + delta * (1 - delta))
    if var <= 0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def paired_drop_ci(worse: float, better: float, n: float, confidence: float = 0.95
                   ) -> tuple[float, float, float]:
    """The drop (``(worse − better) / n``, a fraction) and its Tango score confidence interval.

    ``worse``: images the source gets right and the artifact wrong; ``better``: the reverse;
    ``n``: all paired images. Unlike a bootstrap or Wald interval it stays honest with few or
    no discordant pairs: 0 of 118 gives [−3.2, +3.2] points, not [0, 0]."""
    if n <= 0:
        return math.nan, -1.0, 1.0
    z = _z(confidence)
    est = (worse - better) / n

    def root(target: float, lo: float, hi: float) -> float:
        # _tango_z decreases in delta: bisect for _tango_z(delta) = target
        for _ in range(100):
            mid = (lo + hi) / 2
            if _tango_z(worse, better, n, mid) > target:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    eps = 1e-12
    return est, root(z, -1 + eps, est), root(-z, est, 1 - eps)


def decide(lo: float, hi: float, limit: float) -> str:
    """``pass`` when the whole interval is within ``limit``, ``fail`` when the whole interval
    exceeds it, ``inconclusive`` otherwise."""
    if _within(hi, limit):
        return "pass"
    return "fail" if lo > limit else "inconclusive"


def images_to_decide(worse: int, better: int, n: int, limit: float,
                     confidence: float = 0.95, cap: int = 10_000_000) -> int | None:
    """How many paired images would decide a check that is inconclusive on ``n``, if the
    discordance rates seen so far held: the smallest count whose interval lies entirely on one
    side of ``limit`` (a fraction). None when even ``cap`` would not (the drop sits on the
    limit)."""
    rw, rb = worse / n, better / n

    def decided(m: float) -> bool:
        _, lo, hi = paired_drop_ci(rw * m, rb * m, m, confidence)
        return decide(lo, hi, limit) != "inconclusive"

    lo_m, hi_m = n, n
    while not decided(hi_m):
        lo_m, hi_m = hi_m, hi_m * 2
        if hi_m > cap:
            return None
    while hi_m - lo_m > max(1, lo_m // 200):  # within 0.5 %: it is an estimate anyway
        mid = (lo_m + hi_m) // 2
        lo_m, hi_m = (lo_m, mid) if decided(mid) else (mid, hi_m)
    return int(hi_m)


def _paired_check(name: str, src_ok: np.ndarray, art_ok: np.ndarray, limit_points: float,
                  confidence: float, exempt: bool) -> Check:
    """A drop in a proportion (accuracy, a class's sensitivity) between paired decisions, in
    points, decided on its Tango interval."""
    n = int(len(src_ok))
    worse = int(np.sum(src_ok & ~art_ok))
    better = int(np.sum(~src_ok & art_ok))
    est, lo, hi = paired_drop_ci(worse, better, n, confidence)
    limit = limit_points / 100
    decision = "pass" if exempt else decide(lo, hi, limit)
    needed = (images_to_decide(worse, better, n, limit, confidence)
              if decision == "inconclusive" else None)
    return Check(name, 100 * est, limit_points, decision, (100 * lo, 100 * hi), n,
                 (worse, better), needed)


def _bootstrap_check(name: str, drop: Any, limit: float, n: int, exempt: bool) -> Check:
    """An AUROC drop decided on its paired-bootstrap interval (``drop``: a DeltaInterval of
    source − artifact); the images that would decide an inconclusive one are extrapolated from
    the interval's width (∝ 1/√n)."""
    d, lo, hi = float(drop.value), float(drop.lo), float(drop.hi)
    if math.isnan(lo) or math.isnan(hi):
        lo = hi = d
    decision = "pass" if exempt else decide(lo, hi, limit)
    needed = None
    if decision == "inconclusive" and not math.isclose(d, limit):
        half = (hi - d) if d < limit else (d - lo)
        needed = math.ceil(n * (half / abs(limit - d)) ** 2)
    return Check(name, d, limit, decision, (lo, hi), n, None, needed)


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
    pruned = getattr(recipe, "pruning", None) is not None
    exempt = precision == "fp32" and not pruned  # exact copies: held to parity, not to a gate
    gate = recipe.gate
    if kind != "multilabel":  # single-label: argmax, or a binary head's thresholded decision
        t = threshold_of(head)
        lo_out, lo_ref = as_logits(out, head, kind), as_logits(ref, head, kind)
        result["top1_agreement"] = metrics.top1_agreement(lo_out, lo_ref, task=kind,
                                                          threshold=t)
        labels = np.asarray(y).astype(np.int64).reshape(-1)
        src_ok = metrics.predict(lo_ref, task=kind, threshold=t) == labels
        art_ok = metrics.predict(lo_out, task=kind, threshold=t) == labels
        top1 = _paired_check("top-1 accuracy drop (points)", src_ok, art_ok,
                             gate.max_top1_drop, gate.confidence, exempt)
        # artifact − source with the gate's own paired (Tango) interval: a bootstrap collapses
        # to [0, 0] when no image changes, which says nothing about what more images would show
        assert top1.ci95 is not None and top1.value is not None
        result["accuracy_delta"] = {"value": -top1.value / 100,
                                    "ci95": [-top1.ci95[1] / 100, -top1.ci95[0] / 100]}
    checks = []
    if precision == "fp32" and (parity_ref is not None or not pruned):
        tol = recipe.verification.fp32_tolerance
        base = ref if parity_ref is None else parity_ref
        parity = float(np.abs(out.astype(np.float64) - base.astype(np.float64)).max())
        checks.append(Check("max |logit diff|" + (" vs the pruned model" if pruned else ""),
                            parity, tol, "pass" if parity <= tol else "fail", n=int(len(y))))
    if parity_ref is not None:
        result["max_abs_logit_diff_vs_pruned"] = float(np.abs(
            out.astype(np.float64) - parity_ref.astype(np.float64)).max())
    am = result["metrics"]
    if kind == "multilabel":
        src, art = _v(source_metrics["mean_auroc"]), _v(am["mean_auroc"])
        if src is not None and art is not None:
            drop = metrics.delta_ci("mean_auroc", y, as_logits(ref, head, kind),
                                    as_logits(out, head, kind), task="multilabel",
                                    class_names=list(class_names), seed=seed)
            checks.append(_bootstrap_check("mean AUROC drop", drop, gate.max_auroc_drop, len(y),
                                           exempt))
        elif not exempt:  # no label has positives and negatives: nothing was checked
            checks.append(Check("mean AUROC drop (undefined: no label has both positive and "
                                "negative images)", None, gate.max_auroc_drop, "inconclusive",
                                n=len(y)))
    else:
        checks.append(top1)
        positive = class_names[-1] if kind == "binary" else None
        for k, name in enumerate(class_names):
            mask = labels == k
            if not mask.any():
                continue
            # a binary head: the negative class's sensitivity is the specificity
            what = (f"sensitivity drop: {name} (points)" if kind != "binary" else
                    f"sensitivity drop: {name} (points)" if name == positive else
                    f"specificity drop: {positive} vs {name} (points)")
            checks.append(_paired_check(what, src_ok[mask], art_ok[mask],
                                        gate.max_sensitivity_drop, gate.confidence, exempt))
        if kind == "binary" and _v(source_metrics.get("auroc")) is not None \
                and _v(am.get("auroc")) is not None:
            drop = metrics.delta_ci("auroc", y, lo_ref, lo_out, task="binary",
                                    class_names=list(class_names), threshold=t, seed=seed)
            checks.append(_bootstrap_check("AUROC drop", drop, gate.max_auroc_drop, len(y),
                                           exempt))
    return Verification(**result, checks=tuple(checks))
