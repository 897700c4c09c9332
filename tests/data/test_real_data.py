"""The real datasets, where this machine has them (skipped otherwise; never downloads)."""

from __future__ import annotations

import pytest
import torch

import robustlab as rl
from robustlab.data import sources

_debian = sources.debian_fashion_mnist()
_mnist_cache = sources.cache_dir() / "mnist"


@pytest.mark.skipif(_debian is None, reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path))  # make sure the Debian files are what is read
    monkeypatch.delenv("ROBUSTLAB_DATA", raising=False)
    assert all(sources.sha256_file(_debian / f) == h for f, h in sources.SHA256["fashion-mnist"].items())
    d = rl.data.load("fashion-mnist", "test", download=False)
    assert "Debian package" in d.source and len(d) == 10000 and d.shape == (1, 28, 28)
    assert torch.bincount(d.labels).tolist() == [1000] * 10 and d.classes[9] == "Ankle boot"
    assert d.labels[:5].tolist() == [9, 2, 1, 1, 6]  # the official test set's first labels
    train = rl.data.load("fashion-mnist", "train", download=False)
    assert len(train) == 60000
    assert float(train.images.mean()) == pytest.approx(d.mean[0], abs=1e-4)
    assert float(train.images.std()) == pytest.approx(d.std[0], abs=1e-4)


@pytest.mark.skipif(not sources.complete("mnist", _mnist_cache), reason="MNIST not in the user cache")
def test_real_mnist_from_cache(monkeypatch):
    monkeypatch.delenv("ROBUSTLAB_DATA", raising=False)
    d = rl.data.load("mnist", "test", download=False)
    assert len(d) == 10000 and d.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(d.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    train = rl.data.load("mnist", "train", download=False)
    assert len(train) == 60000 and train.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert float(train.images.mean()) == pytest.approx(0.1307, abs=1e-4)
    assert float(train.images.std()) == pytest.approx(0.3081, abs=1e-4)
