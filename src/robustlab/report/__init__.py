"""Reports: a versioned JSON document (:class:`Report`) rendered to a self-contained HTML page with
figures and adversarial image grids.

``Report.save(dir)`` writes ``report.json``, ``index.html`` and ``figures/*.png``;
``Report.load(path)`` reads one back; :func:`combine` puts several side by side.
"""

from robustlab.report.schema import SCHEMA, SCHEMA_VERSION, Finding, ModelReport, Rate, Report, Verdict
from robustlab.report.build import combine, compare_table, load, model_report, report, save, table

__all__ = [
    "SCHEMA", "SCHEMA_VERSION", "Finding", "ModelReport", "Rate", "Report", "Verdict", "combine", "compare_table",
    "load", "model_report", "report", "save", "table",
]
