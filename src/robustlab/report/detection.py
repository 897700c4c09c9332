"""The old detection document (``format: robustlab-detect``, deprecated: ``robustlab detect`` now writes
the one report, whose ``detection`` section :mod:`robustlab.report.html` renders) as a table, ROC
curves and a self-contained HTML page; kept for one release to read the old files.

Each record of the document is one (detector, attack, adaptive) triple with the detection rate at
the fitted false-positive rate, the ROC AUC of the adversarial scores against the clean ones (the
Mann-Whitney statistic) and the evasion rate (misclassified and not flagged, as a share of the
correctly classified inputs), computed by :mod:`robustlab.cli.detect`. The adaptive records are
the detector-aware attacks (Carlini & Wagner 2017, arXiv:1705.07263): those are the numbers to
believe, and the page says so. This module only validates and renders; it computes nothing.

- :func:`load_detection`: read and validate the JSON (a path or an already parsed dict);
- :func:`detection_table`: plain-text table;
- :func:`roc_figure`: PNG bytes, one panel per detector, the non-adaptive ROC solid and the
  adaptive one dashed, the fitted operating point marked;
- :func:`render_detection` / :func:`save_detection`: the HTML page (Jinja2, autoescaped; the
  figure inlined as a data URI) and the folder with ``detection.html`` and ``detection_roc.png``.
"""

from __future__ import annotations

import base64
import json
import math
import os
from pathlib import Path
from typing import Any, Optional

import jinja2

from robustlab._io import atomic_write_bytes, atomic_write_text
from robustlab.report.figures import roc_curves

__all__ = ["DETECT_FORMAT", "detection_table", "load_detection", "render_detection", "roc_figure", "save_detection"]

#: The ``format`` tag of the documents ``robustlab detect`` writes.
DETECT_FORMAT = "robustlab-detect"
_REQUIRED = ("detector", "attack_name", "adaptive", "evasion_rate", "detection_rate", "auc")


def _rate(v: Any, where: str, *, allow_none: bool) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{where} must be a number in [0, 1]{' or null' if allow_none else ''}, got {v!r}")


def load_detection(source: "str | os.PathLike[str] | dict") -> dict:
    """The validated detection document from a JSON file or a parsed dict (``format:
    robustlab-detect``, a non-empty ``records`` list whose rates lie in [0, 1] and whose ROC
    curves, where present, are paired lists of the same length)."""
    if isinstance(source, dict):
        doc = source
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no detection result at {path}")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    else:
        raise TypeError(f"source must be a path or a dict, got {type(source).__name__}")
    if not isinstance(doc, dict) or doc.get("format") != DETECT_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"expected a {DETECT_FORMAT!r} document (robustlab detect --out), got format {got!r}")
    records = doc.get("records")
    if not isinstance(records, list) or not records:
        raise ValueError("the detection document has no records")
    for i, r in enumerate(records):
        missing = [k for k in _REQUIRED if not isinstance(r, dict) or k not in r]
        if missing:
            raise ValueError(f"records[{i}] lacks {', '.join(missing)}")
        _rate(r["evasion_rate"], f"records[{i}].evasion_rate", allow_none=False)
        for k in ("detection_rate", "auc", "fpr"):
            _rate(r.get(k), f"records[{i}].{k}", allow_none=True)
        roc = r.get("roc")
        if roc is not None:
            fpr, tpr = roc.get("fpr") if isinstance(roc, dict) else None, roc.get("tpr") if isinstance(roc, dict) else None
            if not isinstance(fpr, list) or not isinstance(tpr, list) or len(fpr) != len(tpr) or len(fpr) < 2:
                raise ValueError(f"records[{i}].roc must hold lists fpr and tpr of the same length (>= 2)")
    return doc


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _auc(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _rows(doc: dict) -> list[dict[str, str]]:
    return [{"detector": str(r["detector"]), "attack": str(r["attack_name"]),
             "kind": "adaptive" if r["adaptive"] else "non-adaptive", "detection": _pct(r["detection_rate"]),
             "fpr": _pct(r.get("fpr")), "auc": _auc(r["auc"]), "evasion": _pct(r["evasion_rate"]),
             "found": f"{r.get('attack_success', '?')}/{r.get('n', '?')}"} for r in doc["records"]]


def detection_table(source: "str | os.PathLike[str] | dict") -> str:
    """Plain-text table: detector, attack, kind, detection rate, FPR, AUC, evasion rate."""
    doc = load_detection(source)
    head = {"detector": "detector", "attack": "attack", "kind": "kind", "detection": "detection",
            "fpr": "FPR", "auc": "AUC", "evasion": "evasion", "found": "adv found"}
    rows = [head] + _rows(doc)
    width = {k: max(len(r[k]) for r in rows) for k in head}
    lines = ["  ".join(r[k].ljust(width[k]) for k in head).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * width[k] for k in head))
    fpr = doc.get("fpr")
    lines.append(f"detection rate at the threshold fitted for FPR {fpr if fpr is not None else '?'} on held-out "
                 "clean images; the adaptive rows are the detector-aware attacks")
    return "\n".join(lines)


