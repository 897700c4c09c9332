"""Where data comes from: root, cache, offline sources, verified downloads (from a local server)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

import robustlab as rl
from robustlab.data import sources


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("ROBUSTLAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert sources.cache_dir() == tmp_path / "xdg" / "robustlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sources.cache_dir() == tmp_path / "home" / ".cache" / "robustlab"
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "mine"))
    assert sources.cache_dir() == tmp_path / "mine"


def test_root_then_env_then_cache(tmp_path, monkeypatch, isolated, fake_idx):
    fake_idx(tmp_path / "mine" / "fashion-mnist", n_test=5)
    fake_idx(tmp_path / "flat", n_test=4)  # root may also be the dataset folder itself
    fake_idx(isolated / "fashion-mnist", n_test=3)
    d = rl.data.load("fashion_mnist", "test", root=tmp_path / "mine", download=False)
    assert len(d) == 5 and "given root" in d.source and d.name == "fashion-mnist"
    assert len(rl.data.load("fmnist", "test", root=tmp_path / "flat", download=False)) == 4
    monkeypatch.setenv("ROBUSTLAB_DATA", str(tmp_path / "mine"))
    assert len(rl.data.load("fashion-mnist", "test", download=False)) == 5
    monkeypatch.delenv("ROBUSTLAB_DATA")
    d = rl.data.load("fashion-mnist", "test", download=False)
    assert len(d) == 3 and "user cache" in d.source
    # A root without the data falls through to the cache.
    assert len(rl.data.load("fashion-mnist", "test", root=tmp_path / "empty", download=False)) == 3


def test_debian_fashion_mnist_is_found(tmp_path, monkeypatch, isolated, fake_idx):
    fake_idx(tmp_path / "usr-share" / "fashion-mnist")
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "usr-share" / "fashion-mnist")
    d = rl.data.load("fashion-mnist", "train", download=False)
    assert len(d) == 12 and "Debian package dataset-fashion-mnist" in d.source
    # ... or wherever dpkg -L says the package put its files.
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "elsewhere")
    monkeypatch.setattr(sources, "_dpkg_fashion_mnist", lambda: tmp_path / "usr-share" / "fashion-mnist")
    assert len(rl.data.load("fashion-mnist", "train", download=False)) == 12


def test_missing_data_error_says_where_it_looked_and_how_to_get_it(tmp_path, isolated):
    with pytest.raises(FileNotFoundError) as info:
        rl.data.load("cifar10", "test", root=tmp_path / "empty", download=False)
    msg = str(info.value)
    assert "dataset 'cifar10' not found; looked in:" in msg
    assert str(tmp_path / "empty" / "cifar10") in msg and str(isolated / "cifar10") in msg
    assert "robustlab data fetch cifar10" in msg and "cifar-10-binary.tar.gz" in msg and "ROBUSTLAB_DATA" in msg
    with pytest.raises(FileNotFoundError, match="Debian package dataset-fashion-mnist.*apt install dataset-fashion-mnist"):
        rl.data.load("fashion-mnist", download=False)
    # With downloads allowed but no network, the error also lists the failed attempts.
    with pytest.raises(FileNotFoundError, match=r"Tried: could not download cifar-10-binary.tar.gz: http://127.0.0.1:9/"):
        rl.data.load("cifar10", "test")


def test_download_from_a_local_server_verifies_sha256(tmp_path, monkeypatch, isolated, local_server, fake_idx):
    served, url = local_server
    arrays = fake_idx(served)
    hashes = {f: _sha(served / f) for f in sources.files_for("fashion-mnist")}
    loc = sources.locate("fashion-mnist", mirrors=["http://127.0.0.1:9/", url], hashes=hashes)
    assert "downloaded from" in loc.source and url in loc.source and loc.folder == isolated / "fashion-mnist"
    assert all((loc.folder / f).read_bytes() == (served / f).read_bytes() for f in hashes)
    assert not [p for p in loc.folder.iterdir() if p.name.startswith(".")]  # no temporaries left
    d = rl.data.load("fashion-mnist", "test", download=False)  # now from the cache
    assert len(d) == 5 and "downloaded from" in d.source
    assert np.array_equal((d.images[:, 0] * 255).round().numpy(), arrays["t10k-images-idx3-ubyte.gz"])


def test_download_hash_mismatch_leaves_nothing_behind(tmp_path, monkeypatch, isolated, local_server, fake_idx):
    served, url = local_server
    fake_idx(served)
    hashes = {f: _sha(served / f) for f in sources.files_for("mnist")}
    hashes["t10k-images-idx3-ubyte.gz"] = "0" * 64
    with pytest.raises(ValueError, match=r"download of t10k-images-idx3-ubyte.gz failed verification: .*expected 0{64}"):
        sources.locate("mnist", mirrors=[url], hashes=hashes)
    left = sorted(p.name for p in (isolated / "mnist").iterdir())
    assert "t10k-images-idx3-ubyte.gz" not in left and not any(n.endswith(".part") for n in left)
    assert not sources.complete("mnist", isolated / "mnist")
    # The default constants are the official ones: the synthetic files fail them.
    monkeypatch.setattr(sources, "MIRRORS", {**sources.MIRRORS, "fashion-mnist": (url,)})
    with pytest.raises(ValueError, match="failed verification"):
        rl.data.load("fashion-mnist", "test")


def test_mirror_environment_variable_is_tried_first(tmp_path, monkeypatch, isolated, local_server, fake_idx):
    served, url = local_server
    fake_idx(served / "mnist", n_test=7)
    hashes = {f: _sha(served / "mnist" / f) for f in sources.files_for("mnist")}
    monkeypatch.setenv(sources.MIRROR_ENV, url)
    assert sources.mirror_urls("mnist", "x.gz")[0] == url + "mnist/x.gz"
    loc = sources.locate("mnist", hashes=hashes)  # the wheel "fails" (no network), the mirror answers
    assert url in loc.source
    assert len(rl.data.load("mnist", "test", download=False)) == 7


def test_fetch_copies_into_the_cache_and_names_the_source(tmp_path, isolated, fake_idx):
    fake_idx(tmp_path / "mine" / "fashion-mnist")
    info = rl.data.fetch("fashion-mnist", root=tmp_path / "mine", download=False)
    assert info.path == isolated / "fashion-mnist" and info.name == "fashion-mnist"
    assert "copied from" in info.source and "not the official files" in info.source
    assert sources.complete("fashion-mnist", info.path)
    d = rl.data.load("fashion-mnist", "train", download=False)
    assert len(d) == 12 and "user cache" in d.source and "copied from" in d.source
    again = rl.data.fetch("fashion-mnist", download=False)  # already there: nothing to do
    assert again.path == info.path and "user cache" in again.source
    digits = rl.data.fetch("digits")
    assert digits.path.name == "digits.npz" and digits.path.is_file() and "embedded" in digits.source


def test_fetch_copies_extracted_cifar(tmp_path, isolated):
    from robustlab.data import cifar

    folder = tmp_path / "mine" / "cifar10" / cifar.ARCHIVE_DIR
    folder.mkdir(parents=True)
    rec = np.zeros((2, cifar.RECORD), dtype=np.uint8)
    for name in cifar.TRAIN_FILES + cifar.TEST_FILES:
        (folder / name).write_bytes(rec.tobytes())
    info = rl.data.fetch("cifar10", root=tmp_path / "mine", download=False)
    assert (info.path / cifar.ARCHIVE_DIR / "test_batch.bin").is_file()
    assert len(rl.data.load("cifar10", "train", download=False)) == 10


def test_available_reports_without_fetching(tmp_path, isolated, fake_idx):
    fake_idx(tmp_path / "mnist")
    where = rl.data.available(root=tmp_path)
    assert set(where) == {"digits", "mnist", "fashion-mnist", "cifar10", "cifar10-sample", "cifar100-sample",
                          "imagenet-sample", "imagenet-sample-512"}
    assert "embedded" in where["digits"] and "given root" in where["mnist"]
    assert where["fashion-mnist"] is None and where["cifar10"] is None and where["imagenet-sample"] is None
    assert not os.path.exists(isolated)  # nothing written
