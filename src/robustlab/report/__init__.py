"""Reports: a versioned JSON document (:class:`Report`) rendered to a self-contained HTML page with
figures and adversarial image grids.

``Report.save(dir)`` writes ``report.json``, ``index.html`` and ``figures/*.png``;
``Report.load(path)`` reads one back; :func:`combine` puts several side by side. The numbers are
computed by :mod:`robustlab.evaluate` (``robustlab.evaluate.model_report``: records -> report);
this package only defines, stores and renders them and never imports ``robustlab.evaluate``.
"""

from robustlab.report.schema import SCHEMA, SCHEMA_VERSION, Finding, ModelReport, Rate, Report, Verdict
from robustlab.report.assemble import combine, report
from robustlab.report.build import compare_table, save, table
from robustlab.report.schema import load

__all__ = [
    "SCHEMA", "SCHEMA_VERSION", "Finding", "ModelReport", "Rate", "Report", "Verdict", "combine", "compare_table",
    "load", "report", "save", "table",
]


def __getattr__(name: str):
    if name == "model_report":  # moved: records -> report is evaluation, and report/ never imports evaluate/
        raise AttributeError("robustlab.report.model_report moved to robustlab.evaluate.model_report "
                             "(robustlab.evaluate.summarize); robustlab.report only defines, stores and renders reports")
    raise AttributeError(f"module 'robustlab.report' has no attribute {name!r}")
