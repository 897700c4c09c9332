"""Deterministic verification (lecture seed 004, "provable defences").

* :func:`bounds` -- sound logit / margin bounds over an Lp ball ∩ the image box: IBP, CROWN,
  alpha-CROWN, the Wong & Kolter dual network (``lp``) and CROWN-IBP.
* :func:`certify` -- a :class:`~robustlab.certificates.Certificate` per sample (radius = eps where
  verified, or the largest radius found by bisection), including complete MILP verification.
* :func:`verify_milp` -- verified / counterexample / unknown per sample (HiGHS, big-M).
* :func:`verify_property` -- complete verification of a :class:`Property` (an input box and an
  unsafe output region, the VNN-COMP form) by branch and bound with beta-CROWN bounds:
  unsat / sat (with a counterexample) / timeout / unknown.
"""

from robustlab.verify.bab import BaBResult, verify_property
from robustlab.verify.bounds import METHODS, bound_network, bounds, verified
from robustlab.verify.certify import CERTIFY_METHODS, certify
from robustlab.verify.milp import MILPResult, lp_margin_bounds, margin_optimum, verify_milp
from robustlab.verify.network import Network, trace
from robustlab.verify.spec import Property, robustness_property

__all__ = ["BaBResult", "CERTIFY_METHODS", "METHODS", "MILPResult", "Network", "Property", "bound_network", "bounds",
           "certify", "lp_margin_bounds", "margin_optimum", "robustness_property", "trace", "verified", "verify_milp",
           "verify_property"]
