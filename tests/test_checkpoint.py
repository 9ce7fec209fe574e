"""Checkpoints load with weights_only=True; pickles that need code execution are refused."""

from __future__ import annotations

import pickle

import pytest
import torch

from edgekit.checkpoint import load_checkpoint, save_checkpoint
from edgekit.errors import ConfigError, DataError, UnsafeSourceError
from edgekit.sources import load_model
from edgekit.zoo import create_model


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (self.marker,))


def test_round_trip_with_metadata(tmp_path):
    model = create_model("dsconv_cbam_gap", num_classes=3, input_size=64)
    meta = {"architecture": "dsconv_cbam_gap", "class_names": ["a", "b", "c"],
            "preprocess": {"version": 1, "input_size": [64, 64], "color": "rgb",
                           "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1],
                           "layout": "NCHW", "ct_windows": None}}
    path = save_checkpoint(tmp_path / "m.pt", model.state_dict(), meta)
    state, back = load_checkpoint(path)
    assert back == meta and set(state) == set(model.state_dict())
    loaded = load_model(path)
    assert loaded.class_names == ("a", "b", "c") and loaded.spec.input_size == (64, 64)
    assert loaded.pretrained and not loaded.module.training
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temporary file behind"


def test_plain_state_dict_needs_an_architecture(tmp_path):
    model = create_model("dsconv_cbam_gap", input_size=64)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ConfigError, match="ARCH:"):
        load_model(tmp_path / "w.pt")
    loaded = load_model(f"dsconv_cbam_gap:{tmp_path / 'w.pt'}")
    assert loaded.num_classes == 4
    with pytest.raises(DataError, match="weights do not fit prudensnet"):
        load_model(f"prudensnet:{tmp_path / 'w.pt'}")


def test_pickled_module_is_refused(tmp_path):
    torch.save(create_model("dsconv_cbam_gap", input_size=64), tmp_path / "full.pt")
    with pytest.raises(UnsafeSourceError, match="refusing to load.*state_dict"):
        load_checkpoint(tmp_path / "full.pt")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"state_dict": _Evil(str(marker))}, fh)
    with pytest.raises(UnsafeSourceError):
        load_model(f"dsconv_cbam_gap:{tmp_path / 'evil.pt'}")
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_text("hello")
    with pytest.raises((DataError, UnsafeSourceError), match="x.pt"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(DataError, match="Checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
