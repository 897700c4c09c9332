"""robustlab.models: architectures for any input size, normalisation inside, safe checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

import robustlab as rl


@pytest.mark.parametrize("arch", ["mlp", "cnn", "small-cnn", "resnet18"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 13, 17)])
def test_every_architecture_maps_any_input_to_logits(arch, shape):
    m = rl.models.create(arch, num_classes=7, in_channels=shape[0], input_size=shape[1:], seed=0).eval()
    with torch.no_grad():
        assert m(torch.rand(2, *shape)).shape == (2, 7)


def test_madry_cnn_layout():
    net = rl.models.create("cnn", "mnist").net
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    fcs = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(32, (5, 5)), (64, (5, 5))]
    assert [f.out_features for f in fcs] == [1024, 10] and fcs[0].in_features == 7 * 7 * 64


def test_normalize_is_inside_the_model():
    m = rl.models.create("mlp", "mnist", seed=0)
    x = torch.rand(3, 1, 28, 28)
    expected = m.net((x - 0.1307) / 0.3081)
    assert torch.allclose(m(x), expected)
    assert m.mean.shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="std values must be > 0"):
        rl.models.Normalize(m.net, [0.0], [0.0])


def test_seed_makes_init_reproducible_without_touching_global_rng():
    state = torch.get_rng_state()
    a, b = rl.models.create("small-cnn", "mnist", seed=3), rl.models.create("small-cnn", "mnist", seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture 'vgg'.*mlp"):
        rl.models.create("vgg", "mnist")


def test_save_load_round_trip(tmp_path):
    m = rl.models.create("resnet18", "cifar10", seed=0)
    m.train()
    m(torch.rand(4, 3, 32, 32))  # move BatchNorm statistics away from their defaults
    m.eval()
    rl.models.save(m, tmp_path / "r", {"metrics": {"accuracy": 0.5}})
    loaded = rl.models.load(tmp_path / "r")
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(m(x), loaded(x))
    assert loaded.metadata["dataset"] == "cifar10" and loaded.metadata["metrics"]["accuracy"] == 0.5
    assert loaded.metadata["architecture"]["name"] == "resnet18" and not loaded.training
    assert not list(tmp_path.glob("r/*.tmp")) and not list(tmp_path.glob("r/.*"))
    # Single-file form carries the metadata in the safetensors header.
    rl.models.save(m, tmp_path / "single.safetensors")
    assert torch.equal(rl.models.load(tmp_path / "single.safetensors")(x), m(x))


def test_pickles_are_refused(tmp_path):
    m = rl.models.create("mlp", "digits")
    torch.save(m.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="only reads safetensors"):
        rl.models.load(tmp_path / "weights.pt")
    (tmp_path / "disguised.safetensors").write_bytes((tmp_path / "weights.pt").read_bytes())
    with pytest.raises(ValueError, match="pickle"):
        rl.models.load(tmp_path / "disguised.safetensors")
    # A trusted state dict is imported with weights_only=True.
    fresh = rl.models.create("mlp", "digits", seed=1)
    rl.models.import_state_dict(fresh, tmp_path / "weights.pt")
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(), m.parameters()))


def test_corrupt_and_mismatched_files_are_named(tmp_path):
    m = rl.models.create("mlp", "digits", seed=0)
    path = rl.models.save(m, tmp_path / "m")
    weights = path / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="model.safetensors has SHA-256"):
        rl.models.load(path)
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    meta = json.loads((path / "metadata.json").read_text())
    meta.pop("weights_sha256")
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        rl.models.load(path)
    other = rl.models.save(rl.models.create("mlp", "mnist", seed=0), tmp_path / "other")
    meta = json.loads((other / "metadata.json").read_text())
    meta["architecture"]["input_size"] = [8, 8]
    (other / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="wrong shape"):
        rl.models.load(other)
    (path / "metadata.json").unlink()
    with pytest.raises(ValueError, match="has no metadata.json"):
        rl.models.load(path)
    with pytest.raises(FileNotFoundError):
        rl.models.load(tmp_path / "nothing-here")


def test_accuracy_restores_mode(digits_test):
    m = rl.models.create("mlp", "digits", seed=0)
    m.train()
    acc = rl.models.metrics.accuracy(m, digits_test)
    assert 0.0 <= acc <= 1.0 and m.training
