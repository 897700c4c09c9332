"""Every verb writes the one Report: ``attack``, ``evaluate``, ``certify``, ``verify`` and ``detect``
each leave a loadable ``report.json`` (schema 4) with their own section and an ``index.html``;
``robustlab report`` re-renders each, ``robustlab compare`` puts an evaluate and a certify report
side by side, and each page opens in headless Chromium (where installed). Tiny digits runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import robustlab as rl
from robustlab.cli import main
from robustlab.report import schema

COMMANDS = ("attack", "evaluate", "certify", "verify", "detect")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One tiny run of each verb on a digits MLP: verb -> its report folder (and ``"root"``)."""
    root = tmp_path_factory.mktemp("verbs")
    model = str(root / "mlp")
    assert main(["train", "--dataset", "digits", "--arch", "mlp", "--epochs", "3", "--out", model, "--no-progress"]) == 0
    argv = {
        "attack": ["--attack", "pgd", "--eps", "0.1", "--n", "40", "-o", "steps=10", "--out", str(root / "adv.safetensors")],
        "evaluate": ["--attack", "fgsm,pgd", "--eps", "0.05,0.1", "--n", "40", "--out", str(root / "evaluate")],
        "certify": ["--sigma", "0.25", "--n0", "20", "--n", "200", "--n-images", "30", "--radii", "0,0.1,0.3",
                    "--out", str(root / "certify.json")],
        "verify": ["--method", "crown", "--eps", "0.01", "--n", "30", "--out", str(root / "verify.json")],
        "detect": ["--detector", "squeeze", "--attacks", "fgsm", "--adaptive", "--eps", "0.3", "--steps", "5",
                   "--n", "40", "--n-fit", "200", "--n-train", "300", "--out", str(root / "detect.json")],
    }
    for verb, args in argv.items():
        progress = [] if verb == "detect" else ["--no-progress"]
        assert main([verb, "--model", model, *args, *progress]) == 0, verb
    folders = {verb: root / {"attack": "adv", "evaluate": "evaluate"}.get(verb, verb) for verb in COMMANDS}
    return {**folders, "root": root}


