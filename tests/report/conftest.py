"""A fixed two-model report on digits (an honest model and a masked copy, with transfer between
them and a smoothing certificate), shared by the report and browser tests.

It is read from ``data/two_models.json``: the report tests never run an evaluation (report/ only
defines, stores and renders reports). ``make_fixture.py`` regenerates the file after a schema change.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import robustlab as rl

FIXTURE = Path(__file__).parent / "data" / "two_models.json"


@pytest.fixture(scope="session")
def fixed_report() -> rl.report.Report:
    return rl.report.Report.load(FIXTURE)


@pytest.fixture(scope="session")
def two_model_report(fixed_report, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    fixed_report.save(out)
    return fixed_report, out
