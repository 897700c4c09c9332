"""The HTML page as a person sees it, in real headless Chromium (Debian's chromium + chromium-driver,
driven by Selenium): it loads with no console errors, every image decodes, the tables show the
JSON's numbers, and a screenshot is written.

``ROBUSTLAB_REPORT_PAGE=out/demo/index.html`` checks an existing page (e.g. the demo's) instead of
the test's own; ``ROBUSTLAB_SCREENSHOT=docs/screenshots/report.png`` also writes the full-page
screenshot there (the one in the docs is made this way from the demo page).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser


@pytest.fixture()
def page(two_model_report) -> Path:
    given = os.environ.get("ROBUSTLAB_REPORT_PAGE")
    if given:
        return Path(given).resolve()
    return two_model_report[1] / "index.html"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def test_report_page_in_headless_chromium(browser, page, tmp_path):
    browser.get(page.as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    states = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])")
    assert len(states) >= 8
    assert all(ok and w > 0 and h > 0 for ok, w, h, _ in states), [s for s in states if not (s[0] and s[1] > 0)]
    report = json.loads((page.parent / "report.json").read_text())
    text = browser.find_element("tag name", "body").text
    for i, m in enumerate(report["models"]):
        section = browser.find_element("id", f"model-{i + 1}").text
        assert m["name"] in section and _pct(m["clean"]["value"]) in section
        for t in m["threats"]:
            # every robust-accuracy cell of the table shows the JSON's value, in its row and column
            table = browser.find_elements("css selector", f"#model-{i + 1} table.robust-{t['norm']}")[0]
            rows = table.find_elements("css selector", "tbody tr")[1:]  # after the clean row
            assert len(rows) == len(t["rows"])
            for tr, row in zip(rows, t["rows"]):
                cells = [c.text for c in tr.find_elements("tag name", "td")]
                assert cells[0] == f"{row['eps']:g}"
                for j, a in enumerate(row["attacks"]):
                    assert cells[1 + j].startswith(_pct(a["robust"]["value"]))
                assert cells[-1].startswith(_pct(row["worst_case"]["value"]))
                assert f"{100 * row['worst_case']['ci_low']:.1f}" in cells[-1]
        for f in m["checks"]:
            assert f["title"] in section
    assert "How to read this report" in text
    shot = tmp_path / "report.png"
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1200, min(int(height) + 40, 16000))
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    target = os.environ.get("ROBUSTLAB_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