def roc_figure(source: "str | os.PathLike[str] | dict") -> bytes:
    """PNG: one ROC panel per detector; per attack a colour, non-adaptive solid, adaptive dashed,
    the detection rate at the fitted threshold marked on each curve (:func:`robustlab.report.figures.roc_curves`)."""
    doc = load_detection(source)
    return roc_curves([{"detector": r["detector"], "attack": r["attack_name"], "adaptive": r["adaptive"],
                        "fpr": (r.get("roc") or {}).get("fpr") or [], "tpr": (r.get("roc") or {}).get("tpr") or [],
                        "auc": r["auc"],
                        "point": (r["fpr"], r["detection_rate"]) if r.get("fpr") is not None
                        and r["detection_rate"] is not None else None} for r in doc["records"]])


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}td:first-child,td:nth-child(2),td:nth-child(3)
{text-align:left}tr.adaptive{background:#fff4e5}.note{color:#444}</style></head><body>
<h1>{{ title }}</h1>
<p class="note">Model {{ model }} on {{ dataset }}: linf eps {{ eps }}, {{ n }} attacked images; each detector's
threshold is fitted for a false-positive rate of {{ fpr }} on held-out clean images. Detection rate: successful
adversarial examples flagged; evasion: misclassified and not flagged, as a share of the correctly classified
images. <strong>The adaptive rows (detector-aware attacks, Carlini &amp; Wagner 2017) are the ones to
believe</strong>: a detector evaluated only against attacks that ignore it says little.</p>
<table><thead><tr><th>detector</th><th>attack</th><th>kind</th><th>detection</th><th>FPR</th><th>ROC AUC</th>
<th>evasion</th><th>adv. found</th></tr></thead><tbody>
{% for r in rows %}<tr class="{{ 'adaptive' if r.kind == 'adaptive' else '' }}"><td>{{ r.detector }}</td>
<td>{{ r.attack }}</td><td>{{ r.kind }}</td><td>{{ r.detection }}</td><td>{{ r.fpr }}</td><td>{{ r.auc }}</td>
<td>{{ r.evasion }}</td><td>{{ r.found }}</td></tr>
{% endfor %}</tbody></table>
{% if figure %}<h2>ROC curves</h2><img alt="ROC curves per detector: non-adaptive solid, adaptive dashed"
src="data:image/png;base64,{{ figure }}">{% endif %}
</body></html>
"""


def render_detection(source: "str | os.PathLike[str] | dict", *, figure: bool = True,
                     title: str = "robustlab detection report") -> str:
    """The self-contained HTML page (every string from the document is escaped)."""
    doc = load_detection(source)
    return _render(doc, roc_figure(doc) if figure else None, title)


def _render(doc: dict, png: Optional[bytes], title: str) -> str:
    env = jinja2.Environment(autoescape=True)
    return env.from_string(_PAGE).render(
        title=title, model=str(doc.get("model", "?")), dataset=str(doc.get("dataset", "?")), eps=doc.get("eps", "?"),
        n=doc.get("n", "?"), fpr=doc.get("fpr", "?"), rows=_rows(doc),
        figure=None if png is None else base64.b64encode(png).decode("ascii"))


def save_detection(source: "str | os.PathLike[str] | dict", out: "str | os.PathLike[str]") -> Path:
    """Write ``detection.html`` (figure inlined) and ``detection_roc.png`` into folder ``out``."""
    doc = load_detection(source)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    png = roc_figure(doc)
    atomic_write_bytes(folder / "detection_roc.png", png)
    atomic_write_text(folder / "detection.html", _render(doc, png, "robustlab detection report"))
    return folder
