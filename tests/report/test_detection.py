"""The detection section: a real ``robustlab detect`` result on the digits rendered as a table,
ROC curves and an HTML page."""

from __future__ import annotations

import argparse
import copy
import json

import pytest

from robustlab.report.detection import detection_table, load_detection, render_detection, roc_figure, save_detection


@pytest.fixture(scope="module")
def detect_doc(digits_model, tmp_path_factory) -> dict:
    from robustlab.cli import detect as cli

    out = tmp_path_factory.mktemp("detect") / "detect.json"
    args = argparse.Namespace(model="digits-model", detector="squeeze,magnet", attacks="fgsm,pgd", adaptive=True, eps=0.3,
                              l2_eps=2.0, steps=5, fpr=0.05, n_images=40, n_fit=200, n_train=300,
                              dataset="digits", root=None, batch_size=100, seed=0, out=str(out),
                              html=str(out.parent / "page"))
    assert cli.run(args, model=digits_model) == 0
    assert (out.parent / "page" / "detection.html").is_file()  # --html: the page next to the JSON
    return json.loads(out.read_text())


def test_table_lists_every_record_with_its_numbers(detect_doc):
    text = detection_table(detect_doc)
    lines = text.splitlines()
    assert len(lines) == 2 + len(detect_doc["records"]) + 1  # header, rule, records, footnote
    for r, line in zip(detect_doc["records"], lines[2:]):
        assert line.split()[:3] == [r["detector"], r["attack_name"], "adaptive" if r["adaptive"] else "non-adaptive"]
        assert f"{100 * r['evasion_rate']:.1f}%" in line
        if r["auc"] is not None:
            assert f"{r['auc']:.3f}" in line


def test_roc_figure_is_a_png_and_the_page_embeds_it(detect_doc, tmp_path):
    png = roc_figure(detect_doc)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    folder = save_detection(detect_doc, tmp_path / "page")
    assert (folder / "detection_roc.png").read_bytes() == png  # rendering is deterministic
    html = (folder / "detection.html").read_text()
    assert html.count("<tr class=") == len(detect_doc["records"])
    assert "data:image/png;base64," in html and "adaptive rows" in html


def test_page_escapes_strings_from_the_document(detect_doc):
    doc = copy.deepcopy(detect_doc)
    doc["model"] = "<script>alert(1)</script>"
    html = render_detection(doc, figure=False)
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_bad_documents_are_refused(detect_doc, tmp_path):
    with pytest.raises(ValueError, match="robustlab-detect"):
        load_detection({"format": "robustlab-report", "records": []})
    with pytest.raises(ValueError, match="no records"):
        load_detection({**detect_doc, "records": []})
    bad = copy.deepcopy(detect_doc)
    bad["records"][0]["evasion_rate"] = 1.5
    with pytest.raises(ValueError, match=r"records\[0\].evasion_rate"):
        load_detection(bad)
    bad = copy.deepcopy(detect_doc)
    bad["records"][0]["roc"] = {"fpr": [0.0, 1.0], "tpr": [0.0]}
    with pytest.raises(ValueError, match="same length"):
        load_detection(bad)
    with pytest.raises(FileNotFoundError):
        load_detection(tmp_path / "missing.json")
    with pytest.raises(TypeError, match="path or a dict"):
        load_detection(3)
