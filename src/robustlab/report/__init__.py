"""Reports: JSON plus a self-contained HTML page with figures and adversarial image grids."""

from robustlab.report.html import write_comparison

__all__ = ["write_comparison"]
