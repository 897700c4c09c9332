"""Evaluation: run a suite of attacks, certifiers and gradient-masking checks over a dataset and
turn the per-sample records into a :class:`~robustlab.report.Report`.

``robustlab.evaluate.run(model, data, suite="quick")`` is the entry point; ``metrics`` holds the
functional metrics and ``checks`` the gradient-masking checks.
"""

from robustlab.evaluate import checks, metrics
from robustlab.evaluate.run import Records, run
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
    "load_suite", "metrics", "preset", "register_certifier", "run", "standard_attacks",
]
