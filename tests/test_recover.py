"""Knowledge-distillation recovery (``edgekit.train.recover``) on tiny synthetic data.

The task is learnable in a few epochs on CPU: the class of an image is which quadrant is bright.
A teacher is trained once per module through ``recover`` itself (``kd_alpha=0``: labels only,
the frozen starting copy as the ignored teacher), so the same loop is exercised both ways.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edgekit.errors import ConfigError, DataError
from edgekit.sources.torch import predict_module as predict
from edgekit.train import RecoveryConfig, RecoveryResult, recover
from edgekit.zoo import create_model

SIZE = 32
CLASSES = ("top_left", "top_right", "bottom_left", "bottom_right")

# one torch thread: on a busy 2-core machine two threads spin against each other (~8x slower)
pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _quadrants(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, 32, 32) float32 noise with one bright quadrant; the label is that quadrant."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASSES)
    rng.shuffle(y)
    x = rng.normal(0.0, 0.3, size=(n, 3, SIZE, SIZE)).astype(np.float32)
    h = SIZE // 2
    for i, k in enumerate(y):
        r, c = divmod(int(k), 2)
        x[i, :, r * h:(r + 1) * h, c * h:(c + 1) * h] += 1.5
    return x, y.astype(np.int64)


def _accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(model, x).argmax(1) == y).mean())


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} changed")


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    x_train, y_train = _quadrants(160, seed=0)
    x_val, y_val = _quadrants(80, seed=1)
    # training arrays as load_arrays gives them to train(): float16
    return {"x_train": x_train.astype(np.float16), "y_train": y_train,
            "x_val": x_val, "y_val": y_val}


@pytest.fixture(scope="module")
def teacher(data, single_torch_thread) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("dsconv_cbam_gap", num_classes=len(CLASSES), input_size=SIZE)
    res = recover(model, copy.deepcopy(model), **data, task="multiclass", class_names=CLASSES,
                  cfg=RecoveryConfig(epochs=8, lr=3e-3, kd_alpha=0.0, batch_size=16,
                                     patience=8, augment=False))
    assert res.metric == "accuracy" and res.best_epoch >= 1, res
    assert res.best_metric == 1.0, res.history  # the task is easy: the fixtures below rely on it
    return model


def test_kd_recovery_restores_a_damaged_student_and_leaves_the_teacher_alone(teacher, data):
    teacher_state = _state(teacher)
    teacher_acc = _accuracy(teacher, data["x_val"], data["y_val"])
    student = copy.deepcopy(teacher)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # "pruning damage": relative noise on every weight
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.6 * p.abs().mean())
    labels_only = copy.deepcopy(student)
    damaged = _accuracy(student, data["x_val"], data["y_val"])
    assert damaged <= teacher_acc - 0.2, f"noise too weak to test recovery: {damaged}"

    rng_before = torch.get_rng_state()
    res = recover(student, teacher, **data, task="multiclass", class_names=CLASSES,
                  cfg=RecoveryConfig(epochs=6, lr=2e-3, batch_size=16, patience=6))

    assert isinstance(res, RecoveryResult) and res.metric == "accuracy"
    assert res.start_metric == pytest.approx(damaged)
    assert res.best_epoch >= 1 and res.best_metric >= teacher_acc - 0.05, res.history
    assert len(res.history) >= res.best_epoch and res.seconds > 0
    assert set(res.history[0]) == {"epoch", "train_loss", "val_loss", "val_accuracy", "lr",
                                   "seconds"}
    # the student holds the best epoch's weights, in eval mode, in the layout it came in
    assert not student.training
    assert _accuracy(student, data["x_val"], data["y_val"]) == pytest.approx(res.best_metric)
    assert all(p.is_contiguous() for p in student.parameters())
    # the teacher: bit-identical parameters and buffers, still in eval mode
    _assert_same_state(teacher_state, _state(teacher))
    assert not teacher.training
    # the caller's global RNG is neither consumed nor reseeded
    assert torch.equal(rng_before, torch.get_rng_state())

    # the distillation term is what does it: the same run on the labels alone falls well short
    # (measured: 0.675 against 1.0)
    plain = recover(labels_only, teacher, **data, task="multiclass", class_names=CLASSES,
                    cfg=RecoveryConfig(epochs=6, lr=2e-3, batch_size=16, patience=6, kd_alpha=0.0))
    assert plain.best_metric <= res.best_metric - 0.1, (plain.history, res.history)


def test_a_student_that_cannot_improve_keeps_its_starting_weights(teacher, data):
    student = copy.deepcopy(teacher)  # already at 100 % validation accuracy
    start = _state(student)
    res = recover(student, teacher, **data, task="multiclass", class_names=CLASSES,
                  cfg=RecoveryConfig(epochs=2, lr=5e-2, batch_size=16, patience=1))
    assert res.best_epoch == 0 and res.start_metric == res.best_metric == 1.0
    assert len(res.history) == 1  # patience 1: the first epoch that does not beat 1.0 stops it
    _assert_same_state(start, _state(student))
    assert not student.training


def test_recovery_is_reproducible(teacher, data):
    def run() -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
        student = copy.deepcopy(teacher)
        with torch.no_grad():
            for p in student.parameters():
                p.mul_(0.8)
        res = recover(student, teacher, **data, task="multiclass", class_names=CLASSES,
                      cfg=RecoveryConfig(epochs=1, batch_size=32, seed=7))
        return _state(student), [{k: v for k, v in r.items() if k != "seconds"}
                                 for r in res.history]

    (a, ha), (b, hb) = run(), run()
    _assert_same_state(a, b)
    assert ha == hb


@pytest.mark.parametrize(("field", "value", "match"), [
    ("epochs", -1, "epochs"),
    ("epochs", 2.5, "epochs"),
    ("lr", 0.0, "lr"),
    ("lr", float("nan"), "lr"),
    ("min_lr", 1.0, "min_lr"),
    ("weight_decay", -1e-4, "weight_decay"),
    ("warmup", 1.0, "warmup"),
    ("batch_size", 1, "batch_size"),
    ("patience", 0, "patience"),
    ("kd_alpha", 1.5, "kd_alpha"),
    ("kd_alpha", -0.1, "kd_alpha"),
    ("temperature", 0.0, "temperature"),
    ("label_smoothing", 1.0, "label_smoothing"),
    ("grad_clip", -1.0, "grad_clip"),
    ("seed", -3, "seed"),
])
def test_recovery_config_rejects_bad_values(field, value, match):
    RecoveryConfig().validate()
    with pytest.raises(ConfigError, match=match):
        RecoveryConfig(**{field: value}).validate()


def test_bad_calls_fail_before_training(teacher, data):
    student = copy.deepcopy(teacher)
    kw = dict(task="multiclass", class_names=CLASSES, cfg=RecoveryConfig(epochs=1))
    with pytest.raises(ConfigError, match="teacher"):
        recover(student, None, **data, **kw)
    with pytest.raises(ConfigError, match="shares parameters"):
        recover(student, student, **data, **kw)
    frozen = copy.deepcopy(student).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        recover(frozen, teacher, **data, **kw)
    three = data | {"y_train": data["y_train"] % 3, "y_val": data["y_val"] % 3}
    with pytest.raises(ConfigError, match="3 logits"):
        recover(student, teacher, **three, task="multiclass", class_names=CLASSES[:3])
    with pytest.raises(ConfigError, match="task"):
        recover(student, teacher, **data, task="regression", class_names=CLASSES)
    with pytest.raises(DataError, match="labels"):
        recover(student, teacher, **(data | {"y_train": data["y_train"][:-1]}), **kw)
    with pytest.raises(DataError, match=r"\[0, 4\)"):
        recover(student, teacher, **(data | {"y_val": data["y_val"] + 1}), **kw)


def test_multilabel_recovery(data):
    """ich_mrf-style: six sigmoid labels, label 0 ("any") set when any other label is."""
    rng = np.random.default_rng(5)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(0.0, 0.3, size=(n, 3, SIZE, SIZE)).astype(np.float32)
        y = np.zeros((n, 6), dtype=np.float32)
        y[:, 1:5] = rng.random((n, 4)) < 0.35
        h = SIZE // 2
        for i in range(n):  # label j in 1..4 brightens quadrant j-1
            for j in np.flatnonzero(y[i, 1:5]):
                r, c = divmod(int(j), 2)
                x[i, :, r * h:(r + 1) * h, c * h:(c + 1) * h] += 1.0
        y[:, 5] = rng.random(n) < 0.3  # a label with no signal: AUROC ~0.5, still defined
        y[:, 0] = y[:, 1:].max(1)
        return x, y

    x_train, y_train = make(96)
    x_val, y_val = make(48)
    torch.manual_seed(1)
    teacher = create_model("ich_mrf", num_classes=6, input_size=SIZE)
    student = copy.deepcopy(teacher)
    teacher_state = _state(teacher)
    names = ("any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
    res = recover(student, teacher, x_train, y_train, x_val, y_val, task="multilabel",
                  class_names=names, cfg=RecoveryConfig(epochs=2, batch_size=16, lr=2e-3))
    assert res.metric == "mean_auroc"
    assert 0.0 <= res.best_metric <= 1.0 and res.best_metric >= res.start_metric
    assert "val_mean_auroc" in res.history[0] and 1 <= len(res.history) <= 2
    assert not student.training
    _assert_same_state(teacher_state, _state(teacher))


def test_recalibrate_batchnorm_uses_clean_inputs_and_restores_modes() -> None:
    """Running statistics are re-estimated on the given images with input noise off (the rest
    of the model in eval mode); momentum and train/eval modes come back as they were."""
    import torch

    from edgekit.train import recalibrate_batchnorm
    from edgekit.zoo.blocks import GaussianNoise

    torch.manual_seed(0)
    model = torch.nn.Sequential(GaussianNoise(5.0), torch.nn.Conv2d(3, 4, 1, bias=False),
                                torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.9))
    bn = model[2]
    bn.running_mean.fill_(100.0)
    bn.running_var.fill_(1e-3)
    model.train()
    x = np.random.default_rng(0).normal(2.0, 1.0, (50, 3, 8, 8)).astype(np.float32)
    assert recalibrate_batchnorm(model, x, images=40, batch_size=16) == 40
    with torch.no_grad():
        feats = model[1](torch.from_numpy(x))  # conv outputs on clean inputs
    expected = feats.mean(dim=(0, 2, 3))
    # 40 of the 50 images (a seeded spread): close to the all-image mean, nowhere near 100
    assert torch.allclose(bn.running_mean, expected, atol=0.3)
    assert float(bn.running_var.min()) > 0.05
    assert bn.momentum == 0.1 and model.training and bn.training
    assert recalibrate_batchnorm(torch.nn.Linear(3, 2), x) == 0  # no BatchNorm: nothing to do
    kept = bn.running_mean.clone()
    assert recalibrate_batchnorm(model, x, images=0) == 0  # 0 = off: statistics untouched
    assert torch.equal(bn.running_mean, kept)
