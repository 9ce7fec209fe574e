"""The one preprocessing spec: JSON round trip, strict keys, raster and CT paths, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgekit.data.dicom import BONE_WINDOW, BRAIN_WINDOW, stack_windows
from edgekit.data.preprocess import PreprocessSpec
from edgekit.errors import ConfigError, DataError


def test_json_round_trip_raster_and_ct():
    for spec in (PreprocessSpec(input_size=(64, 80), mean=(0.5,) * 3, std=(0.25,) * 3),
                 PreprocessSpec(input_size=96, color="gray", mean=(0.1,), std=(0.2,),
                                layout="NHWC"),
                 PreprocessSpec.for_ct(64)):
        assert PreprocessSpec.from_json(spec.to_json()) == spec


def test_unknown_key_and_bad_values_are_named():
    data = PreprocessSpec(input_size=64).to_dict() | {"mena": [0, 0, 0]}
    with pytest.raises(ConfigError, match="mena"):
        PreprocessSpec.from_dict(data)
    with pytest.raises(ConfigError, match="layout"):
        PreprocessSpec(layout="CHW")
    with pytest.raises(ConfigError, match="mean/std need 3"):
        PreprocessSpec(mean=(0.5,))
    with pytest.raises(ConfigError, match="not valid JSON"):
        PreprocessSpec.from_json("{")


def test_raster_scaling_normalisation_and_layout(tmp_path):
    arr = np.zeros((40, 50, 3), dtype=np.uint8)
    arr[..., 0] = 255
    path = tmp_path / "red.png"
    Image.fromarray(arr).save(path)
    spec = PreprocessSpec(input_size=(20, 25), mean=(0.5, 0.0, 0.0), std=(0.5, 1.0, 1.0))
    x = spec.load(path)
    assert x.shape == (3, 20, 25) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], 1.0)  # (1 - 0.5) / 0.5
    np.testing.assert_allclose(x[1:], 0.0)
    nhwc = PreprocessSpec(input_size=(20, 25), layout="NHWC").load(path)
    assert nhwc.shape == (20, 25, 3)
    assert spec.input_shape(4) == (4, 3, 20, 25)


def test_greyscale_file_becomes_three_channels(tmp_path):
    path = tmp_path / "g.jpg"
    Image.fromarray(np.full((30, 30), 128, np.uint8)).save(path)
    x = PreprocessSpec(input_size=16).load(path)
    assert x.shape == (3, 16, 16)
    np.testing.assert_allclose(x[0], x[2])


def test_ct_windows_from_hounsfield_units():
    hu = np.array([[-1000.0, 0.0, 40.0, 80.0], [600.0, 2000.0, 30.0, 100.0]] * 2,
                  dtype=np.float32)
    chans = stack_windows(hu, (BRAIN_WINDOW, BONE_WINDOW))
    # brain window L40/W80 spans 0..80 HU
    np.testing.assert_allclose(chans[0][0], [0.0, 0.0, 0.5, 1.0])
    # bone window L600/W2800 spans -800..2000 HU
    np.testing.assert_allclose(chans[1][1, :2], [0.5, 1.0])
    spec = PreprocessSpec.for_ct(8)
    x = spec.from_hu(np.random.default_rng(0).uniform(-1000, 2000, (32, 32)))
    assert x.shape == (3, 8, 8) and 0.0 <= x.min() and x.max() <= 1.0


def test_corrupt_and_mismatched_files_are_named(tmp_path, ct_phantoms):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(DataError, match="broken.jpg: not a readable image"):
        PreprocessSpec(input_size=32).load(bad)
    with pytest.raises(DataError, match="missing.png: file not found"):
        PreprocessSpec(input_size=32).load(tmp_path / "missing.png")
    dcm = next(ct_phantoms.glob("*.dcm"))
    with pytest.raises(DataError, match="no CT windows"):
        PreprocessSpec(input_size=32).load(dcm)
    png = tmp_path / "x.png"
    Image.new("L", (10, 10)).save(png)
    with pytest.raises(DataError, match="reads CT DICOM"):
        PreprocessSpec.for_ct(32).load(png)
    assert PreprocessSpec.for_ct(32).load(dcm).shape == (3, 32, 32)
