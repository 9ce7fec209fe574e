"""Score a source model on images with ``edgekit.metrics``.

``load_arrays`` is the one place where a dataset is read through its preprocessing spec into
memory; training, evaluation and (later) calibration and verification share it.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import metrics
from edgekit.data.folder import Dataset, scan
from edgekit.data.preprocess import PreprocessSpec, small_images_warning
from edgekit.errors import DataError
from edgekit.ui import progress_bar


def targets_of(dataset: Dataset) -> np.ndarray:
    """Class indices (N,) for multiclass, or 0/1 matrix (N, L) for multilabel."""
    if dataset.task == "multilabel":
        return np.array([s.target for s in dataset.samples], dtype=np.float32).reshape(len(dataset), -1)
    return np.array([s.target for s in dataset.samples], dtype=np.int64)


def load_arrays(dataset: Dataset, spec: PreprocessSpec, *, dtype: Any = np.float32,
                on_error: str = "fail",
                description: str = "Loading images") -> tuple[np.ndarray, np.ndarray]:
    """Read every sample through ``spec``: ``(inputs (N, *shape), targets)``.

    A file that cannot be decoded raises DataError naming it (``on_error="fail"``), or is
    dropped from ``dataset`` with a warning naming it (``"skip"``).
    """
    n = len(dataset)
    if n == 0:
        raise DataError(f"{dataset.root}: no images to load")
    x = np.empty((n, *spec.input_shape(1)[1:]), dtype=dtype)
    kept: list = []
    small: list[Path] = []
    with progress_bar(description, n) as bar:
        for s in dataset.samples:
            try:
                x[len(kept)] = spec.load(s.path, small)
                kept.append(s)
            except DataError as exc:
                if on_error == "fail":
                    raise
                warnings.warn(f"skipping {exc}", stacklevel=2)
                dataset.skipped.append((s.path, str(exc)))
            bar.advance()
    if not kept:
        raise DataError(f"{dataset.root}: none of the {n} images could be read")
    note = small_images_warning(small, len(kept), spec)
    if note:
        warnings.warn(note, stacklevel=2)
    dataset.samples = kept
    return x[:len(kept)], targets_of(dataset)


def metrics_task(task: str, outputs: np.ndarray) -> str:
    """The metrics task of a model's outputs: "multilabel", "binary" (one output unit: a sigmoid
    head whose two classes are the data's two folders) or "multiclass"."""
    if task == "multilabel":
        return "multilabel"
    return "binary" if outputs.ndim == 1 or outputs.shape[1] == 1 else "multiclass"


def as_logits(outputs: np.ndarray, head: dict[str, Any] | None, kind: str) -> np.ndarray:
    """Model outputs as logits for scoring (``kind``: the metrics task). Probabilities (an
    in-graph softmax or sigmoid) map back exactly where it matters: softmax(log p) = p / Σp
    (robust to INT8 rows that do not sum to 1), and a sigmoid output p becomes log(p / (1 − p)),
    so thresholds and rankings are kept."""
    if not head or head.get("scores_are", "logits") == "logits":
        return outputs
    p = np.clip(np.asarray(outputs, np.float64), 1e-7, 1.0 - 1e-7)
    return np.log(p) if kind == "multiclass" else np.log(p) - np.log1p(-p)


def score(y: np.ndarray, logits: np.ndarray, *, task: str, class_names: tuple[str, ...],
          ci: bool = True, seed: int = 0, head: dict[str, Any] | None = None) -> dict[str, Any]:
    """All metrics for ``logits`` against ``y`` (a JSON-ready dict, see ``edgekit.metrics``).

    ``head`` (a LoadedModel's / manifest's) says whether the outputs are probabilities and the
    decision threshold of sigmoid heads; binary heads get sensitivity, specificity and AUROC."""
    kind = metrics_task(task, logits)
    return metrics.evaluate(y, as_logits(logits, head, kind), task=kind,
                            class_names=list(class_names), scores_are="logits", ci=ci,
                            seed=seed, threshold=threshold_of(head))


def threshold_of(head: dict[str, Any] | None) -> float:
    return float((head or {}).get("threshold", 0.5))


@dataclass
class Evaluation:
    """The result of ``evaluate_model``: where, how many, and every metric."""

    data: Path
    n: int
    metrics: dict[str, Any]
    skipped: list[str]


