"""Training and fine-tuning: AdamW + warm-up/cosine, label smoothing, class weights, MixUp/CutMix,
early stopping on validation, seeded and reproducible.

``train`` trains a zoo model from a dataset folder; ``recover`` fine-tunes a compressed (e.g.
pruned) model in memory with knowledge distillation from the uncompressed one. Both run the ONE
epoch loop ``_fit`` (optimiser, schedule, augmentation, loss, validation, early stopping, best
weights), so a fix to the loop reaches both.

The data goes through the model's ONE preprocessing spec (``edgekit.data.preprocess``); the
split is de-duplicated with a perceptual hash (``edgekit.data.folder.split_dataset``). The best
epoch's weights are saved as a plain ``state_dict`` with JSON metadata (``edgekit.checkpoint``).
"""

from __future__ import annotations

import math
import numbers
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import __version__
from edgekit.checkpoint import save_checkpoint
from edgekit.data.folder import Dataset, Split, scan, split_dataset
from edgekit.errors import ConfigError, DataError
from edgekit.evaluate import load_arrays, score
from edgekit.metrics import metric_value
from edgekit.outputs import refuse_inside_data
from edgekit.sources.torch import predict_module
from edgekit.ui import progress_bar, status
from edgekit.zoo import create_model, model_config

ICH_ANY_WEIGHT = 2.0  # SEED_MODELS.md §3: BCE with "any" weighted ×2


