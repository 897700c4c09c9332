"""Bad input at the command line: every fault is one line naming the argument, its value and what was
expected, exit status 2, no traceback; output paths are checked before any work is spent."""

from __future__ import annotations

import errno
import os

import pytest

import robustlab as rl
from robustlab.cli import main


@pytest.fixture(scope="module")
def saved_mlp(tmp_path_factory):
    """An (untrained) digits mlp saved as a robustlab model: the faults never need a good model."""
    path = tmp_path_factory.mktemp("models") / "mlp"
    rl.models.save(rl.models.create("mlp", dataset="digits", seed=0), path, metadata={"dataset": "digits"})
    return path


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize(
    "toml, needles",
    [
        ('eps = "0.1"', ("eps must be a number or a list of numbers", "'0.1' (a string)")),
        ("eps = [0.1, \"0.3\"]", ("eps[1] must be a number", "'0.3'")),
        ('attacks = "pgd"', ("attacks must be a list of names", 'attacks = ["pgd"]')),
        ('[checks]\nn = "100"', ("checks.n must be an integer", "'100' (a string)")),
        ("[checks]\nenabled = 1", ("checks.enabled must be true or false", "1 (int)")),
        ('[[certifier]]\nmethod = "smoothing"\nsigma = "0.25"', ("certifier smoothing sigma must be a number", "'0.25'")),
        ('[[certifier]]\nmethod = "smoothing"\nn = 1e5', ("certifier smoothing n must be an integer", "100000.0")),
        ('[[threat]]\nnorm = "l2"\neps = "1.0"', ("threat 0 eps must be a number or a list of numbers", "'1.0'")),
        ('[transfer]\nsources = "runs/a"', ("transfer.sources must be a list of names", "'runs/a'")),
        ("[attack_options]\npgd = 3", ("attack_options.pgd must be a table",)),
        ("eps = [0.1, 0.2", ("is not valid TOML",)),
    ],
)
def test_suite_file_value_types(saved_mlp, tmp_path, capsys, toml, needles):
    suite = tmp_path / "s.toml"
    suite.write_text(toml + "\n")
    assert main(["evaluate", "--model", str(saved_mlp), "--suite", str(suite), "--out", str(tmp_path / "ev"),
                 "--no-progress"]) == 2
    one_line_error(capsys, f"suite file {suite}", *needles)
    assert not (tmp_path / "ev" / "records").exists()


def test_suite_type_errors_in_the_api():
    from robustlab.evaluate.suite import Suite

    with pytest.raises(TypeError, match="eps must be a number or a list of numbers"):
        Suite.from_dict({"eps": "0.3"})
    assert Suite.from_dict({"eps": 0.3}).threats[0].eps == (0.3,)  # a lone number is a one-point grid


@pytest.mark.parametrize(
    "device, needles",
    [
        ("gpu0", ("--device 'gpu0' is not a device name", "expected cpu, cuda")),
        ("cuda:7", ("--device 'cuda:7'",)),
        ("meta", ("--device 'meta'", "robustlab runs on cpu, cuda or mps")),
    ],
)
@pytest.mark.parametrize("command", ["evaluate", "attack", "certify"])
def test_absent_or_malformed_device(saved_mlp, tmp_path, capsys, device, needles, command):
    extra = {"evaluate": ["--out", str(tmp_path / "ev")],
             "attack": ["--attack", "fgsm", "--eps", "0.1", "--out", str(tmp_path / "a.safetensors")],
             "certify": ["--sigma", "0.25", "--out", str(tmp_path / "c.json")]}[command]
    assert main([command, "--model", str(saved_mlp), "--device", device, *extra]) == 2
    one_line_error(capsys, *needles)


