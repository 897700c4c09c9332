"""Deterministic verification (lecture seed 004, "provable defences").

* :func:`bounds` -- sound logit / margin bounds over an Lp ball ∩ the image box: IBP, CROWN,
  alpha-CROWN, the Wong & Kolter dual network (``lp``) and CROWN-IBP.
* :func:`certify` -- a :class:`~robustlab.certificates.Certificate` per sample (radius = eps where
  verified, or the largest radius found by bisection), including complete MILP verification.
* :func:`verify_milp` -- verified / counterexample / unknown per sample (HiGHS, big-M).
"""

from robustlab.verify.bounds import METHODS, bound_network, bounds, verified
from robustlab.verify.certify import CERTIFY_METHODS, certify
from robustlab.verify.milp import MILPResult, lp_margin_bounds, margin_optimum, verify_milp
from robustlab.verify.network import Network, trace

__all__ = ["CERTIFY_METHODS", "METHODS", "MILPResult", "Network", "bound_network", "bounds", "certify",
           "lp_margin_bounds", "margin_optimum", "trace", "verified", "verify_milp"]
