"""IDX reader: good files round-trip, corrupt files raise a ValueError naming the file and the problem."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from vsml_train.data.idx import IDXFormatError, read_idx, read_image_label_pair, read_images, read_labels, write_idx


def _images(n: int = 5, side: int = 28) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, side, side), dtype=np.uint8)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip_raw_and_gzip(tmp_path, suffix):
    images = _images()
    labels = np.array([0, 9, 3, 3, 1], dtype=np.uint8)
    write_idx(tmp_path / f"img{suffix}", images)
    write_idx(tmp_path / f"lab{suffix}", labels)
    got_images, got_labels = read_image_label_pair(tmp_path / f"img{suffix}", tmp_path / f"lab{suffix}", n_classes=10)
    assert got_images.dtype == np.uint8 and got_images.shape == (5, 28, 28)
    assert got_labels.dtype == np.int64 and got_labels.shape == (5,)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert not got_images.flags.writeable and not got_labels.flags.writeable


def test_gzip_detected_by_content_not_name(tmp_path):
    write_idx(tmp_path / "x.gz", np.arange(4, dtype=np.uint8))
    (tmp_path / "x.gz").rename(tmp_path / "x")
    np.testing.assert_array_equal(read_idx(tmp_path / "x"), np.arange(4))


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_multibyte_types_are_big_endian(tmp_path, dtype):
    array = np.arange(-3, 9, dtype=dtype).reshape(3, 4)
    write_idx(tmp_path / "a", array)
    raw = (tmp_path / "a").read_bytes()
    assert raw[3] == 2 and struct.unpack(">2I", raw[4:12]) == (3, 4)
    got = read_idx(tmp_path / "a")
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)


def _expect(path, *fragments, reader=read_idx, **kwargs):
    with pytest.raises(ValueError) as info:
        reader(path, **kwargs)
    assert isinstance(info.value, IDXFormatError)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_bad_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 2) + b"ab")
    _expect(path, "bad magic")


def test_unknown_element_type(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 2) + b"ab")
    _expect(path, "unknown element type 0x07")


def test_too_short_for_header(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"\x00\x00")
    _expect(path, "too short")
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 2))
    _expect(path, "truncated header")


def test_truncated_data(tmp_path):
    path = tmp_path / "img"
    write_idx(path, _images(3))
    path.write_bytes(path.read_bytes()[:-10])
    _expect(path, "truncated", "(3, 28, 28)")


def test_trailing_bytes(tmp_path):
    path = tmp_path / "lab"
    write_idx(path, np.zeros(3, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"xx")
    _expect(path, "2 unexpected bytes")


def test_truncated_and_corrupt_gzip(tmp_path):
    path = tmp_path / "img.gz"
    write_idx(path, _images(3))
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    _expect(path, "gzip")
    path.write_bytes(good[:-8] + bytes(8))  # wrong CRC and length trailer
    _expect(path, "gzip")


def test_wrong_image_dims(tmp_path):
    path = tmp_path / "img"
    write_idx(path, _images(2, side=14))
    _expect(path, "28x28", "14x14", reader=read_images)
    np.testing.assert_array_equal(read_images(path, shape=None).shape, (2, 14, 14))
    write_idx(path, np.zeros((2, 784), dtype=np.uint8))
    _expect(path, "3 dimensions", reader=read_images)
    write_idx(path, np.zeros((2, 28, 28), dtype=np.int16))
    _expect(path, "uint8", reader=read_images)


def test_wrong_label_dims_and_range(tmp_path):
    path = tmp_path / "lab"
    write_idx(path, np.zeros((2, 2), dtype=np.uint8))
    _expect(path, "1 dimension", reader=read_labels)
    write_idx(path, np.array([1, 2, 10, 3], dtype=np.uint8))
    _expect(path, "out of range", "labels[2] = 10", reader=read_labels, n_classes=10)
    assert read_labels(path).max() == 10  # no range given: no check


def test_count_mismatch_between_images_and_labels(tmp_path):
    write_idx(tmp_path / "img", _images(3))
    write_idx(tmp_path / "lab", np.zeros(4, dtype=np.uint8))
    with pytest.raises(IDXFormatError, match="4 labels but 3 images"):
        read_image_label_pair(tmp_path / "img", tmp_path / "lab")


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match="int64"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))


def test_gzip_written_deterministically(tmp_path):
    write_idx(tmp_path / "a.gz", np.arange(10, dtype=np.uint8))
    write_idx(tmp_path / "b.gz", np.arange(10, dtype=np.uint8))
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()
    assert gzip.decompress((tmp_path / "a.gz").read_bytes())[:4] == b"\x00\x00\x08\x01"
