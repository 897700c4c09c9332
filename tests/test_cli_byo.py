"""The README / docs/byo.md example, tiny: a torchvision-style ResNet defined in the user's own file
(docs/examples/my_resnet.py), trained elsewhere with plain PyTorch and saved with
torch.save(state_dict), evaluated by one ``robustlab evaluate`` command on an image folder."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

import robustlab as rl
from robustlab.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


@pytest.mark.slow  # about 2 CPU-minutes: training, then the quick suite with its checks
def test_user_resnet_from_a_file_on_an_image_folder_in_one_command(tmp_path, capsys):
    # The documented steps, on digits instead of MNIST and with a 4-channel-wide ResNet.
    runpy.run_path(str(EXAMPLES / "export_images.py"))["main"](
        ["digits", str(tmp_path / "png"), "--n-train", "500", "--n-test", "40"])
    runpy.run_path(str(EXAMPLES / "train_elsewhere.py"))["main"](
        [str(tmp_path / "png" / "train"), str(tmp_path / "my_resnet.pt"), "--width", "4", "--epochs", "5", "--batch-size", "32"])
    capsys.readouterr()
    factory = f"{EXAMPLES / 'my_resnet.py'}:resnet_small"
    out = tmp_path / "byo"
    assert main(["evaluate", "--model", factory, "--model-option", "in_channels=1", "--model-option", "width=4",
                 "--weights", str(tmp_path / "my_resnet.pt"), "--mean", "0.1307", "--std", "0.3081",
                 "--dataset", str(tmp_path / "png" / "test"), "--suite", "quick", "--eps", "0.05,0.2",
                 "--n", "40", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "resnet_small: clean accuracy" in printed
    report = json.loads((out / "report.json").read_text())["models"][0]

    # Exactly what the user's own code computes on the same images.
    test = rl.data.load_image_folder(tmp_path / "png" / "test")
    net = runpy.run_path(str(EXAMPLES / "my_resnet.py"))["resnet_small"](10, 1, 4)
    net.load_state_dict(torch.load(tmp_path / "my_resnet.pt", weights_only=True))
    net.eval()
    with torch.no_grad():
        pred = net((test.images - 0.1307) / 0.3081).argmax(1)
    assert report["clean"]["k"] == int((pred == test.labels).sum()) and report["clean"]["n"] == 40
    assert report["clean"]["value"] > 0.5  # it did learn the digits
    assert report["data"]["classes"] == [str(i) for i in range(10)]
    rows = report["threats"][0]["rows"]
    assert [r["eps"] for r in rows] == [0.05, 0.2]
    assert report["checks"] and report["verdict"]
    assert report["model"]["class"] == "Normalize"


def test_user_model_file_and_image_folder_plumbing(tmp_path, capsys):
    """The same command, fast: untrained weights, one attack, no checks; the CLI's clean accuracy and
    adversarial examples agree with the user's own network run by hand."""
    runpy.run_path(str(EXAMPLES / "export_images.py"))["main"](
        ["digits", str(tmp_path / "png"), "--n-train", "1", "--n-test", "40"])
    ns = runpy.run_path(str(EXAMPLES / "my_resnet.py"))
    torch.manual_seed(0)
    net = ns["resnet_small"](10, 1, 4).eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    factory = f"{EXAMPLES / 'my_resnet.py'}:resnet_small"
    common = ["--model", factory, "--model-option", "in_channels=1", "--model-option", "width=4",
              "--weights", str(tmp_path / "w.pt"), "--mean", "0.1307", "--std", "0.3081",
              "--dataset", str(tmp_path / "png" / "test"), "--no-progress"]
    assert main(["evaluate", *common, "--attack", "fgsm", "--eps", "0.1", "--no-checks", "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())["models"][0]
    test = rl.data.load_image_folder(tmp_path / "png" / "test")
    with torch.no_grad():
        pred = net((test.images - 0.1307) / 0.3081).argmax(1)
    assert report["clean"]["k"] == int((pred == test.labels).sum()) and report["clean"]["n"] == 40
    assert main(["attack", *common, "--attack", "fgsm", "--eps", "0.1", "--n", "8",
                 "--out", str(tmp_path / "a.safetensors")]) == 0
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "a.safetensors"))
    model = rl.models.Normalize(net, [0.1307], [0.3081])
    expected = rl.attacks.FGSM(rl.ThreatModel("linf", 0.1)).attack(model, test.images[:8], test.labels[:8])
    torch.testing.assert_close(saved["x_adv"], expected.x_adv)
