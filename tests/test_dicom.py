"""CT DICOM reading (Hounsfield units) and RSNA label files."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.data.dicom import ICH_LABELS, is_dicom, read_hu, read_rsna_labels, write_rsna_labels
from edgekit.errors import DataError


def _write_ct(path, pixels, slope=1.0, intercept=-1024.0):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_hounsfield_units_use_slope_and_intercept(tmp_path):
    pixels = np.array([[0, 1024], [1064, 3024]], dtype=np.uint16)
    _write_ct(tmp_path / "a.dcm", pixels)
    np.testing.assert_array_equal(read_hu(tmp_path / "a.dcm"), [[-1024, 0], [40, 2000]])
    _write_ct(tmp_path / "b.dcm", pixels, slope=0.5, intercept=-100)
    np.testing.assert_array_equal(read_hu(tmp_path / "b.dcm"), [[-100, 412], [432, 1412]])
    assert is_dicom(tmp_path / "a.dcm")


def test_corrupt_dicom_is_named(tmp_path):
    bad = tmp_path / "ID_bad.dcm"
    bad.write_bytes(b"\x00" * 128 + b"DICM" + b"\x01\x02\x03")
    with pytest.raises(DataError, match="ID_bad.dcm: not a readable DICOM"):
        read_hu(bad)


def test_rsna_labels_round_trip_and_errors(tmp_path):
    labels = {"ID_00aa": np.array([1, 0, 1, 0, 0, 0], np.float32),
              "ID_00bb": np.zeros(6, np.float32)}
    path = tmp_path / "labels.csv"
    write_rsna_labels(path, labels)
    back = read_rsna_labels(path)
    assert set(back) == set(labels)
    np.testing.assert_array_equal(back["ID_00aa"], labels["ID_00aa"])
    text = path.read_text().splitlines()
    assert text[0] == "ID,Label" and text[1] == f"ID_00aa_{ICH_LABELS[0]},1"
    (tmp_path / "short.csv").write_text("ID,Label\nID_1_any,1\n")
    with pytest.raises(DataError, match="lacks rows for epidural"):
        read_rsna_labels(tmp_path / "short.csv")
    (tmp_path / "bad.csv").write_text("ID,Label\nID_1_bleed,1\n")
    with pytest.raises(DataError, match=r"bad.csv:2: unknown subtype"):
        read_rsna_labels(tmp_path / "bad.csv")
