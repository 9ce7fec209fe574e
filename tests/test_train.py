"""Training on phantoms: it learns, it is reproducible, the checkpoint carries what it needs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.checkpoint import load_checkpoint
from edgekit.errors import ConfigError
from edgekit.evaluate import evaluate_model, held_out_dataset
from edgekit.sources import load_model
from edgekit.train import TrainConfig, augment_batch, mix_batch, train


def _cfg(data, out, **kw):
    base = dict(model="dsconv_cbam_gap", data=str(data), out=str(out), epochs=3,
                input_size=64, batch_size=16, lr=3e-3, seed=0)
    return TrainConfig(**(base | kw))


def test_train_writes_a_complete_checkpoint_and_is_reproducible(mri_phantoms, tmp_path):
    a = train(_cfg(mri_phantoms, tmp_path / "a.pt"))
    b = train(_cfg(mri_phantoms, tmp_path / "b.pt"))
    sa, meta = load_checkpoint(a.checkpoint)
    sb, _ = load_checkpoint(b.checkpoint)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=f"{k} differs between runs")
    assert meta["architecture"] == "dsconv_cbam_gap"
    assert meta["class_names"] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert meta["preprocess"]["input_size"] == [64, 64]
    assert len(meta["history"]) >= 1 and meta["split"]["val"] == len(meta["split"]["val_files"])
    acc = a.metrics["accuracy"]
    assert 0.0 <= acc["value"] <= 1.0 and acc["ci95"][0] <= acc["value"] <= acc["ci95"][1]
    # the checkpoint reloads and reproduces the recorded held-out metrics exactly
    loaded = load_model(a.checkpoint)
    ev = evaluate_model(loaded, held_out_dataset(loaded))
    assert ev.metrics["accuracy"]["value"] == pytest.approx(acc["value"])


def test_training_learns_the_phantoms(tmp_path):
    from edgekit.data.phantoms import generate_mri_dataset

    data = generate_mri_dataset(tmp_path / "data", n_per_class=64, size=64, seed=5)
    result = train(_cfg(data, tmp_path / "m.pt", epochs=25, batch_size=16, input_size=64))
    assert result.metrics["accuracy"]["value"] >= 0.6, result.history  # chance is 0.25


def test_multilabel_training_on_ct(ct_phantoms, tmp_path):
    result = train(TrainConfig(model="ich_mrf", data=str(ct_phantoms), out=str(tmp_path / "c.pt"),
                               epochs=1, input_size=64, batch_size=8, seed=0))
    assert "mean_auroc" in result.metrics
    _, meta = load_checkpoint(result.checkpoint)
    assert meta["task"] == "multilabel" and meta["class_names"][0] == "any"
    assert meta["preprocess"]["ct_windows"][0]["name"] == "brain"


def test_bad_settings_are_config_errors(mri_phantoms, tmp_path):
    with pytest.raises(ConfigError, match="epochs"):
        train(_cfg(mri_phantoms, tmp_path / "m.pt", epochs=0))
    with pytest.raises(ConfigError, match="Unknown model 'dsconv'"):
        train(_cfg(mri_phantoms, tmp_path / "m.pt", model="dsconv"))


def test_augment_and_mix_keep_shapes_and_targets():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 32)
    y = torch.nn.functional.one_hot(torch.arange(8) % 4, 4).float()
    xa = augment_batch(x, gen, intensity=True)
    assert xa.shape == x.shape and not torch.equal(xa, x)
    for kw in ({"mixup": 0.4, "cutmix": 0.0}, {"mixup": 0.0, "cutmix": 1.0}):
        xm, ym = mix_batch(x, y, gen, **kw)
        assert xm.shape == x.shape
        np.testing.assert_allclose(ym.sum(1).numpy(), 1.0, rtol=1e-6)
