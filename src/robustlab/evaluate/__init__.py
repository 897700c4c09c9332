"""Evaluation: run a suite of attacks, certifiers and gradient-masking checks over a dataset and
turn the per-sample records into a :class:`~robustlab.report.Report` (``summarize``: records -> report).

``robustlab.evaluate.run(model, data, suite="quick")`` is the entry point; ``metrics`` holds the
functional metrics and ``checks`` the gradient-masking checks.
"""

from robustlab.evaluate import certifiers as _certifiers  # noqa: F401  (registers ibp, crown, ..., milp)
from robustlab.evaluate import checks, metrics, summarize
from robustlab.evaluate.records import Records
from robustlab.evaluate.run import RunConfig, run
from robustlab.evaluate.summarize import model_report
from robustlab.evaluate.suite import (
    CERTIFIERS,
    CertifierEntry,
    CertifierSpec,
    Checks,
    Suite,
    Threat,
    default_eps,
    load_suite,
    preset,
    register_certifier,
    standard_attacks,
)

__all__ = [
    "CERTIFIERS", "CertifierEntry", "CertifierSpec", "Checks", "Records", "Suite", "Threat", "checks", "default_eps",
    "load_suite", "metrics", "model_report", "preset", "register_certifier", "run", "RunConfig", "standard_attacks", "summarize",
]
