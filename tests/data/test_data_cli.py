"""``robustlab data fetch | info | list``."""

from __future__ import annotations

from robustlab.cli import main


def test_data_fetch_info_and_list(tmp_path, capsys, isolated, fake_idx):
    fake_idx(tmp_path / "mine" / "mnist")
    assert main(["data", "fetch", "mnist", "--root", str(tmp_path / "mine"), "--no-download"]) == 0
    out = capsys.readouterr().out
    assert f"mnist: {isolated / 'mnist'}" in out and "source: copied from" in out
    assert main(["data", "info", "mnist", "--no-download"]) == 0
    out = capsys.readouterr().out
    assert "mnist train: 12 images of shape (1, 28, 28)" in out and "mnist test: 5 images" in out
    assert "classes: 0, 1, 2" in out and "mean (0.1307,), std (0.3081,)" in out and "user cache" in out
    assert main(["data", "info", "digits"]) == 0
    assert "digits test: 360 images of shape (1, 8, 8) (C, H, W), 10 classes" in capsys.readouterr().out
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "cifar10        not on this machine" in out


def test_data_cli_errors_are_one_line(capsys, isolated):
    assert main(["data", "info", "imagenet"]) == 2
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err
    assert main(["data", "fetch", "cifar10", "--no-download"]) == 2
    err = capsys.readouterr().err
    assert "robustlab data: error: dataset 'cifar10' not found; looked in" in err and "Traceback" not in err
