"""On the real Kaggle Brain Tumor MRI Training folder (skipped with a reason when absent)."""

from __future__ import annotations

import pytest

from edgekit.data.folder import scan_folder, split_dataset
from edgekit.train import TrainConfig, train

pytestmark = pytest.mark.realdata


def test_real_data_dedup_and_split(real_mri):
    ds = scan_folder(real_mri)
    assert ds.classes == ("glioma", "meningioma", "notumor", "pituitary")
    assert len(ds) == 5708
    split = split_dataset(ds, seed=0)
    # the dataset is known to hold many near-copies, notably in notumor
    assert split.duplicates_removed > 500
    assert split.val.counts()["notumor"] < 0.2 * 1591
    train_paths = {s.path for s in split.train.samples}
    assert not train_paths & {s.path for s in split.val.samples}


def test_real_data_short_training_beats_chance(real_mri, tmp_path):
    """6 epochs at 32 px on 200 images per class, scored on the whole de-duplicated held-out
    split (965 images). Measured (1 torch thread, ~18 s): accuracy 0.706, CI95 [0.677, 0.732]
    (seeds 1 and 2: 0.653 and 0.625) against the bar of 0.5; 64 px and 8 epochs gave 0.707 in
    ~41 s."""
    res = train(TrainConfig(model="dsconv_cbam_gap", data=str(real_mri), out=str(tmp_path / "m.pt"),
                            epochs=6, input_size=32, batch_size=32, lr=3e-3, max_per_class=200))
    acc = res.metrics["accuracy"]
    assert acc["value"] > 0.5, res.history  # chance is 0.25
    assert acc["ci95"][0] > 0.25, acc  # and the interval excludes chance
