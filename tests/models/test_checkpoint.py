"""Model files: safetensors + JSON, atomic, hashed; pickles refused; every problem names the file."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import robustlab as rl


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture()
def resnet():
    m = rl.models.create("resnet18", "cifar10", seed=0)
    with torch.no_grad():
        m.train()(torch.rand(4, 3, 32, 32))  # move BatchNorm statistics away from their defaults
    return m.eval()


def test_directory_round_trip(resnet, tmp_path):
    path = rl.models.save(resnet, tmp_path / "r", {"metrics": {"accuracy": 0.5}})
    assert sorted(p.name for p in path.iterdir()) == ["metadata.json", "model.safetensors"]  # no temporary files
    loaded = rl.models.load(path)
    x = torch.rand(2, 3, 32, 32)
    assert _same_weights(resnet, loaded) and torch.equal(resnet(x), loaded(x))
    assert not loaded.training
    meta = loaded.metadata
    assert meta["dataset"] == "cifar10" and meta["metrics"]["accuracy"] == 0.5
    assert meta["architecture"]["name"] == "resnet18" and meta["normalization"]["std"] == list(rl.data.spec("cifar10").std)
    assert meta["torch_version"] == torch.__version__ and meta["robustlab_version"] == rl.__version__ and meta["created"]
    assert meta["weights_sha256"] == hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert rl.models.load_metadata(path) == meta


def test_single_file_round_trip(resnet, tmp_path):
    file = rl.models.save(resnet, tmp_path / "single.safetensors", {"note": "hi"})
    loaded = rl.models.load(file)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(x), resnet(x)) and loaded.metadata["note"] == "hi"
    assert len(loaded.metadata["data_sha256"]) == 64 and list(tmp_path.iterdir()) == [file]


def test_any_module_saves_and_loads_into_a_user_model(tmp_path):
    torch.manual_seed(0)
    mine = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 3))
    rl.models.save(mine, tmp_path / "mine", {"architecture": {"name": "my-net"}})
    with pytest.raises(ValueError, match=r"names no architecture robustlab can rebuild \('my-net'.*load_state_dict_into"):
        rl.models.load(tmp_path / "mine")
    fresh = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 3))
    rl.models.load_state_dict_into(fresh, tmp_path / "mine")
    assert _same_weights(fresh, mine)
    # A plain safetensors file (no robustlab metadata) also loads into a user model.
    save_file({k: v.contiguous() for k, v in mine.state_dict().items()}, str(tmp_path / "plain.safetensors"))
    other = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 3))
    rl.models.load_state_dict_into(other, tmp_path / "plain.safetensors")
    assert _same_weights(other, mine)
    with pytest.raises(ValueError, match="has no robustlab metadata"):
        rl.models.load(tmp_path / "plain.safetensors")


def test_registered_user_architecture_round_trips(tmp_path):
    from robustlab.models.registry import ARCHITECTURES

    rl.models.register_architecture("tiny-ckpt-net", lambda c, k, hw: nn.Sequential(nn.Flatten(), nn.Linear(c * hw[0] * hw[1], k)))
    try:
        m = rl.models.create("tiny-ckpt-net", "digits", seed=1)
        loaded = rl.models.load(rl.models.save(m, tmp_path / "t"))
        assert _same_weights(m, loaded)
    finally:
        ARCHITECTURES.pop("tiny-ckpt-net", None)


def test_pickles_are_refused(tmp_path):
    m = rl.models.create("mlp", "digits", seed=0)
    torch.save(m.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="only reads safetensors.*import_state_dict"):
        rl.models.load(tmp_path / "weights.pt")
    # Content, not only the name: a torch.save zip and a raw pickle renamed to .safetensors.
    (tmp_path / "disguised.safetensors").write_bytes((tmp_path / "weights.pt").read_bytes())
    with pytest.raises(ValueError, match="pickle"):
        rl.models.load(tmp_path / "disguised.safetensors")
    torch.save(m.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert (tmp_path / "legacy.pt").read_bytes()[:1] == b"\x80"
    (tmp_path / "raw.safetensors").write_bytes((tmp_path / "legacy.pt").read_bytes())
    with pytest.raises(ValueError, match="pickle"):
        rl.models.load(tmp_path / "raw.safetensors")
    d = rl.models.save(m, tmp_path / "dir")
    (d / "model.safetensors").write_bytes((tmp_path / "legacy.pt").read_bytes())
    with pytest.raises(ValueError, match="pickle"):
        rl.models.load(d)
    with pytest.raises(ValueError, match="refusing to write"):
        rl.models.save(m, tmp_path / "out.pth")
    # A trusted state dict is imported with weights_only=True.
    fresh = rl.models.create("mlp", "digits", seed=1)
    rl.models.import_state_dict(fresh, tmp_path / "weights.pt")
    assert _same_weights(fresh, m)


def test_a_header_length_ending_in_0x80_is_not_a_pickle(tmp_path):
    """Regression: a safetensors file starts with its header length, whose low byte can be 0x80."""
    m = rl.models.create("mlp", "digits", seed=0)
    for pad in range(300):
        file = rl.models.save(m, tmp_path / "m.safetensors", {"pad": "x" * pad})
        if file.read_bytes()[:1] == b"\x80":
            break
    assert file.read_bytes()[:1] == b"\x80"
    assert _same_weights(rl.models.load(file), m)


def test_corrupt_files_and_hash_mismatches_are_named(tmp_path):
    m = rl.models.create("mlp", "digits", seed=0)
    path = rl.models.save(m, tmp_path / "m")
    weights = path / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"model.safetensors has SHA-256 .* records"):
        rl.models.load(path)
    # Truncated file (and no recorded hash to catch it first).
    weights.write_bytes(bytes(blob[: len(blob) // 2]))
    meta = json.loads((path / "metadata.json").read_text())
    meta.pop("weights_sha256")
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="model.safetensors is not a valid safetensors file"):
        rl.models.load(path)
    (path / "metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match="metadata.json is not valid JSON"):
        rl.models.load(path)
    (path / "metadata.json").unlink()
    with pytest.raises(ValueError, match="has no metadata.json"):
        rl.models.load(path)
    with pytest.raises(FileNotFoundError, match="no model at"):
        rl.models.load(tmp_path / "nothing-here")
    # Single file: the tensor data is hashed in the header.
    single = rl.models.save(m, tmp_path / "s.safetensors")
    raw = bytearray(single.read_bytes())
    raw[-1] ^= 0xFF
    single.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"s.safetensors: the tensor data has SHA-256"):
        rl.models.load(single)


def test_architecture_mismatches_are_named(tmp_path):
    other = rl.models.save(rl.models.create("mlp", "mnist", seed=0), tmp_path / "other")
    meta = json.loads((other / "metadata.json").read_text())
    meta["architecture"]["input_size"] = [8, 8]
    (other / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"other/model.safetensors has 1 tensors of the wrong shape: net.1.weight"):
        rl.models.load(other)
    small = rl.models.create("small-cnn", "digits", seed=0)
    with pytest.raises(ValueError, match=r"does not match the model: 2 missing tensors"):
        rl.models.load_state_dict_into(small, {k: v for k, v in small.state_dict().items() if not k.startswith("net.3.")})
    # strict=False tolerates missing names but never wrong shapes.
    rl.models.load_state_dict_into(small, {"mean": torch.zeros(1, 1, 1, 1)}, strict=False)
    assert float(small.mean) == 0.0
    with pytest.raises(ValueError, match="wrong shape"):
        rl.models.load_state_dict_into(small, {"mean": torch.zeros(3)}, strict=False)


def test_load_to_a_device_and_metadata_must_be_json(tmp_path):
    m = rl.models.create("mlp", "digits", seed=0)
    loaded = rl.models.load(rl.models.save(m, tmp_path / "m"), map_location=torch.device("cpu"))
    assert next(loaded.parameters()).device.type == "cpu"
    with pytest.raises(TypeError, match="JSON serialisable"):
        rl.models.save(m, tmp_path / "bad", {"thing": object()})
    assert not (tmp_path / "bad" / "model.safetensors").exists()


@pytest.mark.parametrize("field, value, expected", [
    ("architecture.num_classes", "b", "an integer >= 2"),
    ("architecture.in_channels", 0, "an integer >= 1"),
    ("architecture.input_size", [8], "a list of two integers"),
    ("architecture.mean", ["x"], "a list of 1 finite number"),
    ("architecture.std", [0.0], "a list of 1 finite positive number"),
    ("architecture.name", 3, "a string"),
    ("dataset", 7, "a string"),
    ("training", "pgd", "an object"),
    ("metrics.test_accuracy", "high", "a finite number"),
    ("weights_sha256", 12, "a string"),
])
def test_every_metadata_field_of_the_wrong_type_is_named(field, value, expected, tmp_path):
    # A hand-edited metadata.json: one message naming the file, the field, the value and what was expected,
    # never "invalid literal for int()" from deep inside the code that first reads the field.
    model = rl.models.create("mlp", num_classes=10, in_channels=1, input_size=8, seed=0)
    rl.models.save(model, tmp_path / "m", metadata={"dataset": "digits"})
    path = tmp_path / "m" / "metadata.json"
    meta = json.loads(path.read_text())
    meta.setdefault("metrics", {})
    node, *rest = field.split(".")
    if rest:
        meta.setdefault(node, {})[rest[0]] = value
    else:
        meta[node] = value
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError) as err:
        rl.models.load(tmp_path / "m")
    msg = str(err.value)
    assert str(path) in msg and repr(field) in msg and expected in msg and repr(value) in msg, msg
