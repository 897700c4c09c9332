"""A self-contained HTML page (figures embedded as base64 PNG, no external assets), written atomically."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import torch

from robustlab._io import atomic_write_bytes, atomic_write_text
from robustlab.attacks import PGD
from robustlab.report import figures
from robustlab.threat import ThreatModel

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.ci{color:#777;font-size:.85em}.muted{color:#666;font-size:.9em}
.figs{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}img{max-width:100%}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _pct(rate: dict) -> str:
    return f'{100 * rate["value"]:.1f}% <span class="ci">[{100 * rate["ci_low"]:.1f}, {100 * rate["ci_high"]:.1f}]</span>'


def _table(name: str, d: dict) -> str:
    attacks = d["suite"]["attacks"]
    head = "".join(f"<th>{html.escape(a)}</th>" for a in attacks)
    rows = []
    for row in d["per_eps"]:
        cells = "".join(f'<td>{_pct(row["attacks"][a]["robust_accuracy"])}</td>' for a in attacks)
        rows.append(f'<tr><td>{row["eps"]:g}</td>{cells}<td><b>{_pct(row["worst_case"])}</b></td></tr>')
    return (f'<h3>{html.escape(name)}</h3><p>clean accuracy: <b>{_pct(d["clean_accuracy"])}</b> on n = {d["n"]} test images; '
            f'{d["seconds"]:.1f} s of attacks</p><table><tr><th>eps ({html.escape(d["suite"]["norm"])})</th>{head}'
            f"<th>worst case</th></tr>{''.join(rows)}</table>")


def write_comparison(out: "str | Path", evaluations: dict[str, tuple[Any, Any]], test_set, *, title: str,
                     wall_seconds: float, grid_n: int = 6) -> Path:
    """Write ``report.json``, the PNG figures and ``index.html`` for several evaluated models.

    ``evaluations[name] = (model, Evaluation)``; the image grid shows PGD examples at the middle
    eps of the suite for the first ``grid_n`` test images each model classifies correctly.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dicts = {name: ev.to_dict() for name, (_, ev) in evaluations.items()}
    payload = {"schema": "robustlab-report", "schema_version": 1, "title": title, "wall_seconds": wall_seconds, "models": dicts}
    atomic_write_text(out / "report.json", json.dumps(payload, indent=2) + "\n")
    first = next(iter(dicts.values()))
    curves = {name: (d["suite"]["eps"], [row["worst_case"] for row in d["per_eps"]]) for name, d in dicts.items()}
    curve_png = figures.eps_curves(curves, first["suite"]["norm"])
    atomic_write_bytes(out / "eps_curves.png", curve_png)
    sections = [f"<h1>{html.escape(title)}</h1>",
                f'<p class="muted">Robust accuracy = correctly classified and no attack succeeded; brackets are 95% Wilson '
                f"intervals (the test images are a sample). Total wall time {wall_seconds:.0f} s.</p>",
                "<h2>Robust accuracy vs eps</h2>", _img(curve_png, "robust accuracy vs eps"), "<h2>Per model</h2>"]
    sections += [_table(name, d) for name, d in dicts.items()]
    sections.append("<h2>Adversarial examples (PGD)</h2><div class='figs'>")
    for name, (model, ev) in evaluations.items():
        eps = ev.suite.eps[len(ev.suite.eps) // 2]
        keep = (ev.correct.nonzero().squeeze(1))[:grid_n]
        x, y = test_set.images[keep], test_set.labels[keep]
        res = PGD(ThreatModel(ev.suite.norm, eps), steps=40).attack(model, x, y)
        with torch.no_grad():
            p_clean = torch.softmax(model(x), 1)
            p_adv = torch.softmax(model(res.x_adv), 1)
        cls = test_set.classes
        clean_text = [f"{cls[int(p.argmax())]} ({float(p.max()):.2f})" for p in p_clean]
        adv_text = [f"{cls[int(p.argmax())]} ({float(p.max()):.2f})" + (" ✗" if s else "") for p, s in zip(p_adv, res.success)]
        amplify = min(10.0, 0.5 / max(float((res.x_adv - x).abs().max()), 1e-6))
        png = figures.adversarial_grid(x, res.x_adv, [cls[int(v)] for v in y], clean_text, adv_text, amplify=round(amplify, 1))
        fname = f"grid_{name}.png"
        atomic_write_bytes(out / fname, png)
        sections.append(f"<div><h3>{html.escape(name)}, eps {eps:g}</h3>{_img(png, f'adversarial examples for {name}')}</div>")
    sections.append("</div>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>")
    atomic_write_text(out / "index.html", page)
    return out / "index.html"
