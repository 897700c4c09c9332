"""The foolbox sample sets (cifar10-sample, cifar100-sample, imagenet-sample[-512]) and the class names.

A synthetic wheel stands in for foolbox 3.3.4 (its SHA-256 and manifests patched in), so these tests
never touch the network; the real images are checked where this machine's cache holds them.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import robustlab as rl
from robustlab.data import classes, samples, wheels

_LABELS = {"cifar10": [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6], "cifar100": list(range(0, 100, 5)),
           "imagenet": [243, 559, 438, 990, 949, 853, 609, 609, 915, 455, 541, 630, 741, 471, 129, 99, 251, 22, 317, 305]}


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _fake_wheel(folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A wheel with 20 images per set: random CIFAR PNGs, ImageNet JPEGs of 512x512 except one 1024x683."""
    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {}
    pixels: dict[str, np.ndarray] = {}
    for prefix in ("cifar10", "cifar100"):
        for i, label in enumerate(_LABELS[prefix]):
            arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            files[f"{prefix}_{i:02d}_{label}.png"] = _png(arr)
            pixels[f"{prefix}_{i:02d}"] = arr
    for i, label in enumerate(_LABELS["imagenet"]):
        h, w = (683, 1024) if i == 10 else (512, 512)
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full_like(xx, 7 * i)], axis=2).astype(np.uint8)
        files[f"imagenet_{i:02d}_{label}.jpg"] = _png(arr, "JPEG")
    wheel = folder / "foolbox-3.3.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("foolbox/__init__.py", "raise SystemExit('never imported')\n")
        zf.writestr("foolbox/data/mnist_00_7.png", _png(np.zeros((28, 28), np.uint8)))
        for name, raw in files.items():
            zf.writestr(samples.PREFIX + name, raw)
    return wheel, pixels


@pytest.fixture()
def fake_foolbox(tmp_path, monkeypatch, isolated):
    wheel, pixels = _fake_wheel(tmp_path)
    data = wheel.read_bytes()
    found = wheels.members(data, samples.PREFIX, "fake")
    monkeypatch.setattr(samples, "WHEEL_SHA256", wheels.sha256_bytes(data))
    monkeypatch.setattr(samples, "MANIFEST_SHA256", {
        p: samples.manifest([(n, b) for n, b in found.items() if n.startswith(p + "_")]) for p in ("cifar10", "cifar100", "imagenet")})
    fetched: list[Path] = []

    def fake_fetch(dest: Path) -> Path:
        fetched.append(dest)
        return wheel

    monkeypatch.setattr(samples, "fetch_wheel", fake_fetch)
    return fetched, pixels, isolated


def test_sample_sets_come_from_the_wheel_with_labels_from_the_file_names(fake_foolbox):
    fetched, pixels, cache = fake_foolbox
    d = rl.data.load("cifar10-sample", "test")
    assert len(fetched) == 1 and "foolbox==3.3.4" in d.source
    assert d.shape == (3, 32, 32) and len(d) == 20 and d.split == "test" and d.classes[3] == "cat"
    assert d.labels.tolist() == _LABELS["cifar10"]
    want = torch.from_numpy(pixels["cifar10_05"].astype(np.float32) / 255).permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
    assert torch.equal(d.images[5], want)
    c100 = rl.data.load("cifar100_sample", "train", download=False)  # from the cache now; a train request gets the test images
    assert len(fetched) == 1 and c100.split == "test" and c100.num_classes == 100 and c100.classes[5] == "bed"
    assert c100.labels.tolist() == _LABELS["cifar100"] and c100.mean == (0.5071, 0.4865, 0.4409)
    assert sorted(p.name for p in (cache / samples.FOLDER).iterdir() if p.suffix == ".png")[0] == "cifar100_00_0.png"
    assert not any(p.name.startswith("mnist") for p in (cache / samples.FOLDER).iterdir())


