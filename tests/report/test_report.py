"""Report: JSON round trip, strict loading, atomic saves, a self-contained page, comparison, CLI."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch

import robustlab as rl
from robustlab.report import build, schema


def test_json_round_trip(two_model_report, tmp_path):
    report, out = two_model_report
    loaded = rl.report.Report.load(out / "report.json")
    assert loaded.to_dict() == report.to_dict()
    assert rl.report.Report.load(out).to_dict() == report.to_dict()  # the folder works too
    text = (out / "report.json").read_text()
    assert "Infinity" not in text and "NaN" not in text  # strict JSON: null stands for "none found"
    d = json.loads(text)
    assert d["schema"] == "robustlab-report" and d["schema_version"] == schema.SCHEMA_VERSION
    assert [m["name"] for m in d["models"]] == ["honest", "masked"]
    # saving the loaded report again gives the same JSON
    loaded.save(tmp_path / "again", html=False)
    assert json.loads((tmp_path / "again" / "report.json").read_text()) == d


def test_report_contents(two_model_report):
    report, _ = two_model_report
    honest, masked = report.models
    assert honest.verdict.trusted and not masked.verdict.trusted
    assert len(honest.exemplars) == 6 and {e.kind for e in honest.exemplars} == {"least-robust", "most-robust"}
    ex = honest.exemplars[0]
    img = ex.image.decode()
    assert img.shape == (1, 8, 8) and 0 <= float(img.min()) and float(img.max()) <= 1
    assert float((ex.adversarial.decode() - img).abs().max()) <= ex.eps + 1e-3 or not ex.success
    cert = honest.certificates[0]
    assert cert.method == "smoothing" and cert.certifies == "smoothed" and cert.norm == "l2"
    acc = [r.value for r in cert.certified_accuracy]
    assert acc == sorted(acc, reverse=True) and cert.radii[0] == 0.0
    assert honest.threats[0].lower_from == []  # smoothing certifies g, not the model: no lower bounds
    (tm,) = report.transfer
    assert tm.eps == 0.1 and tm.sources == tm.targets == ["honest", "masked"]
    assert tm.robust[0][0].k == honest.threats[0].rows[1].attacks[1].robust.k  # diagonal: white-box PGD
    assert tm.robust[1][0].value < tm.robust[1][1].value  # transfer from the honest model beats the masked one
    assert "honest" in report.table() and "certified" in report.table()
    table = build.compare_table(report)
    assert "honest" in table.splitlines()[1] and "no" in table.splitlines()[2]


def test_strict_loading(two_model_report, tmp_path):
    report, out = two_model_report
    d = json.loads((out / "report.json").read_text())
    bad = tmp_path / "r.json"

    def refused(data, message):
        bad.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=message):
            rl.report.load(bad)

    refused({**d, "schema_version": 99}, "schema_version 99")
    refused({**d, "schema": "something"}, "not a robustlab report")
    refused({**d, "extra": 1}, r"unknown keys \['extra'\]")
    m = json.loads(json.dumps(d))
    m["models"][0]["clean"]["k"] = "seven"
    refused(m, r"r.json.models\[0\].clean.k: expected an integer")
    m = json.loads(json.dumps(d))
    del m["models"][1]["verdict"]
    refused(m, r"r.json.models\[1\]: missing key .verdict.")
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        rl.report.load(bad)
    with pytest.raises(FileNotFoundError):
        rl.report.load(tmp_path / "nothing.json")


def test_save_is_atomic(two_model_report, tmp_path, monkeypatch):
    report, _ = two_model_report
    out = tmp_path / "r"
    report.save(out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def broken(_report):
        raise RuntimeError("figure rendering failed")

    monkeypatch.setattr("robustlab.report.figures.render", broken)
    with pytest.raises(RuntimeError, match="figure rendering failed"):
        report.save(out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing half-written
    monkeypatch.undo()
    bad = rl.report.Report.load(out)
    bad.models[0].clean.value = float("inf")
    with pytest.raises(ValueError, match="finite"):
        bad.save(out)
    assert (out / "report.json").read_bytes() == before["report.json"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_page_is_self_contained_and_holds_the_numbers(two_model_report):
    report, out = two_model_report
    page = (out / "index.html").read_text()
    assert not re.search(r'(src|href)="(https?:)?//', page)  # no external assets
    assert "<script" not in page
    imgs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(imgs) >= 10 and all(s.startswith("data:image/png;base64,") for s in imgs)
    figs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "compare-linf.png" in figs and "transfer-linf-0.1.png" in figs and "1-honest-certified.png" in figs
    for m in report.models:
        assert f"{100 * m.clean.value:.1f}%" in page
        for row in m.threats[0].rows:
            assert f'data-value="{row.worst_case.value:.6f}"' in page
        for f in m.checks:
            assert f'href="#check-{f.name}"' in page and f'id="check-{f.name}"' in page


def test_combine_renames_repeated_models(two_model_report):
    report, _ = two_model_report
    both = rl.report.combine([report, report])
    assert [m.name for m in both.models] == ["honest", "masked", "honest (2)", "masked (2)"]
    with pytest.raises(ValueError, match="must differ"):
        rl.report.report([report.models[0], report.models[0]])


def _cli(argv):
    from robustlab.cli import evaluate, report

    parser = argparse.ArgumentParser(prog="robustlab")
    sub = parser.add_subparsers(dest="command")
    evaluate.register(sub)
    report.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, digits_train):
    path = tmp_path_factory.mktemp("models") / "digits-mlp"
    model = rl.models.create("mlp", digits_train, seed=0)
    rl.defenses.train(model, digits_train, epochs=3, out=path, progress=False)
    return path


def test_cli_evaluate_report_compare(saved_model, tmp_path, capsys):
    out = tmp_path / "ev"
    assert _cli(["evaluate", "--model", str(saved_model), "--attack", "fgsm,pgd", "--eps", "0.05,0.2", "--n", "24",
                 "--out", str(out), "--no-progress", "--smoothing", "0.25", "--smoothing-n", "100"]) == 0
    printed = capsys.readouterr().out
    rep = rl.report.load(out / "report.json")
    m = rep.models[0]
    assert m.name == "digits-mlp" and m.data.n == 24 and [r.eps for r in m.threats[0].rows] == [0.05, 0.2]
    assert m.threats[0].attacks == ["fgsm", "pgd"] and m.certificates and m.checks
    pgd = m.threats[0].rows[1].attacks[1].robust.value
    assert f"{pgd:.4f}" in printed and "wrote report.json and index.html" in printed
    assert (out / "index.html").is_file()
    (out / "index.html").unlink()
    assert _cli(["report", str(out / "report.json")]) == 0
    assert (out / "index.html").is_file()
    assert _cli(["compare", str(out), str(out / "report.json"), "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "digits-mlp (2)" in printed and (tmp_path / "cmp" / "index.html").is_file()
    with pytest.raises(ValueError, match="larger than the input range"):
        _cli(["evaluate", "--model", str(saved_model), "--eps", "1.5", "--out", str(tmp_path / "e2")])
    assert not (tmp_path / "e2" / "report.json").exists()


def test_encoded_image_round_trip():
    x = torch.rand(3, 5, 4)
    enc = schema.EncodedImage.encode(x)
    assert enc.shape == [3, 5, 4] and enc.dtype == "float16"
    assert torch.allclose(enc.decode(), x, atol=1e-3)
    with pytest.raises(ValueError, match="needs"):
        schema.EncodedImage([2, 2], enc.data).decode()


def test_docs_describe_every_check_and_field():
    from pathlib import Path

    from robustlab.evaluate.checks import CHECKS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "report-format.md").read_text()
    for name, (title, text, _) in CHECKS.items():
        assert f'<a id="check-{name}"></a>{title}' in doc and text in doc
    for field in ("per_sample_upper", "worst_case", "certified_accuracy", "schema_version", "EncodedImage"):
        assert field in doc