@pytest.mark.parametrize("verb", COMMANDS)
def test_each_verb_writes_a_loadable_report_with_its_section_and_a_page(runs, verb):
    folder = runs[verb]
    doc = json.loads((folder / "report.json").read_text())
    assert doc["schema"] == "robustlab-report" and doc["schema_version"] == schema.SCHEMA_VERSION == 4
    rep = rl.report.load(folder)
    (m,) = rep.models
    assert m.command == verb and m.name == "mlp" and m.data.name == "digits"
    assert m.clean is not None and m.clean.n == len(m.labels) == len(m.clean_pred)
    sections = {"evaluate": bool(m.threats), "attack": bool(m.attack_runs), "certify": bool(m.certificates),
                "verify": bool(m.verification), "detect": m.detection is not None}
    assert sections[verb] and sum(sections.values()) == 1 + (verb == "verify")  # verify: statuses and a certificate
    html = (folder / "index.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and m.name in html and "<script" not in html


def test_attack_report_agrees_with_the_exported_examples(runs):
    run = rl.report.load(runs["attack"]).models[0].attack_runs[0]
    examples = (runs["attack"] / run.examples).resolve()
    assert examples == (runs["root"] / "adv.safetensors").resolve()
    tensors = load_file(str(examples))
    assert run.per_sample_success == tensors["success"].tolist()
    correct = tensors["clean_correct"]
    robust = correct & ~tensors["success"]
    assert run.result.robust.k == int(robust.sum()) and run.result.robust.n == 40
    assert run.result.success.n == int(correct.sum()) and run.result.robust.method == "wilson"
    assert run.eps == 0.1 and run.norm == "linf" and run.config["steps"] == 10
    # every distance recorded lies in the ball and matches the exported tensors
    found = [d for d, s in zip(run.per_sample_distance, run.per_sample_success) if s]
    assert all(d is not None and d <= 0.1 + 1e-5 for d in found)
    legacy = json.loads((runs["root"] / "adv.json").read_text())  # deprecated, still written
    assert legacy["robust_accuracy"] == pytest.approx(run.result.robust.value)


def test_certify_report_holds_the_certificate_and_the_old_file_agrees(runs):
    c = rl.report.load(runs["certify"]).models[0].certificates[0]
    assert c.method == "smoothing" and c.certifies == "smoothed" and c.norm == "l2" and c.radii == [0.0, 0.1, 0.3]
    values = [r.value for r in c.certified_accuracy]
    assert values == sorted(values, reverse=True) and all(r.n == 30 for r in c.certified_accuracy)
    assert c.options["sigma"] == 0.25 and c.options["n"] == 200
    legacy = json.loads((runs["root"] / "certify.json").read_text())
    assert legacy["certified_accuracy"] == pytest.approx(values)
    radius = torch.tensor(legacy["certificate"]["radius"], dtype=torch.float64)
    abstain = torch.tensor(legacy["certificate"]["abstain"])
    assert c.abstain.k == int(abstain.sum())
    assert c.per_sample_radius == pytest.approx(torch.where(abstain, 0.0, radius).tolist(), rel=1e-5)


def test_verify_report_statuses_match_the_certificate(runs):
    m = rl.report.load(runs["verify"]).models[0]
    (v,) = m.verification
    (c,) = m.certificates
    assert v.method == "crown" and v.norm == "linf" and v.eps == 0.01 and len(v.statuses) == 30
    assert set(v.statuses) <= set(schema.VERIFICATION_STATUSES) and len(v.seconds) == 30
    assert sum(v.counts.values()) == 30 and v.verified.k == v.counts["verified"]
    # an image is verified only if it is classified correctly: the certificate says the same
    assert c.certified_accuracy[0].k == v.counts["verified"] and c.certifies == "model"
    for label, pred, status in zip(m.labels, m.clean_pred, v.statuses):
        assert status != "verified" or label == pred


def test_detect_report_rates_match_the_old_records(runs):
    d = rl.report.load(runs["detect"]).models[0].detection
    legacy = json.loads((runs["root"] / "detect.json").read_text())["records"]
    assert [(r.detector, r.attack, r.adaptive) for r in d.rows] == [("squeeze", "fgsm", False), ("squeeze", "fgsm", True)]
    assert d.target_fpr == 0.05 and d.eps == 0.3
    for row, old in zip(d.rows, legacy):
        assert row.evasion.value == pytest.approx(old["evasion_rate"]) and row.success.k == old["attack_success"]
        if old["detection_rate"] is not None:
            assert row.detection.value == pytest.approx(old["detection_rate"]) and row.auc == pytest.approx(old["auc"], 1e-5)
            assert len(row.roc_fpr) == len(row.roc_tpr) >= 2


@pytest.mark.parametrize("verb", COMMANDS)
def test_report_re_renders_each_verb(runs, verb, tmp_path, capsys):
    out = tmp_path / "again"
    assert main(["report", str(runs[verb]), "--out", str(out)]) == 0
    assert "mlp" in capsys.readouterr().out
    again, first = rl.report.load(out), rl.report.load(runs[verb])
    for a, b in zip(again.models[0].attack_runs, first.models[0].attack_runs):  # the examples' path follows the report
        assert (out / a.examples).resolve() == (runs[verb] / b.examples).resolve()
        a.examples = b.examples
    assert again.to_dict() == first.to_dict()
    if verb != "attack":
        assert (out / "index.html").read_text() == (runs[verb] / "index.html").read_text()
    assert main(["report", str(runs[verb] / "report.json")]) == 0  # in place, from the file
    assert rl.report.load(runs[verb]).to_dict() == first.to_dict()


def test_compare_puts_an_evaluate_and_a_certify_report_side_by_side(runs, tmp_path, capsys):
    out = tmp_path / "compare"
    assert main(["compare", str(runs["evaluate"]), str(runs["certify"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    head, first, second = printed.splitlines()[:3]
    assert "linf 0.1" in head and "cert smoothing l2 0.1" in head
    assert first.startswith("mlp ") and second.startswith("mlp (certify)") and second.rstrip().endswith("certify")
    rep = rl.report.load(out)
    assert [m.command for m in rep.models] == ["evaluate", "certify"]
    html = (out / "index.html").read_text()
    assert 'id="model-1"' in html and 'id="model-2"' in html and "certified, l2 r = " in html
    assert "worst case, linf eps 0.1" in html


def test_an_older_schema_file_still_compares_with_a_new_one(runs, tmp_path):
    fixture = Path(__file__).parent / "report" / "data" / "two_models.json"
    assert json.loads(fixture.read_text())["schema_version"] == 3
    old = rl.report.load(fixture)
    both = rl.report.combine([old, rl.report.load(runs["certify"])])
    assert [m.command for m in both.models] == ["evaluate", "evaluate", "certify"]
    both.save(tmp_path / "mixed")
    assert rl.report.load(tmp_path / "mixed").schema_version == 4


@pytest.mark.browser
@pytest.mark.parametrize("verb", COMMANDS)
def test_each_verb_page_in_headless_chromium(runs, verb, browser):
    browser.get((runs[verb] / "index.html").as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    states = browser.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    assert all(ok and w > 0 for ok, w in states)
    m = json.loads((runs[verb] / "report.json").read_text())["models"][0]
    section = browser.find_element("id", "model-1").text
    assert f"{100 * m['clean']['value']:.1f}%" in section
    assert ("Gradient-masking checks" in section) == (verb == "evaluate")
    assert verb == "evaluate" or f"robustlab {verb}" in section
    selector = {"evaluate": "table.robust-linf", "attack": "table.attack-runs", "certify": "table.certified",
                "verify": "table.verification", "detect": "table.detection"}[verb]
    rows = browser.find_elements("css selector", f"#model-1 {selector} tbody tr")
    assert rows and all(r.text.strip() for r in rows)
    if verb == "attack":
        robust = m["attack_runs"][0]["result"]["robust"]["value"]
        assert rows[0].find_elements("tag name", "td")[2].text.startswith(f"{100 * robust:.1f}%")
    if verb == "detect":
        assert len(rows) == len(m["detection"]["rows"]) and states  # the ROC figure decodes


def test_malformed_sections_are_refused_by_name(runs, tmp_path):
    d = json.loads((runs["verify"] / "report.json").read_text())
    bad = json.loads(json.dumps(d))
    bad["models"][0]["verification"][0]["statuses"][0] = "maybe"
    (tmp_path / "a.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="statuses must be among"):
        rl.report.load(tmp_path / "a.json")
    bad = json.loads(json.dumps(d))
    bad["models"][0]["command"] = "train"
    (tmp_path / "b.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="command must be one of"):
        rl.report.load(tmp_path / "b.json")
    bad = json.loads(json.dumps(d))
    bad["models"][0]["verification"][0]["surprise"] = 1
    (tmp_path / "c.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="unknown keys"):
        rl.report.load(tmp_path / "c.json")


@pytest.mark.browser
def test_compare_page_in_headless_chromium(runs, browser, tmp_path):
    out = tmp_path / "compare"
    assert main(["compare", str(runs["evaluate"]), str(runs["certify"]), str(runs["verify"]), "--out", str(out)]) == 0
    browser.get((out / "index.html").as_uri())
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []
    states = browser.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    assert states and all(ok and w > 0 for ok, w in states)
    head = [th.text for th in browser.find_elements("css selector", "#summary table.summary thead th")]
    assert "worst case, linf eps 0.1" in head and any(h.startswith("certified, l2 r =") for h in head)
    rows = browser.find_elements("css selector", "#summary table.summary tbody tr")
    assert [r.find_elements("tag name", "td")[0].text for r in rows] == ["mlp", "mlp (certify)", "mlp (verify)"]
    for i in (1, 2, 3):
        assert browser.find_element("id", f"model-{i}").text
