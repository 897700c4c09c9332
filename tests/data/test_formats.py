"""File formats, parsed strictly: IDX (MNIST family) and CIFAR-10 binary records."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile

import numpy as np
import pytest
import torch

import robustlab as rl
from robustlab.data import cifar
from robustlab.data.idx import idx_bytes, parse_idx, read_idx, write_idx


def test_idx_bytes_follow_the_format():
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    raw = idx_bytes(arr)
    # magic 0x00000802 (unsigned bytes, 2 dims), then big-endian dims 2 and 3, then the data.
    assert raw == b"\x00\x00\x08\x02" + struct.pack(">II", 2, 3) + bytes(range(6))


@pytest.mark.parametrize("name", ["x-idx3-ubyte.gz", "x-idx3-ubyte"])
def test_idx_round_trip(tmp_path, name):
    rng = np.random.default_rng(0)
    for shape in [(7,), (2, 3, 4), (3, 28, 28), (1, 2, 3, 4)]:
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        path = write_idx(tmp_path / name, arr)
        back = read_idx(path, ndim=len(shape))
        assert back.dtype == np.uint8 and np.array_equal(back, arr)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_idx_corruption_is_a_value_error_naming_the_file(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(arr)
    cases = {
        "trunc.gz": (gzip.compress(raw[:-3]), r"trunc.gz holds 21 data bytes, but its header \(2, 3, 4\) announces 24 \(truncated\)"),
        "long": (raw + b"\x00", r"long holds 25 data bytes.*trailing"),
        "magic": (b"\x01\x02\x03\x04" + raw[4:], "magic has magic 01020304"),
        "float": (b"\x00\x00\x0d\x03" + raw[4:], "float has magic 00000d03"),
        "header": (raw[:9], "header is truncated inside its header"),
        "tiny": (b"\x00\x00", "tiny is too short"),
        "notgz.gz": (b"garbage", "cannot decompress IDX file .*notgz.gz"),
        "cut.gz": (gzip.compress(raw)[:-6], "cannot decompress IDX file .*cut.gz"),
    }
    for name, (content, match) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=match):
            read_idx(tmp_path / name)
    write_idx(tmp_path / "labels.gz", np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match="labels.gz has 1 dimensions"):
        read_idx(tmp_path / "labels.gz", ndim=3)
    with pytest.raises(ValueError, match="uint8"):
        write_idx(tmp_path / "bad", np.zeros(3, dtype=np.float32))
    assert parse_idx(b"\x00\x00\x08\x01\x00\x00\x00\x00").shape == (0,)


def test_idx_dataset_with_inconsistent_labels_is_refused(tmp_path, isolated, fake_idx):
    fake_idx(tmp_path / "mnist")
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(ValueError, match="holds 4 labels for the 5 images"):
        rl.data.load("mnist", "test", root=tmp_path, download=False)
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", np.full(5, 10, dtype=np.uint8))
    with pytest.raises(ValueError, match="label 10 outside 0..9"):
        rl.data.load("mnist", "test", root=tmp_path, download=False)
    write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", np.zeros((5, 32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"images of shape \(1, 32, 32\), expected \(1, 28, 28\)"):
        rl.data.load("mnist", "test", root=tmp_path, download=False)


def _records(rng: np.random.Generator, n: int) -> np.ndarray:
    rec = rng.integers(0, 256, (n, cifar.RECORD), dtype=np.uint8)
    rec[:, 0] = rng.integers(0, 10, n)
    return rec


def test_cifar_binary_records_from_extracted_files(tmp_path, isolated):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar10" / cifar.ARCHIVE_DIR
    folder.mkdir(parents=True)
    records = {name: _records(rng, 3) for name in cifar.TRAIN_FILES + cifar.TEST_FILES}
    for name, rec in records.items():
        (folder / name).write_bytes(rec.tobytes())
    d = rl.data.load("cifar10", "test", root=tmp_path, download=False)
    rec = records["test_batch.bin"]
    assert d.shape == (3, 32, 32) and len(d) == 3 and d.classes[1] == "automobile"
    assert d.labels.tolist() == rec[:, 0].tolist()
    # Record layout: label, then 1024 red, 1024 green, 1024 blue bytes, each image row-major.
    expect = torch.from_numpy(rec[:, 1:].astype(np.float32) / 255).reshape(3, 3, 32, 32)
    assert torch.equal(d.images, expect)
    assert float(d.images[1, 2, 0, 5]) == pytest.approx(rec[1, 1 + 2048 + 5] / 255)
    assert float(d.images[2, 0, 31, 31]) == pytest.approx(rec[2, 1024] / 255)
    train = rl.data.load("cifar10", "train", root=tmp_path, download=False)
    assert len(train) == 15
    assert train.labels.tolist() == np.concatenate([records[n][:, 0] for n in cifar.TRAIN_FILES]).tolist()
    (folder / "test_batch.bin").write_bytes(rec.tobytes()[:-1])
    with pytest.raises(ValueError, match="test_batch.bin has 9218 bytes, not a positive multiple of the 3073-byte record"):
        rl.data.load("cifar10", "test", root=tmp_path, download=False)
    bad = rec.copy()
    bad[0, 0] = 57
    (folder / "test_batch.bin").write_bytes(bad.tobytes())
    with pytest.raises(ValueError, match="holds label 57; expected 0-9"):
        rl.data.load("cifar10", "test", root=tmp_path, download=False)


def test_cifar_read_straight_from_the_archive(tmp_path):
    rng = np.random.default_rng(3)
    records = {name: _records(rng, 2) for name in cifar.TRAIN_FILES + cifar.TEST_FILES}
    archive = tmp_path / cifar.ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("readme.html",) + tuple(records):
            data = records[name].tobytes() if name in records else b"<html></html>"
            info = tarfile.TarInfo(f"{cifar.ARCHIVE_DIR}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert cifar.present(tmp_path)
    images, labels = cifar.read_split(tmp_path, "train")
    assert images.shape == (10, 3, 32, 32) and labels.shape == (10,)
    assert np.array_equal(images[4].reshape(-1), records["data_batch_3.bin"][0, 1:])
    images, labels = cifar.read_split(tmp_path, "test")
    assert np.array_equal(labels, records["test_batch.bin"][:, 0])
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ValueError, match="cannot read CIFAR-10 archive"):
        cifar.read_split(tmp_path, "train")
