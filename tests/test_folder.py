"""Class-per-folder datasets: scanning, bad inputs, de-duplication and seeded stratified splits."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from edgekit.data.folder import near_duplicate_groups, scan_ct_folder, scan_folder, split_dataset
from edgekit.errors import DataError


def test_scan_counts_classes(mri_phantoms):
    ds = scan_folder(mri_phantoms)
    assert ds.classes == ("glioma", "meningioma", "notumor", "pituitary")
    assert ds.counts() == dict.fromkeys(ds.classes, 32)


def test_missing_folder_single_class_and_empty_class(tmp_path, mri_copy):
    with pytest.raises(DataError, match="Data folder not found"):
        scan_folder(tmp_path / "nope")
    one = tmp_path / "one"
    shutil.copytree(mri_copy / "glioma", one / "glioma")
    with pytest.raises(DataError, match="need at least 2 class folders"):
        scan_folder(one)
    (mri_copy / "empty").mkdir()
    with pytest.raises(DataError, match="empty contains no images"):
        scan_folder(mri_copy)


def test_kaggle_parent_folder_and_wrong_class_set(tmp_path, mri_copy):
    (tmp_path / "k" / "Training").mkdir(parents=True)
    (tmp_path / "k" / "Testing").mkdir()
    with pytest.raises(DataError, match="pass one of them"):
        scan_folder(tmp_path / "k")
    with pytest.raises(DataError, match="missing: tumour; unexpected: notumor"):
        scan_folder(mri_copy, expected_classes=["glioma", "meningioma", "tumour", "pituitary"])


def test_non_image_and_corrupt_files_skip_or_fail(mri_copy):
    (mri_copy / "glioma" / "notes.txt").write_text("hello")
    with pytest.warns(UserWarning, match="notes.txt: not an image file"):
        ds = scan_folder(mri_copy)
    assert len(ds.skipped) == 1
    with pytest.raises(DataError, match="notes.txt: not an image file"):
        scan_folder(mri_copy, on_error="fail")
    (mri_copy / "glioma" / "notes.txt").unlink()
    bad = mri_copy / "meningioma" / "zz_corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    ds = scan_folder(mri_copy)
    with pytest.warns(UserWarning, match="zz_corrupt.jpg: not a readable image"):
        split = split_dataset(ds, seed=0)
    assert all(s.path != bad for s in split.train.samples + split.val.samples)
    with pytest.raises(DataError, match="zz_corrupt.jpg: not a readable image"):
        split_dataset(scan_folder(mri_copy), on_error="fail")


def test_split_is_seeded_stratified_and_disjoint(mri_phantoms):
    a = split_dataset(scan_folder(mri_phantoms), seed=3, val_fraction=0.25)
    b = split_dataset(scan_folder(mri_phantoms), seed=3, val_fraction=0.25)
    c = split_dataset(scan_folder(mri_phantoms), seed=4, val_fraction=0.25)
    assert [s.path for s in a.val.samples] == [s.path for s in b.val.samples]
    assert [s.path for s in a.val.samples] != [s.path for s in c.val.samples]
    assert not {s.path for s in a.train.samples} & {s.path for s in a.val.samples}
    for cls, n in a.val.counts().items():
        assert 6 <= n <= 10, (cls, n)  # ~25 % of 32, stratified


def test_near_duplicates_are_removed_and_similar_images_kept_together(tmp_path):
    from edgekit.data.phantoms import generate_mri_dataset

    data = generate_mri_dataset(tmp_path / "d", n_per_class=6, size=192, seed=2)
    src = sorted((data / "glioma").glob("*.jpg"))[0]
    img = Image.open(src).convert("L")
    # three copies as they occur in the wild: rescaled, contrast-changed, re-encoded
    for k in range(3):
        side = 224 + 32 * k
        arr = np.asarray(img.resize((side, side)), dtype=np.float32)
        copy = np.clip(arr * (1.0 + 0.05 * k), 0, 255).astype(np.uint8)
        Image.fromarray(copy).save(data / "glioma" / f"copy_{k}.jpg", quality=70 + 10 * k)
    split = split_dataset(scan_folder(data), seed=0)
    assert split.duplicates_removed == 3
    kept = {s.path.name for s in split.train.samples + split.val.samples}
    assert len(kept & {src.name, "copy_0.jpg", "copy_1.jpg", "copy_2.jpg"}) == 1
    raw = split_dataset(scan_folder(data), seed=0, dedup=False)
    assert len(raw.train) + len(raw.val) == 4 * 6 + 3


def test_hash_grouping_is_transitive():
    a = bytes(32)
    b = bytes([1]) + bytes(31)  # 1 bit from a
    c = bytes([3]) + bytes(31)  # 1 bit from b, 2 from a
    far = bytes([255] * 32)
    groups = sorted(near_duplicate_groups([a, b, c, far], 1), key=len)
    assert groups == [[3], [0, 1, 2]]


def test_ct_folder_reads_rsna_labels(ct_phantoms):
    ds = scan_ct_folder(ct_phantoms)
    assert ds.task == "multilabel" and len(ds) == 48
    assert ds.classes[0] == "any"
    split = split_dataset(ds, seed=0)
    assert len(split.train) + len(split.val) + split.duplicates_removed == 48