def held_out_dataset(loaded: Any, data: str | Path | None = None) -> Dataset:
    """The validation images recorded in a checkpoint by ``edgekit train`` (never trained on).

    ``data`` overrides the recorded data root (e.g. the same dataset at another path).
    """
    split = loaded.metadata.get("split") or {}
    files = split.get("val_files")
    if not files:
        raise DataError(f"{loaded.source}: the checkpoint records no validation split "
                        "(it was not written by edgekit train)")
    root = Path(data or split["data_root"])
    full = scan(root, task=loaded.task, on_error="skip",
                expected_classes=None if loaded.task == "multilabel" else loaded.class_names)
    by_rel = {full.relative(s): s for s in full.samples}
    missing = [f for f in files if f not in by_rel]
    if missing:
        raise DataError(f"{root}: {len(missing)} held-out image(s) recorded in the checkpoint "
                        f"are missing, e.g. {root / missing[0]}")
    return full.subset([by_rel[f] for f in files])


def evaluate_model(loaded: Any, data: str | Path | Dataset, *, on_error: str = "skip",
                   batch_size: int = 64, seed: int = 0) -> Evaluation:
    """Score a ``LoadedModel`` on a dataset, or on every image of a folder with its classes."""
    if isinstance(data, Dataset):
        dataset = data
    else:
        dataset = scan(data, task=loaded.task, on_error=on_error,
                       expected_classes=None if loaded.task == "multilabel" else loaded.class_names)
    x, y = load_arrays(dataset, loaded.spec, on_error=on_error, description="Loading images")
    logits = loaded.predict(x, batch_size=batch_size)
    return Evaluation(dataset.root, len(dataset),
                      score(y, logits, task=loaded.task, class_names=loaded.class_names,
                            seed=seed, head=loaded.head),
                      [str(p) for p, _ in dataset.skipped])


# ------------------------------------------------------------------- sanity of a source model
CHANCE_MARGIN = 0.10  # accuracy within chance + 10 points (at most 1.5 × chance) is "near chance"
PERMUTATION_GAIN = 0.30  # a relabelling must add ≥ 30 points to be reported as the likely cause


def best_permutation(cm: np.ndarray) -> tuple[int, ...]:
    """The class each model output most likely means: ``perm[j]`` is the true class the
    model's output j predicts, maximising the correctly classified images of the confusion
    matrix ``cm`` (rows: true class, columns: predicted output). Exact (the Hungarian method,
    via SciPy when present; exhaustive search up to 8 classes otherwise)."""
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # pragma: no cover - scipy comes with the backends' dependencies
        if k > 8:
            return tuple(range(k))
        best = max(itertools.permutations(range(k)),
                   key=lambda p: sum(cm[p[j], j] for j in range(k)))
        return tuple(best)
    rows, cols = linear_sum_assignment(-cm)
    perm = [0] * k
    for t, j in zip(rows, cols, strict=True):
        perm[j] = int(t)
    return tuple(perm)


def source_warnings(source_metrics: dict[str, Any], class_names: tuple[str, ...]) -> list[str]:
    """Loud warnings about a source model whose own accuracy on the labelled images says
    something is wrong before any compression: near-chance accuracy, and a confusion matrix
    that a relabelling of the outputs would fix (class order), with the ``--classes`` value
    that fits. Empty for multi-label models and healthy ones."""
    cm = source_metrics.get("confusion_matrix")
    acc = metrics.metric_value(source_metrics.get("accuracy"))
    if cm is None or acc is None or len(class_names) < 2:
        return []
    cm = np.asarray(cm, dtype=np.float64)
    n, k = cm.sum(), len(class_names)
    if n == 0 or cm.shape != (k, k):
        return []
    out = []
    perm = best_permutation(cm)
    fitted = sum(cm[perm[j], j] for j in range(k)) / n
    if perm != tuple(range(k)) and fitted - acc >= PERMUTATION_GAIN:
        order = ",".join(class_names[t] for t in perm)
        moved = "; ".join(f"output {j} ({class_names[j]}) looks like {class_names[perm[j]]}"
                          for j in range(k) if perm[j] != j)
        out.append(f"the source model's outputs look PERMUTED: {100 * acc:.1f} % accuracy as "
                   f"labelled, {100 * fitted:.1f} % if {moved}. Its class order probably "
                   f"differs from the folders': if so, pass --classes {order}")
    chance = 1.0 / k
    if acc <= min(chance + CHANCE_MARGIN, 1.5 * chance) and not out:
        out.append(f"the source model is near chance on these images ({100 * acc:.1f} % "
                   f"accuracy, chance {100 * chance:.0f} %, {int(n)} images): check its "
                   "preprocessing (pixel scale, mean/std, colour, layout, resize filter) and "
                   "the class order (--classes) before trusting any comparison with it")
    return out