def test_device_flag_without_a_value_is_an_argparse_error(saved_mlp, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--model", str(saved_mlp), "--device"])
    assert exit_.value.code == 2
    assert "argument --device: expected one argument" in capsys.readouterr().err


def test_option_of_the_wrong_type_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--dataset", "digits", "--arch", "mlp", "--out", "x", "--adversary", "pgd", "--eps", "0.1",
              "--steps", "abc"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --steps: must be an integer, got 'abc'" in err and "Traceback" not in err


def test_attack_option_of_the_wrong_type(saved_mlp, tmp_path, capsys):
    assert main(["attack", "--model", str(saved_mlp), "--attack", "pgd", "--eps", "0.1", "-o", "steps=abc",
                 "--out", str(tmp_path / "a.safetensors")]) == 2
    one_line_error(capsys, "-o steps='abc'", "steps must be an integer")


def _never(*args, **kwargs):
    raise AssertionError("work was started before the output path was checked")


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["evaluate", "--out", "{file}"], ("--out", "is an existing file; expected a folder")),
        (["attack", "--attack", "fgsm", "--eps", "0.1", "--out", "{dir}"], ("is a folder; expected a file name",)),
        (["attack", "--attack", "fgsm", "--eps", "0.1", "--out", "{file}/a.safetensors"], ("is a file, not a folder",)),
        (["certify", "--sigma", "0.25", "--out", "{dir}"], ("--out", "is a folder; expected a file name")),
        (["certify", "--sigma", "0.25", "--out", "{file}/c.json"], ("is a file, not a folder",)),
    ],
)
def test_bad_out_fails_before_any_work(saved_mlp, tmp_path, capsys, monkeypatch, argv, needles):
    (tmp_path / "taken").write_text("a file")
    (tmp_path / "folder").mkdir()
    argv = [a.format(file=tmp_path / "taken", dir=tmp_path / "folder") for a in argv]
    import robustlab.data

    monkeypatch.setattr(robustlab.data, "load", _never)  # no data is read, so no attack or sampling runs
    assert main([argv[0], "--model", str(saved_mlp), *argv[1:]]) == 2
    one_line_error(capsys, *needles)


def test_train_checks_out_before_reading_data_or_training(tmp_path, capsys, monkeypatch):
    (tmp_path / "taken").write_text("a file")
    import robustlab.data

    monkeypatch.setattr(robustlab.data, "load", _never)
    assert main(["train", "--dataset", "digits", "--arch", "mlp", "--out", str(tmp_path / "taken")]) == 2
    one_line_error(capsys, f"--out {tmp_path / 'taken'} is an existing file")
    assert main(["train", "--dataset", "digits", "--arch", "mlp", "--out", str(tmp_path / "taken" / "m")]) == 2
    one_line_error(capsys, "is a file, not a folder")


def test_full_disk_is_one_line(saved_mlp, tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # every atomic write fails as on a full disk
    assert main(["attack", "--model", str(saved_mlp), "--attack", "fgsm", "--eps", "0.1", "--n", "4",
                 "--out", str(tmp_path / "a.safetensors"), "--no-progress"]) == 2
    one_line_error(capsys, "no space left on the device", "choose another --out")
    assert not (tmp_path / "a.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no half-written temporaries


def test_model_and_data_mismatch_is_named_before_any_attack(saved_mlp, tmp_path, capsys, monkeypatch):
    import robustlab.attacks.base

    monkeypatch.setattr(robustlab.attacks.base.Attack, "attack", _never)
    import numpy as np

    np.savez(tmp_path / "rgb.npz", images=np.zeros((3, 8, 8, 3), np.uint8), labels=np.array([0, 1, 2]))
    assert main(["attack", "--model", str(saved_mlp), "--attack", "fgsm", "--eps", "0.1",
                 "--dataset", str(tmp_path / "rgb.npz"), "--out", str(tmp_path / "a.safetensors")]) == 2
    one_line_error(capsys, "shape (3, 8, 8) (C, H, W)", "built for (1, 8, 8)")
    np.savez(tmp_path / "many.npz", images=np.zeros((2, 8, 8), np.uint8), labels=np.array([0, 12]))
    assert main(["evaluate", "--model", str(saved_mlp), "--dataset", str(tmp_path / "many.npz"),
                 "--out", str(tmp_path / "ev")]) == 2
    one_line_error(capsys, "has label 12 but the model outputs 10 logits")


def test_traceback_is_available_for_bug_reports(saved_mlp, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_TRACEBACK", "1")
    with pytest.raises(ValueError, match="is not a device name"):
        main(["evaluate", "--model", str(saved_mlp), "--device", "gpu0", "--out", str(tmp_path / "ev")])


@pytest.mark.parametrize("argv", [["demo", "--quick", "--out", "{file}"], ["report", "{file}", "--out", "{file}"],
                                  ["compare", "{file}", "{file}", "--out", "{file}"]])
def test_folder_outputs_of_demo_report_and_compare(tmp_path, capsys, monkeypatch, argv):
    (tmp_path / "taken").write_text("a file")
    import robustlab.data

    monkeypatch.setattr(robustlab.data, "load", _never)
    assert main([a.format(file=tmp_path / "taken") for a in argv]) == 2
    one_line_error(capsys, f"--out {tmp_path / 'taken'} is an existing file; expected a folder")
