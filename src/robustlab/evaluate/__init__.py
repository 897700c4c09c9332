"""Evaluation: run a suite of attacks over a dataset and derive robustness metrics."""

from robustlab.evaluate.run import Evaluation, run
from robustlab.evaluate.suite import Suite, load_suite, preset

__all__ = ["Evaluation", "Suite", "load_suite", "preset", "run"]