@dataclass
class TrainConfig:
    """Everything that determines a training run (recorded in the checkpoint)."""

    model: str
    data: str
    out: str = "model.pt"
    epochs: int = 30
    input_size: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 1e-4
    warmup: float = 0.1  # fraction of all steps spent warming up linearly
    label_smoothing: float = 0.05
    class_weights: bool = True
    mixup: float = 0.0  # Beta(α, α) for MixUp; 0 turns it off
    cutmix: float = 0.0  # Beta(α, α) for CutMix; 0 turns it off
    augment: bool = True
    patience: int = 8  # epochs without validation improvement before stopping
    val_fraction: float = 0.2
    seed: int = 0
    dedup: bool = True
    max_per_class: int | None = None  # cap training images per class (quick experiments)
    grad_clip: float = 1.0
    on_error: str = "skip"

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 2, f"batch size must be >= 2, got {self.batch_size}"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (0 <= self.warmup < 1, f"warmup must be in [0, 1), got {self.warmup}"),
            (0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.mixup >= 0 and self.cutmix >= 0, "mixup/cutmix alphas must be >= 0"),
            (self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (self.max_per_class is None or self.max_per_class >= 2, "max_per_class must be >= 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


@dataclass
class TrainResult:
    """What ``train`` produced: the checkpoint, its validation metrics and the history."""

    checkpoint: Path
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    best_epoch: int
    split: dict[str, Any]
    seconds: float
    class_names: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def headline(self) -> tuple[str, float]:
        """The early-stopping metric: accuracy (multiclass) or mean AUROC (multilabel)."""
        key = "mean_auroc" if "mean_auroc" in self.metrics else "accuracy"
        return key, metric_value(self.metrics[key])


# --------------------------------------------------------------------------- augmentation
def augment_batch(x: Any, gen: Any, *, intensity: bool) -> Any:
    """Random flip, rotation ±10°, scale 0.9–1.1, shift ±6 %, and (MRI) contrast/brightness."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(n, generator=gen) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * 0.06
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if intensity:
        gain = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 0.15
        bias = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 0.05
        x = x * gain + bias
    return x


def mix_batch(x: Any, y: Any, gen: Any, *, mixup: float, cutmix: float) -> tuple[Any, Any]:
    """MixUp or CutMix (chosen at random when both are on) with soft targets ``y`` (N, K)."""
    import torch

    if mixup <= 0 and cutmix <= 0:
        return x, y
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(1, generator=gen).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    # Beta draws through numpy, seeded from the run's torch generator (torch's Beta has none).
    lam = float(np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                .beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=gen)
    if use_cutmix:
        h, w = x.shape[-2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy = int(torch.randint(0, h, (1,), generator=gen))
        cx = int(torch.randint(0, w, (1,), generator=gen))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * y + (1 - lam) * y[perm]


# --------------------------------------------------------------------------- the loop
@dataclass(frozen=True)
class _Loop:
    """The knobs of the shared epoch loop ``_fit``, taken from a TrainConfig or RecoveryConfig.

    One explicit record instead of duck-typing either config, so the loop cannot silently read
    a field that only one of them has.
    """

    epochs: int
    batch_size: int
    lr: float
    min_lr: float
    weight_decay: float
    warmup: float
    patience: int
    label_smoothing: float
    augment: bool
    grad_clip: float
    seed: int
    class_weights: bool = True
    mixup: float = 0.0
    cutmix: float = 0.0
    recalibrate_bn: int = 0  # > 0: re-estimate BN statistics on this many clean train images


def _loop_of(cfg: TrainConfig | RecoveryConfig) -> _Loop:
    common = dict(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, min_lr=cfg.min_lr,
                  weight_decay=cfg.weight_decay, warmup=cfg.warmup, patience=cfg.patience,
                  label_smoothing=cfg.label_smoothing, augment=cfg.augment,
                  grad_clip=cfg.grad_clip, seed=cfg.seed)
    if isinstance(cfg, TrainConfig):
        return _Loop(**common, class_weights=cfg.class_weights, mixup=cfg.mixup, cutmix=cfg.cutmix)
    # recovery: class weights as training uses by default; no MixUp/CutMix (the teacher's soft
    # targets already regularise, and mixed images would blur what is being distilled)
    return _Loop(**common, recalibrate_bn=cfg.recalibrate_bn)


def _lr_at(step: int, total: int, cfg: _Loop) -> float:
    warm = int(total * cfg.warmup)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def _steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Full batches only (a last batch of 1 would break BatchNorm); at least one."""
    return max(1, n_train // batch_size)


def _cap_per_class(dataset: Dataset, cap: int | None, seed: int) -> Dataset:
    if cap is None:
        return dataset
    rng = np.random.default_rng(seed)
    by: dict[int, list] = {}
    for s in dataset.samples:
        by.setdefault(s.stratum, []).append(s)
    kept = []
    for k in sorted(by):
        items = by[k]
        idx = sorted(rng.permutation(len(items))[:cap])
        kept.extend(items[i] for i in idx)
    return dataset.subset(sorted(kept, key=lambda s: s.path.as_posix()))


def _label_loss(task: str, y_train: np.ndarray, n_classes: int, *, label_smoothing: float,
                class_weights: bool) -> tuple[Callable[[Any, Any], Any], Callable[[Any], Any]]:
    """``(loss_fn(logits, soft_targets), to_soft(labels))`` for ``task``.

    Multiclass: cross-entropy on soft targets (so MixUp/CutMix mixtures work) with label
    smoothing and inverse-frequency class weights from the TRAINING labels (a rare class is not
    drowned out). Multilabel: BCE with logits, the "any" label weighted ``ICH_ANY_WEIGHT``.
    """
    import torch
    import torch.nn.functional as F

    multilabel = task == "multilabel"
    if multilabel:
        label_w = torch.ones(n_classes)
        label_w[0] = ICH_ANY_WEIGHT
        class_w = None
    else:
        counts = np.bincount(y_train, minlength=n_classes).astype(np.float64)
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0)
        class_w = torch.tensor(w, dtype=torch.float32) if class_weights else None
        label_w = None

    def loss_fn(logits: Any, soft: Any) -> Any:
        if multilabel:
            return (F.binary_cross_entropy_with_logits(logits, soft, reduction="none") * label_w).mean()
        return F.cross_entropy(logits, soft, weight=class_w, label_smoothing=label_smoothing)

    def to_soft(yb: Any) -> Any:
        return yb.float() if multilabel else F.one_hot(yb, n_classes).float()

    return loss_fn, to_soft


def _distillation_loss(student_logits: Any, teacher_logits: Any, *, task: str,
                       temperature: float) -> Any:
    """How far the student's outputs are from the teacher's.

    Multiclass: ``KL(softmax(t/T) ‖ softmax(s/T)) · T²`` averaged over the batch (Hinton et al.;
    the T² keeps the gradient scale independent of T). Multilabel: BCE with logits of the student
    against the teacher's sigmoid probabilities, unweighted and without a temperature (each
    label is its own two-class problem; softening them buys little and costs a knob).
    """
    import torch.nn.functional as F

    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(student_logits, teacher_logits.sigmoid())
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


def _headline_key(task: str) -> str:
    """The early-stopping metric: accuracy (multiclass) or mean AUROC (multilabel)."""
    return "mean_auroc" if task == "multilabel" else "accuracy"


def _headline_value(m: dict[str, Any], key: str) -> float:
    value = metric_value(m[key])
    return -math.inf if value is None else float(value)  # undefined (e.g. one-class val) never wins


@dataclass
class _Fit:
    """What ``_fit`` produced; the model already holds ``best_state``."""

    history: list[dict[str, float]]
    best_epoch: int
    best_metric: float
    start_metric: float  # -inf when the starting weights were not a candidate
    best_state: dict[str, Any]
    key: str


def recalibrate_batchnorm(model: Any, x: np.ndarray, *, images: int = 1024,
                          batch_size: int = 64) -> int:
    """Re-estimate every BatchNorm's running mean/variance on ``x`` (clean, un-augmented) with
    the rest of the model in eval mode (no input noise, no dropout); returns images used.

    Training-time input noise (PruDensNet's ``GaussianNoise``) and augmentation leave running
    statistics that do not match clean inputs: measured on the real MRI held-out split,
    re-estimating them lifts the prudensnet 64² reference checkpoint from 52.3 % to 75.3 %.
    Pruning shifts every downstream layer's input statistics too.
    """
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or len(x) == 0 or images <= 0:  # nothing to estimate from: keep the statistics
        return 0
    was_training = model.training
    saved = [(m.momentum, m.training) for m in bns]
    n = min(images, len(x))
    # a seeded spread over the whole array: arrays loaded from class folders are sorted by class
    pick = np.sort(np.random.default_rng(0).permutation(len(x))[:n])
    model.eval()
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over every batch
            m.train()
        with torch.no_grad():
            for i in range(0, n, batch_size):
                model(torch.from_numpy(np.asarray(x[pick[i:i + batch_size]], dtype=np.float32)))
    finally:
        for m, (momentum, training) in zip(bns, saved, strict=True):
            m.momentum = momentum
            m.train(training)
        model.train(was_training)
    return n


def _fit(model: Any, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
         y_val: np.ndarray, *, task: str, class_names: tuple[str, ...], loop: _Loop,
         description: str, teacher: Any | None = None, kd_alpha: float = 0.0,
         temperature: float = 1.0, start_is_candidate: bool = False) -> _Fit:
    """The epoch loop shared by ``train`` and ``recover``; returns with the best weights loaded.

    AdamW with linear warm-up then cosine decay per step, augmentation (+ MixUp/CutMix) on each
    batch, grad clipping, validation after each epoch, early stopping after ``loop.patience``
    epochs without improvement. With a ``teacher`` the loss is ``(1 − kd_alpha)·label +
    kd_alpha·distillation``, the teacher seeing exactly the batch the student sees (after
    augmentation) under ``no_grad``. ``start_is_candidate`` scores the weights before any step
    first, as epoch 0: fine-tuning that only makes things worse then changes nothing.

    The model must already be in its training memory format (channels-last) and the global torch
    RNG seeded by the caller (dropout draws from it); batch order and augmentation draw from a
    generator seeded here with ``loop.seed``.
    """
    import torch

    n_classes = len(class_names)
    loss_fn, to_soft = _label_loss(task, y_train, n_classes, label_smoothing=loop.label_smoothing,
                                   class_weights=loop.class_weights)
    key = _headline_key(task)
    gen = torch.Generator().manual_seed(loop.seed)
    channels_last = torch.channels_last
    opt = torch.optim.AdamW(model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
    steps_per_epoch = _steps_per_epoch(len(x_train), loop.batch_size)
    total_steps = steps_per_epoch * loop.epochs
    x_train_t = torch.from_numpy(x_train)
    y_train_t = torch.from_numpy(y_train)
    distil = teacher is not None and kd_alpha > 0

    history: list[dict[str, float]] = []
    best = (-math.inf, 0)
    start_metric = -math.inf
    if start_is_candidate:
        if loop.recalibrate_bn:
            recalibrate_batchnorm(model, x_train, images=loop.recalibrate_bn)
        start_metric = _headline_value(score(y_val, predict_module(model, x_val), task=task,
                                             class_names=class_names, ci=False), key)
        best = (start_metric, 0)
        status(f"  epoch   0/{loop.epochs}  (start)  val {key} {start_metric:.4f}")
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stale = 0
    step = 0
    with progress_bar(description, total_steps) as bar:
        for epoch in range(1, loop.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            order = torch.randperm(len(x_train_t), generator=gen)
            running = 0.0
            for b in range(steps_per_epoch):
                idx = order[b * loop.batch_size:(b + 1) * loop.batch_size]
                xb = x_train_t[idx].float().contiguous(memory_format=channels_last)
                yb = to_soft(y_train_t[idx])
                if loop.augment:
                    xb = augment_batch(xb, gen, intensity=task != "multilabel")
                xb, yb = mix_batch(xb, yb, gen, mixup=loop.mixup, cutmix=loop.cutmix)
                for group in opt.param_groups:
                    group["lr"] = _lr_at(step, total_steps, loop)
                logits = model(xb)
                loss = loss_fn(logits, yb)
                if distil:
                    with torch.no_grad():
                        teacher_logits = teacher(xb)
                    loss = (1 - kd_alpha) * loss + kd_alpha * _distillation_loss(
                        logits, teacher_logits, task=task, temperature=temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if loop.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip)
                opt.step()
                running += float(loss.detach())
                step += 1
                bar.advance()
            if loop.recalibrate_bn:
                recalibrate_batchnorm(model, x_train, images=loop.recalibrate_bn)
            logits = predict_module(model, x_val)
            with torch.no_grad():
                val_loss = float(loss_fn(torch.from_numpy(logits), to_soft(torch.from_numpy(y_val))))
            value = _headline_value(score(y_val, logits, task=task, class_names=class_names,
                                          ci=False), key)
            row = {"epoch": epoch, "train_loss": running / steps_per_epoch, "val_loss": val_loss,
                   f"val_{key}": value, "lr": _lr_at(step - 1, total_steps, loop),
                   "seconds": time.perf_counter() - t0}
            history.append(row)
            improved = value > best[0]
            if improved:
                best = (value, epoch)
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                stale = 0
            else:
                stale += 1
            bar.update(note=f"epoch {epoch}: val {key} {value:.3f}")
            status(f"  epoch {epoch:3d}/{loop.epochs}  loss {row['train_loss']:.4f}  "
                   f"val loss {val_loss:.4f}  val {key} {value:.4f}{'  *' if improved else ''}")
            if stale >= loop.patience:
                status(f"  early stop: no improvement for {loop.patience} epochs")
                break

    model.load_state_dict(best_state)
    return _Fit(history, best[1], best[0], start_metric, best_state, key)


def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` and write the best checkpoint to ``cfg.out``."""
    import torch

    cfg.validate()
    refuse_inside_data(cfg.out, cfg.data)
    start = time.perf_counter()
    arch = model_config(cfg.model)
    size = cfg.input_size or arch.input_size
    spec = arch.default_spec(size)
    multilabel = arch.task == "multilabel"

    dataset = scan(cfg.data, task=arch.task, on_error=cfg.on_error)
    status(f"Data: {len(dataset)} images in {len(dataset.classes)} "
           f"{'labels' if multilabel else 'classes'} ({', '.join(dataset.classes)}) from {dataset.root}")
    with progress_bar("Hashing images (near-duplicate check)", len(dataset)) as bar:
        split: Split = split_dataset(dataset, val_fraction=cfg.val_fraction, seed=cfg.seed,
                                     dedup=cfg.dedup, on_error=cfg.on_error, progress=bar.set)
    train_set = _cap_per_class(split.train, cfg.max_per_class, cfg.seed)
    val_set = split.val
    status(f"Split (seed {cfg.seed}): {len(train_set)} train / {len(val_set)} validation; "
           f"{split.duplicates_removed} near-duplicates removed, "
           f"{split.similar_groups} groups of similar slices kept on one side")

    torch.manual_seed(cfg.seed)
    x_train, y_train = load_arrays(train_set, spec, dtype=np.float16, on_error=cfg.on_error,
                                   description="Loading training images")
    x_val, y_val = load_arrays(val_set, spec, on_error=cfg.on_error,
                               description="Loading validation images")
    n_classes = len(dataset.classes)
    # channels-last runs the depthwise/pointwise convolutions ~25 % faster on CPU (oneDNN):
    # 0.197 → 0.145 s per step, dsconv_cbam_gap, batch 32 at 96 px, same run.
    model = create_model(cfg.model, num_classes=n_classes, input_size=size)
    model = model.to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())

    status(f"Training {cfg.model} ({n_params:,} parameters) at {size}px for up to "
           f"{cfg.epochs} epochs, batch {cfg.batch_size}, "
           f"{_steps_per_epoch(len(x_train), cfg.batch_size)} steps/epoch")
    fit = _fit(model, x_train, y_train, x_val, y_val, task=arch.task, class_names=dataset.classes,
               loop=_loop_of(cfg), description=f"Training {cfg.model}")

    final = score(y_val, predict_module(model, x_val), task=arch.task, class_names=dataset.classes,
                  seed=cfg.seed)
    seconds = time.perf_counter() - start
    split_info = split.summary() | {
        "train_used": len(train_set),
        "val_files": [val_set.relative(s) for s in val_set.samples],
        "data_root": str(Path(cfg.data).resolve()),
    }
    metadata = {
        "architecture": cfg.model,
        "task": arch.task,
        "class_names": list(dataset.classes),
        "num_classes": n_classes,
        "input_size": size,
        "preprocess": spec.to_dict(),
        "parameters": n_params,
        "train_config": asdict(cfg),
        "best_epoch": fit.best_epoch,
        "history": fit.history,
        "metrics": final,
        "split": split_info,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "edgekit_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "data_note": _data_note(dataset.root),
    }
    ckpt = save_checkpoint(cfg.out, fit.best_state, metadata)
    return TrainResult(ckpt, final, fit.history, fit.best_epoch, split_info, seconds,
                       dataset.classes, metadata)


# --------------------------------------------------------------------------- recovery
@dataclass
class RecoveryConfig:
    """Fine-tuning of a compressed model with knowledge distillation (``recover``).

    Defaults are for recovering a pruned model: a lower peak LR than training from scratch
    (the weights are already close), few epochs, short patience, no label smoothing (the
    teacher's soft targets already regularise).
    """

    epochs: int = 8  # 0: only measure the starting point, change nothing
    lr: float = 5e-4
    min_lr: float = 1e-6
    weight_decay: float = 1e-4
    warmup: float = 0.05  # fraction of all steps spent warming up linearly
    batch_size: int = 32
    patience: int = 3  # epochs without validation improvement before stopping
    kd_alpha: float = 0.7  # weight of the KD term; (1 - kd_alpha) weights the label loss
    temperature: float = 4.0  # KD softmax temperature (multiclass); multilabel uses sigmoid KD
    label_smoothing: float = 0.0
    augment: bool = True
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    seed: int = 0
    recalibrate_bn: int = 1024  # clean train images to re-estimate BN statistics on before
    # every validation (and the start); 0 turns it off. See recalibrate_batchnorm.

    def validate(self) -> None:
        def finite(v: Any) -> bool:
            return isinstance(v, numbers.Real) and math.isfinite(v)

        def whole(v: Any) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        checks = [
            (whole(self.epochs) and self.epochs >= 0,
             f"recovery epochs must be an integer >= 0, got {self.epochs!r}"),
            (finite(self.lr) and self.lr > 0, f"recovery lr must be > 0, got {self.lr!r}"),
            (finite(self.min_lr) and 0 <= self.min_lr <= self.lr,
             f"recovery min_lr must be in [0, lr={self.lr!r}], got {self.min_lr!r}"),
            (finite(self.weight_decay) and self.weight_decay >= 0,
             f"recovery weight_decay must be >= 0, got {self.weight_decay!r}"),
            (finite(self.warmup) and 0 <= self.warmup < 1,
             f"recovery warmup must be in [0, 1), got {self.warmup!r}"),
            (whole(self.batch_size) and self.batch_size >= 2,
             f"recovery batch_size must be an integer >= 2, got {self.batch_size!r}"),
            (whole(self.patience) and self.patience >= 1,
             f"recovery patience must be an integer >= 1, got {self.patience!r}"),
            (finite(self.kd_alpha) and 0 <= self.kd_alpha <= 1,
             f"recovery kd_alpha must be in [0, 1], got {self.kd_alpha!r}"),
            (finite(self.temperature) and self.temperature > 0,
             f"recovery temperature must be > 0, got {self.temperature!r}"),
            (finite(self.label_smoothing) and 0 <= self.label_smoothing < 1,
             f"recovery label_smoothing must be in [0, 1), got {self.label_smoothing!r}"),
            (finite(self.grad_clip) and self.grad_clip >= 0,
             f"recovery grad_clip must be >= 0 (0 turns it off), got {self.grad_clip!r}"),
            (whole(self.seed) and self.seed >= 0,
             f"recovery seed must be an integer >= 0, got {self.seed!r}"),
            (whole(self.recalibrate_bn) and self.recalibrate_bn >= 0,
             f"recovery recalibrate_bn must be an integer >= 0 (0 turns it off), "
             f"got {self.recalibrate_bn!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


@dataclass
class RecoveryResult:
    """What ``recover`` did. ``history`` rows have ``train``'s keys; there ``train_loss`` is the
    combined (label + distillation) loss and ``val_loss`` the label loss alone."""

    history: list[dict[str, float]]  # one row per epoch, like train()'s history
    best_epoch: int  # 0 when no epoch beat the starting point
    start_metric: float  # validation metric of the student before recovery
    best_metric: float  # validation metric of the weights that are kept
    metric: str  # "accuracy" or "mean_auroc"
    seconds: float


def _check_recovery_inputs(student: Any, teacher: Any, x_train: np.ndarray, y_train: np.ndarray,
                           x_val: np.ndarray, y_val: np.ndarray, task: str,
                           class_names: tuple[str, ...]) -> None:
    """Fail before any step, with the argument named, rather than deep inside the loop."""
    if task not in ("multiclass", "multilabel"):
        raise ConfigError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
    if teacher is None:
        raise ConfigError("recover needs a teacher model (the uncompressed original); "
                          "use kd_alpha=0 to fine-tune on the labels alone")
    if teacher is student or ({id(p) for p in teacher.parameters()}
                              & {id(p) for p in student.parameters()}):
        raise ConfigError("the teacher shares parameters with the student; pass an unmodified "
                          "copy of the original model as the teacher")
    if not any(p.requires_grad for p in student.parameters()):
        raise ConfigError("the student has no trainable parameters (requires_grad is off "
                          "everywhere, as on a loaded model); turn it on before recovering")
    for name, x, y in (("training", x_train, y_train), ("validation", x_val, y_val)):
        if x.ndim != 4:
            raise DataError(f"{name} images must be an (N, C, H, W) array, got shape {x.shape}")
        if len(x) != len(y):
            raise DataError(f"{len(x)} {name} images but {len(y)} {name} labels")
        want = (len(x), len(class_names)) if task == "multilabel" else (len(x),)
        if y.shape != want:
            raise DataError(f"{name} labels must have shape {want} for a {task} task with "
                            f"{len(class_names)} classes, got {y.shape}")
        if task == "multiclass" and len(y) and (y.min() < 0 or y.max() >= len(class_names)):
            raise DataError(f"{name} labels must be class indices in [0, {len(class_names)}), "
                            f"got {y.min()}..{y.max()}")
    if len(x_train) < 2:
        raise DataError(f"recovery needs at least 2 training images, got {len(x_train)}")
    if len(x_val) < 1:
        raise DataError("recovery needs at least 1 validation image")


def recover(student: Any, teacher: Any, x_train: np.ndarray, y_train: np.ndarray,
            x_val: np.ndarray, y_val: np.ndarray, *, task: str, class_names: tuple[str, ...],
            cfg: RecoveryConfig | None = None, description: str = "Recovering") -> RecoveryResult:
    """Fine-tune ``student`` (an nn.Module, modified in place, left in eval mode with the best
    weights loaded) on ``(x_train, y_train)`` with loss = (1 − kd_alpha)·label loss +
    kd_alpha·distillation loss against ``teacher``'s logits (teacher frozen, eval mode, never
    updated). Early-stops on ``(x_val, y_val)``. The epoch-0 (unrecovered) student counts as a
    candidate: if no epoch improves on it, its weights are kept (``best_epoch`` 0).

    ``x`` arrays are float32/float16 NCHW, already preprocessed (as ``load_arrays`` returns);
    ``y`` is class indices (multiclass) or a 0/1 matrix (``task == "multilabel"``). The label
    loss is ``train``'s (class weights from ``y_train``); see ``_distillation_loss`` for the KD
    term. The teacher is only run, never trained (its mode is restored afterwards); the global
    torch RNG is seeded with ``cfg.seed`` inside a fork, so the caller's RNG is untouched and two
    calls with the same inputs give the same weights.
    """
    import torch

    cfg = RecoveryConfig() if cfg is None else cfg
    cfg.validate()
    multilabel = task == "multilabel"
    y_train = np.asarray(y_train, dtype=np.float32 if multilabel else np.int64)
    y_val = np.asarray(y_val, dtype=np.float32 if multilabel else np.int64)
    _check_recovery_inputs(student, teacher, x_train, y_train, x_val, y_val, task, class_names)
    start = time.perf_counter()
    teacher_was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            probe = torch.from_numpy(np.ascontiguousarray(x_val[:2], dtype=np.float32))
            t_out = teacher(probe).shape[1:]
        s_out = predict_module(student, x_val[:2]).shape[1:]
        want = (len(class_names),)
        if tuple(s_out) != want or tuple(t_out) != want:
            raise ConfigError(f"student and teacher must both output {want[0]} logits "
                              f"({', '.join(class_names)}); got {tuple(s_out)} and {tuple(t_out)}")
        n_params = sum(p.numel() for p in student.parameters())
        steps = _steps_per_epoch(len(x_train), cfg.batch_size)
        status(f"{description}: {n_params:,} parameters, up to {cfg.epochs} epochs, batch "
               f"{cfg.batch_size}, {steps} steps/epoch, distillation weight {cfg.kd_alpha:g}"
               + ("" if multilabel else f" at T={cfg.temperature:g}"))
        # channels-last for speed as in train(); put back below so the caller's module (and
        # whatever exports it next) sees the layout it handed in
        student.to(memory_format=torch.channels_last)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            fit = _fit(student, x_train, y_train, x_val, y_val, task=task,
                       class_names=tuple(class_names), loop=_loop_of(cfg), description=description,
                       teacher=teacher, kd_alpha=cfg.kd_alpha, temperature=cfg.temperature,
                       start_is_candidate=True)
    finally:
        student.to(memory_format=torch.contiguous_format)
        teacher.train(teacher_was_training)
    student.eval()
    status(f"  kept {'the starting weights' if fit.best_epoch == 0 else f'epoch {fit.best_epoch}'}: "
           f"val {fit.key} {fit.start_metric:.4f} → {fit.best_metric:.4f}")
    return RecoveryResult(fit.history, fit.best_epoch, fit.start_metric, fit.best_metric, fit.key,
                          time.perf_counter() - start)


def _data_note(root: Path) -> str:
    readme = root / "README.txt"
    if readme.is_file() and "synthetic" in readme.read_text(errors="ignore").lower():
        return "synthetic phantoms (not clinical data)"
    return "user data"
