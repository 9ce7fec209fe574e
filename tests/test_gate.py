"""The accuracy gate's statistics: pass / fail / inconclusive decided on paired intervals.

Everything here runs on constructed logits, so the number of images, of discordant pairs and
of each class is exactly what the test says."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_support import run_cli

from edgekit.bundle import read_manifest
from edgekit.evaluate import score
from edgekit.recipes import load_recipe
from edgekit.verify import compare, decide, images_to_decide, paired_drop_ci

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def _case(per_class: int, flips: dict[int, int], gains: dict[int, int] | None = None,
          src_wrong: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``per_class`` images of each class; the source gets every image right except
    ``src_wrong`` per class (which the artifact gets right when ``gains`` says so); the artifact
    gets ``flips[k]`` of class k's source-correct images wrong. Returns y, source logits,
    artifact logits."""
    gains = gains or {}
    y = np.repeat(np.arange(len(CLASSES)), per_class)
    ref = np.full((len(y), len(CLASSES)), -2.0, np.float32)
    ref[np.arange(len(y)), y] = 2.0
    out = ref + np.float32(0.01)
    for k in range(len(CLASSES)):
        idx = np.flatnonzero(y == k)
        wrong, rest = idx[:src_wrong], idx[src_wrong:]
        other = (k + 1) % len(CLASSES)
        ref[wrong, other], out[wrong, other] = 5.0, 5.0
        out[wrong[:gains.get(k, 0)], other] = -5.0  # the artifact gets these right
        out[rest[:flips.get(k, 0)], other] = 5.0  # and these wrong
    return y, ref, out


def _verify(y: np.ndarray, ref: np.ndarray, out: np.ndarray, recipe: str = "int8"):
    rec = load_recipe(recipe)
    src = score(y, ref, task="multiclass", class_names=CLASSES)
    return compare(ref, out, y, task="multiclass", class_names=CLASSES, precision="int8",
                   recipe=rec, source_metrics=src)


def _check(v, name: str):
    return next(c for c in v.checks if c.check.startswith(name))


# ------------------------------------------------------------------------ the interval itself
def test_tango_interval_is_honest_without_discordant_pairs():
    est, lo, hi = paired_drop_ci(0, 0, 118)
    assert est == 0 and lo == pytest.approx(-hi)
    # 0 of n discordant: the upper bound solves n·Δ/(1 − Δ) = z², i.e. ~3.2 points at n = 118
    z2 = 1.959964 ** 2
    assert hi == pytest.approx(z2 / (118 + z2), rel=1e-6)


def test_tango_interval_contains_the_estimate_and_narrows_with_more_images():
    widths = []
    for n in (50, 500, 5000):
        est, lo, hi = paired_drop_ci(0.04 * n, 0.01 * n, n)
        assert lo < est < hi and est == pytest.approx(0.03)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert widths[1] / widths[2] == pytest.approx(np.sqrt(10), rel=0.1)


def test_tango_interval_matches_a_simulated_coverage():
    """95 % intervals cover the true drop about 95 % of the time (paired multinomial draws)."""
    rng = np.random.default_rng(0)
    p_worse, p_better, n, hits = 0.03, 0.01, 300, 0
    for _ in range(400):
        cells = rng.multinomial(n, [p_worse, p_better, 1 - p_worse - p_better])
        _, lo, hi = paired_drop_ci(cells[0], cells[1], n)
        hits += lo <= p_worse - p_better <= hi
    assert 0.92 <= hits / 400 <= 0.99


def test_decide_and_images_to_decide():
    assert decide(-0.01, 0.005, 0.01) == "pass"
    assert decide(0.02, 0.05, 0.01) == "fail"
    assert decide(-0.01, 0.02, 0.01) == "inconclusive"
    # no discordance: pass once n·L/(1 − L) ≥ z², ~381 images at a 1-point limit
    need = images_to_decide(0, 0, 118, 0.01)
    assert 375 <= need <= 385
    _, _, hi = paired_drop_ci(0, 0, need)
    assert hi <= 0.01
    # a drop that sits exactly on the limit is never decided
    assert images_to_decide(1, 0, 100, 0.01) is None


# ------------------------------------------------------------------------ the gate on logits
def test_one_image_of_a_small_class_is_inconclusive_not_a_failure():
    """The case that taught users --allow-accuracy-drop: 30 meningioma images, one flipped."""
    y, ref, out = _case(30, {1: 1})
    v = _verify(y, ref, out)
    c = _check(v, "sensitivity drop: meningioma")
    assert c.value == pytest.approx(100 / 30)
    assert c.decision == "inconclusive" and c.n == 30 and c.discordant == (1, 0)
    assert c.ci95[0] < 3.0 < c.ci95[1]
    assert c.images_to_decide is not None and c.images_to_decide > 30
    assert v.decision == "inconclusive" and not v.passed and not v.failed_checks
    record = json.loads(json.dumps(v.to_json()))
    assert record["decision"] == "inconclusive" and record["passed"] is False
    assert any(r["decision"] == "inconclusive" and r["images_to_decide"] for r in
               record["checks"])


