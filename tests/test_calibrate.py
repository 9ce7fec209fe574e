"""Calibration and verification images: disjoint, stratified, seeded, streamed."""

from __future__ import annotations

import numpy as np

from edgekit.calibrate import StreamedImages, plan_data, stratified_sample
from edgekit.data.folder import scan_folder
from edgekit.sources import load_model


def test_stratified_sample_is_seeded_and_proportional(mri_phantoms):
    samples = scan_folder(mri_phantoms).samples
    a = stratified_sample(samples, 20, seed=1)
    assert a == stratified_sample(samples, 20, seed=1)
    assert a != stratified_sample(samples, 20, seed=2)
    assert len(a) == 20 and np.bincount([s.target for s in a]).tolist() == [5, 5, 5, 5]
    assert stratified_sample(samples, 1000, seed=0) == sorted(samples, key=lambda s: str(s.path))


def test_plan_is_disjoint_and_streams(mri_phantoms):
    loaded = load_model("dsconv_cbam_gap", input_size=64)
    plan = plan_data(loaded, mri_phantoms, calibration_images=12, verification_images=10, seed=0)
    calib = {s.path for s in plan.calibration}
    assert len(calib) == 12 and len(plan.verification) == 10
    assert not calib & {s.path for s in plan.verification}
    assert "seeded" in plan.origin and plan.describe()["calibration_files_sha256"]
    seen = []
    stream = StreamedImages(plan.calibration, loaded.spec, progress=seen.append)
    items = list(stream)
    assert len(stream) == 12 and items[0].shape == (1, 3, 64, 64) and items[0].dtype == np.float32
    assert seen[-1] == 12 and list(stream)[3].tobytes() == items[3].tobytes()  # re-iterable