def test_imagenet_sample_is_the_standard_resize_and_centre_crop(fake_foolbox):
    small = rl.data.load("imagenet-sample", download=True)
    big = rl.data.load("imagenet-sample-512", download=False)
    assert small.shape == (3, 224, 224) and big.shape == (3, 512, 512) and len(small) == len(big) == 20
    assert small.labels.tolist() == big.labels.tolist() == _LABELS["imagenet"]
    assert small.classes[243] == "bull mastiff" and small.mean == (0.485, 0.456, 0.406)
    # The red channel is a horizontal ramp: a centre crop of 224 out of 256 keeps columns 16..239 of 256,
    # so it spans about 16/255 .. 239/255, symmetric around the middle.
    red = small.images[0, 0, 112]
    assert abs(float(red[0]) - 16 / 255) < 0.03 and abs(float(red[-1]) - 239 / 255) < 0.03
    # The 1024x683 image: shorter side -> 512, centre crop: the full height, the middle 512 of 767 columns.
    green = big.images[10, 1, :, 256]
    assert float(green[0]) < 0.03 and float(green[-1]) > 0.97
    red_big = big.images[10, 0, 256]
    assert abs(float(red_big[0]) - 128 / 767) < 0.03 and abs(float(red_big[-1]) - 639 / 767) < 0.03


def test_a_changed_file_or_wheel_is_refused(fake_foolbox, tmp_path, monkeypatch):
    fetched, _, cache = fake_foolbox
    rl.data.fetch("imagenet-sample")
    victim = cache / samples.FOLDER / "cifar10_00_3.png"
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    with pytest.raises(FileNotFoundError, match="foolbox sample images were not found"):
        rl.data.load("cifar10-sample", download=False)
    monkeypatch.setattr(samples, "WHEEL_SHA256", "0" * 64)
    with pytest.raises(FileNotFoundError, match="SHA-256 .* expected 0{64}"):
        rl.data.load("cifar10-sample", download=True)


def test_sample_files_in_a_given_root_are_read_without_download(fake_foolbox, tmp_path):
    fetched, _, cache = fake_foolbox
    rl.data.fetch("cifar10-sample")
    root = tmp_path / "mine"
    (root / samples.FOLDER).mkdir(parents=True)
    for f in (cache / samples.FOLDER).iterdir():
        (root / samples.FOLDER / f.name).write_bytes(f.read_bytes())
    (root / samples.FOLDER / samples.SOURCE_NOTE).unlink()
    d = rl.data.load("cifar10-sample", root=root, download=False)
    assert str(root) in d.source and "placed there by hand" in d.source and len(fetched) == 1
    assert rl.data.available(root)["imagenet-sample"] == str(root / samples.FOLDER)


def test_without_the_files_and_without_download_the_error_says_how_to_get_them(isolated):
    with pytest.raises(FileNotFoundError, match="robustlab data fetch cifar10-sample"):
        rl.data.load("cifar10-sample", download=False)
    assert rl.data.available()["cifar100-sample"] is None


def test_class_names():
    names = classes.imagenet_classes()
    wnids = classes.imagenet_wnids()
    assert len(names) == len(set(names)) == 1000 and list(wnids) == sorted(wnids) and len(set(wnids)) == 1000
    assert names[0] == "tench, Tinca tinca" and names[243] == "bull mastiff" and names[609] == "jeep, landrover"
    assert names[134] == "crane (n02012849)" and names[517] == "crane (n03126707)"  # the one repeated synset name
    assert len(classes.CIFAR100_FINE) == len(set(classes.CIFAR100_FINE)) == 100
    assert list(classes.CIFAR100_FINE) == sorted(classes.CIFAR100_FINE) and len(classes.CIFAR100_COARSE) == 20
    assert rl.data.spec("imagenet-sample").classes == names and rl.data.spec("cifar100-sample").num_classes == 100


_cached, _ = samples.find_local()


@pytest.mark.skipif(_cached is None, reason="the foolbox sample images are not in the user cache")
def test_real_foolbox_samples(monkeypatch):
    monkeypatch.delenv("ROBUSTLAB_DATA", raising=False)
    c10 = rl.data.load("cifar10-sample", download=False)
    assert c10.labels.tolist() == _LABELS["cifar10"]  # the CIFAR-10 test set's first 20 labels
    net = rl.data.load("imagenet-sample", download=False)
    assert net.labels.tolist() == _LABELS["imagenet"] and net.shape == (3, 224, 224)
    assert 0.2 < float(net.images.mean()) < 0.8 and float(net.images.std()) > 0.1
    assert rl.data.load("imagenet-sample-512", download=False).shape == (3, 512, 512)