def test_a_real_collapse_fails_even_on_few_images():
    """Half of 30 gliomas lost: the data show the drop exceeds the 3-point limit."""
    y, ref, out = _case(30, {0: 15})
    v = _verify(y, ref, out)
    c = _check(v, "sensitivity drop: glioma")
    assert c.decision == "fail" and c.ci95[0] > 3.0
    assert v.decision == "fail" and c in v.failed_checks
    assert _check(v, "sensitivity drop: notumor").decision == "inconclusive"


def test_enough_agreeing_images_pass():
    """1,000 images a class, 2 flips each way in one class: every check is shown within."""
    y, ref, out = _case(1000, {0: 2}, gains={0: 2}, src_wrong=50)
    v = _verify(y, ref, out)
    assert v.decision == "pass" and v.passed, [c.describe() for c in v.checks]
    top1 = _check(v, "top-1 accuracy drop")
    assert top1.value == pytest.approx(0.0) and top1.discordant == (2, 2)
    assert top1.n == 4000 and top1.ci95[1] <= 1.0


def test_the_gate_does_not_flip_on_one_image():
    """Near the limit, adding or removing one discordant image moves the decision at most from
    pass/fail to inconclusive, never from pass to fail."""
    decisions = set()
    for flips in range(0, 40):
        y, ref, out = _case(400, {2: flips})
        decisions.add((flips, _check(_verify(y, ref, out), "sensitivity drop: notumor").decision))
    by_flips = dict(decisions)
    for f in range(1, 40):
        assert {by_flips[f - 1], by_flips[f]} != {"pass", "fail"}
    assert by_flips[0] == "pass" and by_flips[39] == "fail"
    assert "inconclusive" in by_flips.values()


def test_fp32_copies_are_held_to_parity_only():
    y, ref, _ = _case(10, {})
    rec = load_recipe("fp32")
    v = compare(ref, ref.copy(), y, task="multiclass", class_names=CLASSES, precision="fp32",
                recipe=rec, source_metrics=score(y, ref, task="multiclass",
                                                 class_names=CLASSES))
    assert v.decision == "pass"  # 40 images could not show a 1-point drop, but fp32 is exact


def test_the_confidence_is_a_recipe_key():
    y, ref, out = _case(200, {0: 1})
    rec = load_recipe("int8")
    loose = rec.model_copy(update={"gate": rec.gate.model_copy(update={"confidence": 0.5})})
    src = score(y, ref, task="multiclass", class_names=CLASSES)
    a = compare(ref, out, y, task="multiclass", class_names=CLASSES, precision="int8",
                recipe=rec, source_metrics=src)
    b = compare(ref, out, y, task="multiclass", class_names=CLASSES, precision="int8",
                recipe=loose, source_metrics=src)
    wa, wb = (_check(v, "top-1").ci95 for v in (a, b))
    assert wb[1] - wb[0] < wa[1] - wa[0]


# ------------------------------------------------------------------------ compress end to end
def test_compress_on_too_few_images_is_inconclusive_and_exits_0_unless_strict(
        trained, mri_phantoms, tmp_path):
    """16 verification images cannot show a 1-point drop: inconclusive, exit 0, the bundle
    says so; --strict-gate turns it into exit 1."""
    args = ["compress", trained, "--recipe", "int8", "--backend", "onnxruntime", "--data",
            mri_phantoms, "--calibration-images", "8", "--verification-images", "16"]
    res = run_cli(*args, "--out", tmp_path / "b")
    manifest = read_manifest(tmp_path / "b")
    art = manifest["artifacts"][0]
    assert manifest["status"] == art["status"] == "inconclusive-gate"
    assert art["verification"]["decision"] == "inconclusive"
    top1 = next(c for c in art["verification"]["checks"] if c["check"].startswith("top-1"))
    assert top1["n"] == 16 and top1["images_to_decide"] > 16
    assert " inconclusive" in res.stdout and "Inconclusive" in res.stderr
    assert "? onnxruntime-int8: top-1 accuracy drop (points) " in res.stdout
    assert "images would decide it" in res.stdout
    strict = run_cli(*args, "--out", tmp_path / "s", "--strict-gate", code=1)
    assert "could not be shown to pass (--strict-gate)" in strict.stderr
    assert read_manifest(tmp_path / "s")["status"] == "inconclusive-gate"
