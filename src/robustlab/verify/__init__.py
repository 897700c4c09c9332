"""Deterministic verification: sound output bounds (IBP, CROWN, alpha-CROWN, LP dual) and certificates."""

from robustlab.verify.bounds import METHODS, bound_network, bounds, verified
from robustlab.verify.network import Network, trace

__all__ = ["METHODS", "Network", "bound_network", "bounds", "trace", "verified"]
