"""Report: JSON round trip, strict loading, atomic saves, a self-contained page, comparison, CLI."""

from __future__ import annotations

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
    assert "compare-linf.png" in figs and "transfer-linf-0.1.png" in figs and "1-honest-certified-l2.png" in figs
    for m in report.models:
        assert f"{100 * m.clean.value:.1f}%" in page
        for row in m.threats[0].rows:
            assert f'data-value="{row.worst_case.value:.6f}"' in page
        for f in m.checks:
            assert f'href="#check-{f.name}"' in page and f'id="check-{f.name}"' in page


def test_certified_columns_and_axes_never_mix_norms(fixed_report, tmp_path):
    # The demo's mix: one model certified in linf (IBP), another in l2 (smoothing). Each model's
    # certified accuracy is read at radii of its own norm, under a header naming the norm, and the
    # curves of different norms never share an axis.
    import copy
    import dataclasses

    from robustlab.report import figures, html

    report = copy.deepcopy(fixed_report)
    honest, masked = report.models
    smooth = honest.certificates[0]
    assert smooth.norm == "l2"
    ibp = dataclasses.replace(smooth, method="ibp", label="ibp", norm="linf", certifies="model", alpha=0.0,
                              radii=[r / 100 for r in smooth.radii])
    masked.certificates = [ibp]
    figs = figures.render(report)
    assert {"compare-certified-l2.png", "compare-certified-linf.png", "1-honest-certified-l2.png",
            "2-masked-certified-linf.png"} <= set(figs)
    assert not any(name.endswith("-certified.png") for name in figs)
    summary = html._summary(report, figs)
    head = summary["head"]
    l2_cols = [i for i, h in enumerate(head) if h.startswith("certified, l2 r = ")]
    linf_cols = [i for i, h in enumerate(head) if h.startswith("certified, linf r = ")]
    assert l2_cols and linf_cols and not any(h.startswith("certified, r") for h in head)
    rows = {r["name"]: r["cells"] for r in summary["rows"]}
    # cells start after "model": cell j is column j + 1
    assert all(rows["masked"][i - 1] is None for i in l2_cols)  # no l2 certificate: nothing read at l2 radii
    assert all(rows["honest"][i - 1] is None for i in linf_cols)
    assert [rows["masked"][i - 1] for i in linf_cols] == [ibp.certified_accuracy[j] for j in sorted(
        {0, len(ibp.radii) // 4, len(ibp.radii) // 2})]
    with pytest.raises(ValueError, match="one norm per axis"):
        figures.certified_curves([("a", smooth), ("b", ibp)])
    report.save(tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert "certified accuracy vs linf radius" in page and "certified accuracy vs l2 radius" in page


def test_combine_renames_repeated_models(two_model_report):
    report, _ = two_model_report
    both = rl.report.combine([report, report])
    assert [m.name for m in both.models] == ["honest", "masked", "honest (2)", "masked (2)"]
    with pytest.raises(ValueError, match="must differ"):
        rl.report.report([report.models[0], report.models[0]])


def test_encoded_image_round_trip():
    x = torch.rand(3, 5, 4)
    enc = schema.EncodedImage.encode(x)
    assert enc.shape == [3, 5, 4] and enc.dtype == "float16"
    assert torch.allclose(enc.decode(), x, atol=1e-3)
    with pytest.raises(ValueError, match="needs"):
        schema.EncodedImage([2, 2], enc.data).decode()


def test_docs_describe_every_check_and_field():
    from pathlib import Path

    from robustlab.report.explain import CHECKS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "report-format.md").read_text()
    for name, (title, text, _) in CHECKS.items():
        assert f'<a id="check-{name}"></a>{title}' in doc and text in doc
    for field in ("per_sample_upper", "worst_case", "certified_accuracy", "schema_version", "EncodedImage"):
        assert field in doc


def test_docs_name_every_field_of_the_verb_sections():
    import dataclasses
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "report-format.md").read_text()
    for cls in (schema.ModelReport, schema.AttackRun, schema.VerificationReport, schema.DetectionReport,
                schema.DetectionRow):
        missing = [f.name for f in dataclasses.fields(cls) if f'"{f.name}"' not in doc]
        assert not missing, (cls.__name__, missing)


def test_report_package_never_imports_evaluate():
    import ast
    from pathlib import Path

    import robustlab.report

    for path in Path(robustlab.report.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("robustlab.evaluate") for n in names), path.name
    with pytest.raises(AttributeError, match="moved to robustlab.evaluate.model_report"):
        rl.report.model_report  # noqa: B018


def _hostile(report):
    """The fixed report with strings an attacker controls: model metadata, names, suite, findings."""
    d = json.loads(json.dumps(report.to_dict()))
    m = d["models"][0]
    m["name"] = '<img src=x onerror="alert(1)">'
    m["model"].update(url="javascript:alert(document.cookie)", homepage="JaVaScRiPt:alert(2)",
                      paper=" java\tscript:alert(3)", source="https://example.org/model?a=1&b=<2>",
                      description="<script>alert('meta')</script>",
                      architecture={"name": "<script>alert('arch')</script>"})
    m["suite"]["name"] = "</title><script>alert('suite')</script>"
    m["checks"][0]["doc"] = "javascript:alert('doc')"
    m["checks"][0]["evidence"] = "<b onmouseover=alert(4)>x</b>"
    m["threats"][0]["attacks"][0] = "<svg onload=alert(5)>"
    m["notes"].append('"><script>alert("note")</script>')
    d["title"] = "<script>alert('title')</script>"
    return rl.report.schema.from_dict(rl.report.Report, d)


def test_html_escapes_every_string_and_keeps_only_safe_links(fixed_report, tmp_path):
    from robustlab.report import html

    page = html.render(_hostile(fixed_report), {})
    assert "<script" not in page.lower() and "<img src=x" not in page and "<svg" not in page and "<b onmouseover" not in page
    assert "&lt;script&gt;alert(&#39;meta&#39;)&lt;/script&gt;" in page  # shown as text
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page
    for href in re.findall(r'href="([^"]*)"', page):
        assert href.startswith(("#", "https://", "http://")), href
    assert "javascript" not in "".join(re.findall(r'(?:href|src)="([^"]*)"', page)).lower()
    assert 'href="https://example.org/model?a=1&amp;b=&lt;2&gt;"' in page  # a safe link stays a link, escaped
    assert "(not a web link; shown as text)" in page
    # the saved page and figure names are safe too (names with path separators stay inside figures/)
    rep = _hostile(fixed_report)
    rep.models[0].threats[0].norm = "../../escape"
    rep.save(tmp_path / "out")
    assert not (tmp_path / "escape-eps.png").exists() and not list(tmp_path.glob("*.png"))
    assert all(p.parent == tmp_path / "out" / "figures" for p in (tmp_path / "out").rglob("*.png"))


@pytest.mark.parametrize("url, ok", [
    ("https://a.org/x", True), ("http://a.org", True), ("#check-unbounded", True), ("docs/report.html", True),
    ("javascript:alert(1)", False), ("JAVASCRIPT:alert(1)", False), (" javascript:alert(1)", False),
    ("java\tscript:alert(1)", False), ("data:text/html,<script>", False), ("vbscript:x", False),
    ("//evil.org/x", False), ("https:evil", False), ("", False), (None, False), ("\\\\evil\\x", False),
])
def test_safe_url(url, ok):
    from robustlab.report.html import is_safe_url, safe_url

    assert is_safe_url(url) is ok
    assert safe_url(url) == (url.strip() if ok else "#")


@pytest.mark.parametrize("version", [1, 2, 3])
def test_schema_4_reads_older_files(version, fixed_report, tmp_path):
    d = json.loads(json.dumps(fixed_report.to_dict()))
    assert d["schema_version"] == 4 == schema.SCHEMA_VERSION
    d["schema_version"] = version
    for m in d["models"]:
        for key in ("command", "attack_runs", "verification", "detection"):  # schema 4
            del m[key]
    for m in d["models"] if version < 3 else []:
        del m["verdict"]["uninformative"]
        for t in m["threats"]:
            del t["black_box_members"]
            if t["verdict"] is not None:
                del t["verdict"]["uninformative"]
        if version == 1:
            for f in m["checks"]:
                del f["norm"]
            for t in m["threats"]:
                del t["verdict"], t["black_box"]
    (tmp_path / "old.json").write_text(json.dumps(d))
    old = rl.report.load(tmp_path / "old.json")
    assert old.models[0].command == "evaluate" and old.models[0].attack_runs == [] and old.models[0].detection is None
    assert old.schema_version == schema.SCHEMA_VERSION  # read with the newer keys' defaults: a current report
    if version < 3:
        assert old.models[0].verdict.uninformative == [] and old.models[0].threats[0].black_box_members == []
    if version == 1:
        assert old.models[0].threats[0].verdict is None and old.models[0].checks[0].norm is None
    assert "<html" in __import__("robustlab.report.html", fromlist=["render"]).render(old, {})


def test_fixed_report_has_per_threat_verdicts(fixed_report):
    honest, masked = fixed_report.models
    for m in (honest, masked):
        for t in m.threats:
            assert t.verdict is not None and t.verdict.trusted is m.verdict.trusted
        assert {f.norm for f in m.checks} == {"linf", None}
