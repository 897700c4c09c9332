"""Bring your own data: .npz files, image folders (Pillow) and CIFAR-10/100 binary files, read to the
same Dataset as the named loaders, with clear errors for shapes, dtypes, ranges and labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import robustlab as rl
from robustlab.data import cifar, load_cifar_binary, load_image_folder, load_npz, load_path


@pytest.fixture()
def digits_u8(digits_test):
    """The first 12 digits test images as uint8 (N, 8, 8) with their labels (N,)."""
    x = (digits_test.images[:12, 0] * 255).round().to(torch.uint8).numpy()
    return x, digits_test.labels[:12].numpy()


def test_npz_uint8_nhwc_and_float_nchw_give_the_same_images(tmp_path, digits_u8):
    x, y = digits_u8
    np.savez(tmp_path / "a.npz", images=x[..., None], labels=y.astype(np.uint8))  # (N, H, W, 1) uint8
    np.savez(tmp_path / "b.npz", x=(x[:, None] / 255.0).astype(np.float32), y=y[:, None])  # (N, 1, H, W), (N, 1)
    a, b = load_npz(tmp_path / "a.npz"), rl.data.load(str(tmp_path / "b.npz"))
    assert a.images.shape == (12, 1, 8, 8) and a.images.dtype == torch.float32
    torch.testing.assert_close(a.images, torch.from_numpy(x[:, None]).float() / 255)
    torch.testing.assert_close(a.images, b.images)
    assert torch.equal(a.labels, b.labels) and a.split == "all" and "npz file" in a.source


def test_npz_with_splits_and_class_names(tmp_path, digits_u8):
    x, y = digits_u8
    np.savez(tmp_path / "s.npz", x_train=x[:8], y_train=y[:8], x_test=x[8:], y_test=y[8:],
             classes=np.array([f"digit {i}" for i in range(10)]))
    tr, te = rl.data.load(str(tmp_path / "s.npz"), "train"), rl.data.load(str(tmp_path / "s.npz"), "test")
    assert (len(tr), len(te), tr.split, te.split) == (8, 4, "train", "test")
    assert te.classes[3] == "digit 3"


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": np.full((2, 1, 4, 4), 2.0, np.float32), "labels": np.array([0, 1])}, r"values in \[2, 2\]; expected \[0, 1\]"),
        ({"images": np.zeros((2, 1, 4, 4), np.int32), "labels": np.array([0, 1])}, "dtype int32; expected uint8"),
        ({"images": np.zeros((2, 5, 4, 4), np.uint8), "labels": np.array([0, 1])}, "no channel axis of size 1 or 3"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, 1, 1])}, r"labels of shape \(3,\); expected \(2,\)"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0.0, 1.0])}, "labels of dtype float64"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, -1])}, "label -1 is negative"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.eye(2, dtype=np.int64)}, "one-hot"),
        ({"pixels": np.zeros((2, 4, 4), np.uint8)}, "expected images/labels, x/y"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, 3]), "classes": np.array(["a", "b"])}, "names only 2 classes"),
    ],
)
def test_npz_errors_name_the_problem(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        load_npz(tmp_path / "bad.npz")


def test_npz_with_pickled_objects_is_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, {"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="without unpickling"):
        load_npz(tmp_path / "obj.npz")


def _write_folder(root, images, labels, mode="L", size=None):
    for i, (a, k) in enumerate(zip(images, labels)):
        (root / f"class_{k}").mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(a, "L").convert(mode)
        if size is not None and i == 0:
            im = im.resize(size)
        im.save(root / f"class_{k}" / f"{i:03d}.png")


def test_image_folder_grayscale_reads_the_exact_pixels_in_sorted_class_order(tmp_path, digits_u8):
    x, y = digits_u8
    _write_folder(tmp_path / "imgs", x, y)
    (tmp_path / "imgs" / f"class_{y[0]}" / "notes.txt").write_text("not an image")  # ignored
    d = load_image_folder(tmp_path / "imgs")
    names = sorted({f"class_{k}" for k in y})
    assert d.classes == tuple(names) and d.shape == (1, 8, 8) and len(d) == 12
    for img, lab in zip(d.images, d.labels):  # every image comes back with its folder's label
        name = d.classes[int(lab)]
        hits = [i for i in range(12) if f"class_{y[i]}" == name
                and torch.equal(torch.from_numpy(x[i]).float() / 255, img[0])]
        assert hits
    assert d.source.startswith("image folder")


def test_image_folder_rgb_and_split_subfolders(tmp_path, digits_u8):
    x, y = digits_u8
    _write_folder(tmp_path / "ds" / "train", x[:8], y[:8], mode="RGB")
    _write_folder(tmp_path / "ds" / "test", x[8:], y[8:], mode="RGB")
    te = load_path(tmp_path / "ds", "test")
    assert te.shape == (3, 8, 8) and len(te) == 4 and te.split == "test"
    torch.testing.assert_close(te.images[:, 0], te.images[:, 2])  # gray pixels saved as RGB


def test_image_folder_errors(tmp_path, digits_u8):
    x, y = digits_u8
    _write_folder(tmp_path / "sizes", x, y, size=(9, 8))
    with pytest.raises(ValueError, match=r"is 9x8 but .* is 8x8 .* same size"):
        load_image_folder(tmp_path / "sizes")
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no PNG/JPG/JPEG images"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image_folder(tmp_path / "broken")
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_image_folder(tmp_path / "flat")


def _cifar100_bytes(n: int, seed: int = 0) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    coarse, fine = g.integers(0, 20, n, dtype=np.uint8), g.integers(0, 100, n, dtype=np.uint8)
    pixels = g.integers(0, 256, (n, 3072), dtype=np.uint8)
    rec = np.concatenate([coarse[:, None], fine[:, None], pixels], axis=1)  # (N, 3074)
    return rec.tobytes(), coarse, fine, pixels


def test_cifar100_binary_fine_and_coarse_labels(tmp_path):
    folder = tmp_path / "c100" / "cifar-100-binary"
    folder.mkdir(parents=True)
    raw, coarse, fine, pixels = _cifar100_bytes(6)
    (folder / "train.bin").write_bytes(_cifar100_bytes(4, 1)[0])
    (folder / "test.bin").write_bytes(raw)
    (folder / "fine_label_names.txt").write_text("\n".join(f"f{i}" for i in range(100)) + "\n")
    d = load_path(tmp_path / "c100", "test")
    assert d.name == "cifar100" and d.shape == (3, 32, 32) and d.classes[7] == "f7"
    assert d.labels.tolist() == fine.tolist()
    torch.testing.assert_close(d.images.reshape(6, -1), torch.from_numpy(pixels).float() / 255)
    c = load_cifar_binary(tmp_path / "c100", "test", labels="coarse")
    assert c.labels.tolist() == coarse.tolist() and c.num_classes == 20
    one = rl.data.load(str(folder / "test.bin"))
    assert one.labels.tolist() == fine.tolist() and one.split == "all"
    assert len(rl.data.load("cifar100", "train", root=tmp_path / "c100")) == 4


def test_cifar_binary_errors(tmp_path):
    raw = bytearray(_cifar100_bytes(2)[0])
    raw[1] = 100  # fine label out of range
    (tmp_path / "test.bin").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="fine label 100; expected 0-99"):
        load_cifar_binary(tmp_path / "test.bin")
    (tmp_path / "short.bin").write_bytes(b"\x00" * 3075)
    with pytest.raises(ValueError, match="CIFAR-10 file .* not a positive multiple"):
        load_cifar_binary(tmp_path / "short.bin")
    with pytest.raises(ValueError, match="is it truncated"):
        cifar.parse_records_100(b"\x00" * 3073, "x.bin")


def test_cifar10_single_binary_file(tmp_path):
    g = np.random.default_rng(0)
    rec = np.concatenate([g.integers(0, 10, (3, 1), dtype=np.uint8), g.integers(0, 256, (3, 3072), dtype=np.uint8)], 1)
    (tmp_path / "test_batch.bin").write_bytes(rec.tobytes())
    d = load_path(tmp_path / "test_batch.bin")
    assert d.classes[0] == "airplane" and d.labels.tolist() == rec[:, 0].tolist()


def test_unknown_paths_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rl.data.load(str(tmp_path / "nothing.npz"))
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(ValueError, match="unknown format '.csv'"):
        rl.data.load(str(tmp_path / "data.csv"))


def test_a_dataset_name_wins_over_a_folder_of_the_same_name(tmp_path, monkeypatch):
    (tmp_path / "digits" / "a").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert rl.data.load("digits", "test").name == "digits"
    with pytest.raises(ValueError, match="holds no PNG"):
        rl.data.load("./digits", "test")  # an explicit path is read as one
