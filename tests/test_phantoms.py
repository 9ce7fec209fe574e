"""Tests of the SYNTHETIC phantoms (edgekit.data.phantoms): layout, determinism, DICOM round
trip, plausibility and - most important - that a tiny CNN can learn them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.data.dicom import ICH_LABELS, read_hu, read_rsna_labels, stack_windows
from edgekit.data.phantoms import (
    CT_SUBTYPES,
    MRI_CLASSES,
    _render_ct,
    ct_labels_for,
    ct_rng,
    ct_slice_id,
    generate_ct_dataset,
    generate_mri_dataset,
    mri_rng,
    render_ct,
    render_mri,
)


def _digests(root: Path, pattern: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.glob(pattern))}


# ------------------------------------------------------------------------------------- MRI
def test_mri_classes_match_kaggle_folders():
    assert MRI_CLASSES == ("glioma", "meningioma", "notumor", "pituitary")


def test_mri_dataset_layout_progress_and_readme(tmp_path):
    calls: list[int] = []
    root = generate_mri_dataset(tmp_path / "mri", n_per_class=3, size=64, seed=5,
                                progress=calls.append)
    assert root == tmp_path / "mri"
    for cls in MRI_CLASSES:
        files = sorted(p.name for p in (root / cls).iterdir())
        assert files == [f"synthetic_{cls}_{i:05d}.jpg" for i in range(3)]
        with Image.open(root / cls / files[0]) as im:
            assert im.size == (64, 64)
            assert im.format == "JPEG"
    assert calls == list(range(1, 13))
    readme = (root / "README.txt").read_text()
    assert "SYNTHETIC" in readme and "synthetic" in readme
    assert "clinical" in readme and "Seed: 5" in readme and "64x64" in readme


def test_mri_png_format(tmp_path):
    root = generate_mri_dataset(tmp_path, n_per_class=1, size=32, seed=0, fmt="png")
    with Image.open(root / "pituitary" / "synthetic_pituitary_00000.png") as im:
        assert im.format == "PNG" and im.mode == "L" and im.size == (32, 32)
    with pytest.raises(ValueError):
        generate_mri_dataset(tmp_path / "x", n_per_class=1, fmt="gif")


def test_mri_dataset_is_deterministic(tmp_path):
    a = _digests(generate_mri_dataset(tmp_path / "a", 3, size=64, seed=1), "*/*.jpg")
    b = _digests(generate_mri_dataset(tmp_path / "b", 3, size=64, seed=1), "*/*.jpg")
    c = _digests(generate_mri_dataset(tmp_path / "c", 3, size=64, seed=2), "*/*.jpg")
    fewer = _digests(generate_mri_dataset(tmp_path / "d", 2, size=64, seed=1), "*/*.jpg")
    assert a == b  # byte-identical for the same seed
    assert all(a[k] != c[k] for k in a)  # every image changes with the seed
    assert all(a[k] == v for k, v in fewer.items())  # an image does not depend on n_per_class


def test_render_mri_shape_background_and_brain():
    for cls in MRI_CLASSES:
        for i in range(3):
            img = render_mri(cls, mri_rng(0, cls, i), 128)
            assert img.dtype == np.uint8 and img.shape == (128, 128)
            corners = np.concatenate([img[:8, :8].ravel(), img[:8, -8:].ravel(),
                                      img[-8:, :8].ravel(), img[-8:, -8:].ravel()])
            centre = img[44:84, 44:84]
            assert corners.mean() < 30, cls
            assert centre.mean() > 2.5 * corners.mean() + 40, cls
    with pytest.raises(ValueError):
        render_mri("astrocytoma", np.random.default_rng(0))


def _mri_arrays(seed: int, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([render_mri(c, mri_rng(seed, c, i), size) for c in MRI_CLASSES for i in range(n)])
    y = np.repeat(np.arange(len(MRI_CLASSES)), n)
    return x.astype(np.float32) / 255.0, y


def test_mean_brightness_does_not_give_the_class_away():
    x, y = _mri_arrays(seed=3, n=40, size=64)
    means = x.reshape(len(x), -1).mean(axis=1)
    class_means = np.array([means[y == c].mean() for c in range(4)])
    class_stds = np.array([means[y == c].std() for c in range(4)])
    assert class_means.max() - class_means.min() < class_stds.min()
    # the best single threshold on the mean separates no class from the rest
    for c in range(4):
        best = max(np.mean((means > t) == (y == c)) for t in np.unique(means))
        base = max(np.mean(y == c), np.mean(y != c))
        assert best < base + 0.12


# ------------------------------------------------------------------------------------- CNN
def _train_eval(x_train, y_train, x_test, y_test, n_classes: int, epochs: int, seed: int,
                flips: bool = True) -> float:
    torch = pytest.importorskip("torch")
    nn = torch.nn
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # far faster than 2 contended threads for a net this small
    try:
        torch.manual_seed(seed)
        c = x_train.shape[1]
        net = nn.Sequential(
            nn.Conv2d(c, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, n_classes),
        )
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train).long()
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            net.train()
            perm = torch.randperm(len(yt), generator=gen)
            for start in range(0, len(yt), 32):
                idx = perm[start:start + 32]
                xb = xt[idx]
                if flips:
                    flip = torch.rand(len(idx), 1, 1, 1, generator=gen) < 0.5
                    xb = torch.where(flip, xb.flip(3), xb)
                loss = nn.functional.cross_entropy(net(xb), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            pred = net(torch.from_numpy(x_test)).argmax(1).numpy()
        return float(np.mean(pred == y_test))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("seed", [0, 1])
def test_mri_classes_are_learnable_by_a_tiny_cnn_at_64px(seed):
    pytest.importorskip("torch")
    n_train, n_test = 45, 15
    x, y = _mri_arrays(seed=100 + seed, n=n_train + n_test, size=64)
    test = (np.arange(len(y)) % (n_train + n_test)) >= n_train
    acc = _train_eval(x[~test, None], y[~test], x[test, None], y[test], 4, epochs=20, seed=seed)
    assert acc >= 0.7, f"held-out accuracy {acc:.2f} (chance 0.25)"


def test_ct_haemorrhage_is_learnable_by_a_tiny_cnn_at_64px():
    pytest.importorskip("torch")
    n_train, n_test = 150, 40
    x, y = [], []
    for i in range(2 * (n_train + n_test)):
        labels = {"intraparenchymal"} if i % 2 else set()
        x.append(stack_windows(render_ct(labels, np.random.default_rng([7, i]), 64)))
        y.append(i % 2)
    x, y = np.stack(x), np.array(y)
    test = np.arange(len(y)) >= 2 * n_train
    acc = _train_eval(x[~test], y[~test], x[test], y[test], 2, epochs=12, seed=0)
    assert acc >= 0.75, f"held-out accuracy {acc:.2f} (chance 0.5)"


# ------------------------------------------------------------------------------------- CT
def test_ct_label_plan_blocks():
    for seed in (0, 1):
        plans = [ct_labels_for(seed, i) for i in range(60)]
        for block in range(6):
            chunk = plans[block * 10:(block + 1) * 10]
            assert sum(1 for p in chunk if not p) == 4
            assert set().union(*chunk) == set(CT_SUBTYPES)
        assert all(p <= set(CT_SUBTYPES) for p in plans)
        assert any(len(p) > 1 for p in plans)
    assert ct_slice_id(0, 0) != ct_slice_id(0, 1) != ct_slice_id(1, 1)
    assert len(ct_slice_id(3, 7)) == len("ID_") + 10


def test_ct_dataset_layout_labels_and_round_trip(tmp_path):
    calls: list[int] = []
    root = generate_ct_dataset(tmp_path / "ct", n=60, size=64, seed=0, progress=calls.append)
    assert calls == list(range(1, 61))
    files = sorted(root.glob("*.dcm"))
    assert len(files) == 60
    labels = read_rsna_labels(root / "labels.csv")
    assert sorted(labels) == sorted(p.stem for p in files)
    vecs = np.stack(list(labels.values()))
    assert np.array_equal(vecs[:, 0], vecs[:, 1:].max(axis=1))  # any = OR of the subtypes
    assert (vecs[:, 1:].sum(axis=0) >= 1).all()  # every subtype appears
    assert 0.3 <= float(np.mean(vecs[:, 0] == 0)) <= 0.5  # ~40 % negatives
    readme = (root / "README.txt").read_text()
    assert "SYNTHETIC" in readme and "clinical" in readme and "Seed: 0" in readme
    # exact round trip through DICOM, labels follow ct_labels_for
    for i in (0, 1, 2, 17, 59):
        sid = ct_slice_id(0, i)
        subtypes = ct_labels_for(0, i)
        expected = render_ct(subtypes, ct_rng(0, i), 64)
        hu = read_hu(root / f"{sid}.dcm")
        assert hu.dtype == np.float32 and hu.shape == (64, 64)
        assert np.array_equal(hu, expected)
        want = [float(bool(subtypes))] + [float(s in subtypes) for s in ICH_LABELS[1:]]
        assert labels[sid].tolist() == want


def test_ct_dicom_header(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    root = generate_ct_dataset(tmp_path, n=2, size=48, seed=3)
    a, b = (pydicom.dcmread(p) for p in sorted(root.glob("*.dcm")))
    for ds in (a, b):
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert ds.SOPClassUID == CTImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "CT" and ds.Rows == 48 and ds.Columns == 48
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 16, 15)
        assert ds.PixelRepresentation == 1 and ds.SamplesPerPixel == 1
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
        assert str(ds.PatientName) == "SYNTHETIC^PHANTOM"
        assert "SYNTHETIC" in ds.SeriesDescription and "SYNTHETIC" in ds.ImageComments
        assert len(ds.PixelSpacing) == 2 and ds.WindowCenter is not None
    assert a.StudyInstanceUID == b.StudyInstanceUID and a.SOPInstanceUID != b.SOPInstanceUID


def test_ct_dataset_is_deterministic(tmp_path):
    a = _digests(generate_ct_dataset(tmp_path / "a", 12, size=48, seed=4), "*")
    b = _digests(generate_ct_dataset(tmp_path / "b", 12, size=48, seed=4), "*")
    c = _digests(generate_ct_dataset(tmp_path / "c", 12, size=48, seed=5), "*")
    fewer = _digests(generate_ct_dataset(tmp_path / "d", 5, size=48, seed=4), "*.dcm")
    assert a == b
    assert not set(a) & {k for k in c if k.endswith(".dcm")}  # other ids for another seed
    assert sorted(v for k, v in a.items() if k.endswith(".dcm")) != sorted(
        v for k, v in c.items() if k.endswith(".dcm"))
    assert all(a[k] == v for k, v in fewer.items())


def test_ct_plausible_densities():
    for i in range(12):
        labels = {CT_SUBTYPES[i % 5]} if i % 6 else set()
        if i == 11:
            labels = {"subdural", "subarachnoid"}
        hu, blood = _render_ct(labels, np.random.default_rng([11, i]), 128)
        assert hu.dtype == np.float32 and np.array_equal(hu, np.rint(hu))
        corners = np.concatenate([hu[:6, :6].ravel(), hu[-6:, -6:].ravel()])
        assert abs(float(np.median(corners)) + 1000.0) < 15.0
        # a skull ring: dense bone on every side of the head
        head = np.argwhere(hu > -500)
        cy, cx = head.mean(axis=0).round().astype(int)
        bone = hu > 500
        assert bone[:cy, :].any() and bone[cy:, :].any() and bone[:, :cx].any() and bone[:, cx:].any()
        assert not bone[cy - 5:cy + 5, cx - 5:cx + 5].any()
        assert hu.max() > 1000 and (hu > 500).mean() > 0.02
        # brain tissue (grey/white matter) dominates the inside of the skull
        centre = hu[cy - 20:cy + 20, cx - 20:cx + 20]
        assert 15.0 < float(np.median(centre)) < 50.0
        if labels:  # acute blood: 50-90 HU in the haemorrhage
            assert blood.any()
            assert int(((hu >= 50) & (hu <= 90) & blood).sum()) >= 8, labels
        else:
            assert not blood.any()
    with pytest.raises(ValueError):
        render_ct({"chronic"}, np.random.default_rng(0))
    assert np.array_equal(render_ct({"any"}, np.random.default_rng(1), 32),
                          render_ct(set(), np.random.default_rng(1), 32))
