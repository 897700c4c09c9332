"""The HTML page as a person sees it: real headless Chromium (Debian's chromium + chromedriver)
loads the report with no console errors, every image decodes, and the tables show the JSON's numbers."""

from __future__ import annotations

import json
import shutil

import pytest

import robustlab as rl
from robustlab.report import write_comparison

pytestmark = pytest.mark.browser
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def page(tmp_path_factory, digits_model, digits_test):
    out = tmp_path_factory.mktemp("report")
    ev = rl.evaluate.run(digits_model, digits_test, rl.evaluate.Suite("t", "linf", (0.05, 0.2), ("fgsm", "pgd")),
                         n=40, progress=False)
    return write_comparison(out, {"digits-net": (digits_model, ev)}, digits_test, title="test report", wall_seconds=1.0)


@pytest.mark.skipif(CHROMIUM is None or DRIVER is None, reason="Debian's chromium and chromium-driver are not installed")
def test_report_renders_in_headless_chromium(page, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1600"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=opts)
    try:
        driver.get(page.as_uri())
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        widths = driver.execute_script("return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) >= 2 and all(w > 0 for w in widths)
        text = driver.find_element("tag name", "body").text
        report = json.loads((page.parent / "report.json").read_text())["models"]["digits-net"]
        clean = 100 * report["clean_accuracy"]["value"]
        assert f"{clean:.1f}%" in text
        for row in report["per_eps"]:
            assert f"{100 * row['worst_case']['value']:.1f}%" in text
        assert driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()
