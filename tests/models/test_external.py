"""Bring your own model: factories (module path or file), weights (safetensors, weights-only state
dicts), TorchScript, ONNX's clear error; strict errors that name the problem; pickles refused."""

from __future__ import annotations

import pickle
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import robustlab as rl
from robustlab.models.external import from_factory, load_external, read_weights

NET_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, num_classes=10, width=8):
            super().__init__()
            self.conv = nn.Conv2d(1, width, 3, padding=1)
            self.fc = nn.Linear(width * 8 * 8, num_classes)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    def build(num_classes=10, width=8):
        return Net(num_classes, width)

    def not_a_model():
        return "a string"

    instance = Net()
''')


@pytest.fixture()
def user_file(tmp_path):
    f = tmp_path / "user_models.py"
    f.write_text(NET_SOURCE)
    return f


@pytest.fixture()
def reference(user_file):
    """A network built with the user's own code, and its state dict (the weights 'trained elsewhere')."""
    namespace: dict = {}
    exec(compile(NET_SOURCE, str(user_file), "exec"), namespace)
    torch.manual_seed(0)
    net = namespace["build"]().eval()
    return net, {k: v.clone() for k, v in net.state_dict().items()}


def test_factory_from_a_file_with_torch_save_weights_computes_the_same_logits(user_file, reference, tmp_path, digits_test):
    net, state = reference
    torch.save(state, tmp_path / "w.pt")
    model = from_factory(f"{user_file}:build", weights=tmp_path / "w.pt")
    x = digits_test.images[:16]
    assert not model.training
    torch.testing.assert_close(model(x), net(x), rtol=0, atol=0)
    assert model.metadata["source"] == "factory" and len(model.metadata["weights_sha256"]) == 64


def test_factory_from_a_module_path_with_safetensors_weights(user_file, reference, tmp_path, monkeypatch, digits_test):
    net, state = reference
    save_file(state, str(tmp_path / "w.safetensors"))
    monkeypatch.syspath_prepend(str(user_file.parent))
    model = load_external("user_models:build", weights=tmp_path / "w.safetensors", kwargs={"width": 8})
    x = digits_test.images[:8]
    torch.testing.assert_close(model(x), net(x), rtol=0, atol=0)


def test_mean_std_wrap_the_network_in_normalize(user_file, reference, tmp_path, digits_test):
    net, state = reference
    torch.save(state, tmp_path / "w.pt")
    model = from_factory(f"{user_file}:build", weights=tmp_path / "w.pt", mean=[0.3], std=[0.4])
    assert isinstance(model, rl.models.Normalize)
    x = digits_test.images[:8]
    torch.testing.assert_close(model(x), net((x - 0.3) / 0.4))
    assert model.metadata["normalization"]["mean"] == [0.3]


def test_data_parallel_prefix_and_checkpoint_layout_are_unwrapped(user_file, reference, tmp_path, digits_test):
    net, state = reference
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ckpt.pt")
    model = from_factory(f"{user_file}:build", weights=tmp_path / "ckpt.pt")
    torch.testing.assert_close(model(digits_test.images[:4]), net(digits_test.images[:4]), rtol=0, atol=0)


def test_weights_that_do_not_match_name_the_missing_and_unexpected_keys(user_file, reference, tmp_path):
    _, state = reference
    bad = {("head.weight" if k == "fc.weight" else k): v for k, v in state.items()}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"1 missing tensors \['fc.weight'\], 1 unexpected \['head.weight'\]"):
        from_factory(f"{user_file}:build", weights=tmp_path / "bad.pt")
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"wrong shape: fc.weight"):
        from_factory(f"{user_file}:build", weights=tmp_path / "w.pt", kwargs={"num_classes": 5})


def test_pickled_objects_are_refused_and_nothing_runs(user_file, tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"fc.weight": Boom()}))
    with pytest.raises(ValueError, match="refuses to unpickle"):
        from_factory(f"{user_file}:build", weights=tmp_path / "evil.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")  # a whole pickled module, not a state dict
    with pytest.raises(ValueError, match="refuses to unpickle"):
        read_weights(tmp_path / "module.pt")
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        load_external(tmp_path / "module.pt")


@pytest.mark.parametrize(
    "attr, error, message",
    [
        ("missing", ValueError, "has no attribute 'missing'"),
        ("not_a_model", TypeError, "returned a str; expected a torch.nn.Module"),
    ],
)
def test_factory_errors_name_the_problem(user_file, attr, error, message):
    with pytest.raises(error, match=message):
        from_factory(f"{user_file}:{attr}")


def test_factory_spec_errors(user_file, tmp_path):
    with pytest.raises(ValueError, match="no module named 'no_such_package'"):
        load_external("no_such_package.models:build")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_factory(f"{tmp_path / 'nope.py'}:build")
    with pytest.raises(ValueError, match="is an nn.Module instance; it takes no arguments"):
        from_factory(f"{user_file}:instance", kwargs={"width": 4})
    with pytest.raises(ValueError, match="mean and std go together"):
        from_factory(f"{user_file}:build", mean=[0.5])
    with pytest.raises(ValueError, match="cannot be called with arguments"):
        from_factory(f"{user_file}:build", kwargs={"depth": 3})


def test_torchscript_file_loads_and_attacks_like_the_original(reference, tmp_path, digits_test):
    net, _ = reference
    torch.jit.save(torch.jit.script(net), str(tmp_path / "net.pt"))
    model = load_external(tmp_path / "net.pt")
    x, y = digits_test.images[:8], digits_test.labels[:8]
    torch.testing.assert_close(model(x), net(x))
    attack = rl.attacks.PGD(rl.ThreatModel("linf", 0.1), steps=5, seed=0)
    a, b = attack.attack(model, x, y), attack.attack(net, x, y)
    torch.testing.assert_close(a.x_adv, b.x_adv)
    assert torch.equal(a.success, b.success)


def test_onnx_without_the_onnx_package_says_how_to_install_it(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx":
            raise ImportError("No module named 'onnx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(ImportError, match=r"robustlab\[onnx\]"):
        load_external(tmp_path / "m.onnx")


def test_onnx_file_that_is_no_network_is_a_clear_error(tmp_path):
    pytest.importorskip("onnx")
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")  # a valid but empty ModelProto
    with pytest.raises(ValueError, match="operator set|inputs"):
        load_external(tmp_path / "m.onnx")


def test_saved_robustlab_models_still_load_through_load_external(tmp_path):
    model = rl.models.create("mlp", dataset="digits", seed=0)
    rl.models.save(model, tmp_path / "m")
    loaded = load_external(tmp_path / "m")
    assert loaded.metadata["format"] == "robustlab-model"
    with pytest.raises(ValueError, match="--weights applies to a factory"):
        load_external(tmp_path / "m", weights=tmp_path / "m")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="holds weights only"):
        load_external(tmp_path / "plain.safetensors")
