"""A self-contained HTML page for a report: inline CSS, figures embedded as base64 PNG, no scripts,
no external assets, readable offline. Rendering only: every number comes from the report.

The page is the Jinja2 template ``page.html`` rendered with autoescape, so every string that comes
from a report (model names and metadata, suite entries, findings, notes; a report file may come from
anyone) is escaped by construction; links pass :func:`safe_url` (http, https or relative only).
"""

from __future__ import annotations

import base64
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional
from urllib.parse import urlsplit

import jinja2
from markupsafe import Markup

from robustlab.report.explain import CHECKS
from robustlab.report.paths import slug

if TYPE_CHECKING:
    from robustlab.report.schema import AttackRun, ModelReport, Rate, Report

CSS = """
:root{--fg:#1d2330;--muted:#5f6b7a;--line:#dfe3ea;--bg:#f6f7f9;--ok:#1b7f3a;--okbg:#e7f5ec;--warn:#a15c00;
--warnbg:#fff4e0;--skip:#6b7280;--skipbg:#eef0f3;--accent:#1f5fbf}
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);
background:var(--bg);margin:0}
main{max-width:1120px;margin:0 auto;padding:28px 28px 60px}
header h1{font-size:26px;margin:0 0 4px}
.meta,.muted{color:var(--muted);font-size:13px}
nav{margin:14px 0 6px;font-size:14px}nav a{margin-right:14px}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:18px 22px;margin:18px 0}
h2{font-size:20px;margin:0 0 10px}h3{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;margin:8px 0 6px;font-variant-numeric:tabular-nums;font-size:14px}
th,td{border-bottom:1px solid var(--line);padding:5px 10px;text-align:right;vertical-align:top}
th{font-weight:600;background:#fafbfc;border-bottom:2px solid var(--line)}
td.l,th.l{text-align:left}tr.worst td{font-weight:650;background:#f8fafd}
.ci{color:var(--muted);font-size:12px;font-weight:400}
.badge{display:inline-block;border-radius:999px;padding:1px 9px;font-size:12px;font-weight:650;letter-spacing:.02em}
.badge.pass,.badge.ok{background:var(--okbg);color:var(--ok)}.badge.warn{background:var(--warnbg);color:var(--warn)}
.badge.skip{background:var(--skipbg);color:var(--skip)}.badge.note{background:#e8f0fb;color:#1f5fbf}
.verdict{border-radius:8px;padding:10px 14px;margin:8px 0 12px;border-left:5px solid}
.verdict.ok{background:var(--okbg);border-color:var(--ok)}.verdict.warn{background:var(--warnbg);border-color:var(--warn)}
.verdict.skip{background:var(--skipbg);border-color:var(--skip)}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:14px;margin:6px 0}
.facts dt{color:var(--muted)}.facts dd{margin:0}
.figs{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
figure{margin:6px 0;flex:0 1 auto;max-width:100%}figure img{display:block;max-width:100%;height:auto;
border:1px solid var(--line);border-radius:6px;background:#fff}
.figs figure img{max-height:360px}.figs figure.grid img{max-height:none}
figcaption{font-size:12.5px;color:var(--muted);max-width:520px;margin-top:4px}
.note{background:#f1f5fb;border-radius:6px;padding:8px 12px;font-size:14px;margin:8px 0}
details summary{cursor:pointer;color:var(--accent);font-size:14px;margin:8px 0}
dl.checks dt{font-weight:650;margin-top:10px}dl.checks dd{margin:2px 0 0}
.evidence{font-size:13.5px;text-align:left}
"""

#: Model metadata keys shown as links (when their scheme is safe) in a model's facts.
LINK_KEYS = ("url", "homepage", "paper", "source")
_SAFE_SCHEMES = ("http", "https")


def is_safe_url(url: object) -> bool:
    """Whether ``url`` is an http(s) URL or a relative reference (a path or ``#anchor``) with no
    scheme: never ``javascript:``, ``data:``, ``vbscript:``... Control characters and whitespace
    that browsers strip before reading a scheme (``java\tscript:``) are refused too."""
    if not isinstance(url, str) or not url.strip():
        return False
    if re.search(r"[\x00-\x20\x7f]", url.strip()) or "\\" in url:
        return False
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return False
    if parts.scheme:
        return parts.scheme.lower() in _SAFE_SCHEMES and bool(parts.netloc)
    return not url.strip().startswith("//")  # protocol-relative: another host


def safe_url(url: object) -> str:
    """``url`` if :func:`is_safe_url`, else ``"#"`` (an inert link)."""
    return str(url).strip() if is_safe_url(url) else "#"


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=False, lstrip_blocks=False)
    env.filters["safe_url"] = safe_url
    env.filters["is_safe_url"] = is_safe_url
    env.globals["zip"] = zip
    return env


def _figure(figs: Mapping[str, bytes], name: str, alt: str, caption: str = "", cls: str = "") -> Optional[dict]:
    if name not in figs:
        return None
    return {"src": "data:image/png;base64," + base64.b64encode(figs[name]).decode("ascii"), "alt": alt,
            "caption": caption, "cls": cls}


def _status(trusted: bool, checked: bool) -> str:
    return "ok" if trusted else ("warn" if checked else "skip")


def _summary(report: Report, figs: Mapping[str, bytes]) -> dict[str, Any]:
    cols: list[tuple[str, float]] = []
    for m in report.models:
        for t in m.threats:
            cols += [(t.norm, e) for e in t.eps if (t.norm, e) not in cols]
    head = ["model", "clean accuracy", *(f"worst case, {n} eps {e:g}" for n, e in cols)]
    # Certified accuracy per norm: the radii of the first certificate in that norm, every model's own
    # certificate in the same norm read at them (an l2 smoothing radius is never read as an linf one).
    cert_cols: list[tuple[str, float]] = []
    for norm in dict.fromkeys(c.norm for m in report.models for c in m.certificates):
        ref = next(c for m in report.models for c in m.certificates if c.norm == norm)
        if ref.radii:
            picks = sorted({0, len(ref.radii) // 4, len(ref.radii) // 2})
            cert_cols += [(norm, ref.radii[i]) for i in picks]
    head += [f"certified, {norm} r = {r:.2g}" for norm, r in cert_cols]
    run_cols = list(dict.fromkeys(_run_key(a) for m in report.models for a in m.attack_runs))
    head += [f"robust, {key}" for key in run_cols]
    head.append("checks")
    rows = []
    for m in report.models:
        cells: list[Optional[Rate]] = [m.clean]
        for norm, e in cols:
            cells.append(next((row.worst_case for t in m.threats if t.norm == norm for row in t.rows if row.eps == e),
                              None))
        for norm, target in cert_cols:
            c = next((c for c in m.certificates if c.norm == norm), None)
            r = None
            if c is not None and c.radii and c.certified_accuracy:
                k = max((idx for idx, rad in enumerate(c.radii) if rad <= target + 1e-12), default=0)
                r = c.certified_accuracy[min(k, len(c.certified_accuracy) - 1)]
            cells.append(r)
        for key in run_cols:
            cells.append(next((a.result.robust for a in m.attack_runs if _run_key(a) == key), None))
        status = _status(m.verdict.trusted, bool(m.checks))
        label = {"ok": "trusted", "warn": f"{len(m.verdict.warnings)} warning(s)",
                 "skip": "not checked" if m.command == "evaluate" else m.command}[status]
        rows.append({"name": m.name, "cells": cells, "status": status, "label": label})
    figures = [_figure(figs, name, "worst-case robust accuracy of every model",
                       "Worst-case robust accuracy vs eps; eps 0 is the clean accuracy; bands: 95% intervals.")
               for name in sorted(figs) if name.startswith("compare-") and not name.startswith("compare-certified")]
    figures += [_figure(figs, name, "certified accuracy of every model",
                        f"Certified accuracy vs {name[len('compare-certified-'):-4]} radius of every model's "
                        "certifiers in that norm.")
                for name in sorted(figs) if name.startswith("compare-certified-")]
    for tm in report.transfer:
        figures.append(_figure(figs, f"transfer-{tm.norm}-{tm.eps:g}.png", "transfer matrix",
                               f"Robust accuracy of each target (row) on adversarial examples crafted on each source "
                               f"(column) with {tm.attack} at {tm.norm} eps {tm.eps:g}; the diagonal is white-box."))
    return {"head": head, "rows": rows, "figures": [f for f in figures if f]}


def _run_key(a: AttackRun) -> str:
    """An attack run's column name: attack, norm and radius (minimal-norm searches have none)."""
    return f"{a.result.attack} {a.norm}" + (" (minimal norm)" if a.eps is None else f" eps {a.eps:g}")


def _settings(m: ModelReport) -> str:
    return ", ".join(f"{k} {v}" for k, v in m.suite.items() if k != "name" and v not in (None, [], {}))


def _facts(m: ModelReport) -> list[tuple[str, str]]:
    info = m.model if isinstance(m.model, dict) else {}
    arch = info.get("architecture", {})
    arch = arch if isinstance(arch, dict) else {"name": arch}
    training = info.get("training", {})
    training = training if isinstance(training, dict) else {}
    adv = training.get("adversary", {})
    adv = adv if isinstance(adv, dict) else {"name": adv}
    params = info.get("parameters", 0)
    items = [("model", f"{arch.get('name', info.get('class', '?'))} "
                       f"({params:,} parameters)" if isinstance(params, int) else f"{arch.get('name', info.get('class', '?'))}")]
    if isinstance(info.get("networks"), list):
        items.append(("networks", ", ".join(map(str, info["networks"]))))
    if info.get("description"):
        items.append(("description", str(info["description"])))
    if info.get("role"):
        items.append(("defence", str(info["role"])))
    if training:
        adv_txt = ", ".join(f"{k}={v}" for k, v in adv.items() if k != "name" and not isinstance(v, dict))
        thr = adv.get("threat")
        if isinstance(thr, dict):
            adv_txt = f"{thr.get('norm')} eps {thr.get('eps')}" + (", " + adv_txt if adv_txt else "")
        items.append(("training", f"{adv.get('name', 'standard')}{' (' + adv_txt + ')' if adv_txt else ''}, "
                                  f"{training.get('epochs', '?')} epochs on {training.get('train_size', '?')} images"))
    metrics = info.get("metrics", {})
    if isinstance(metrics, dict) and isinstance(metrics.get("test_accuracy"), (int, float)):
        items.append(("test accuracy (training run)", f"{100 * metrics['test_accuracy']:.2f}%"))
    suite_attacks = m.suite.get("attacks", [])
    if m.data.shape:
        items.append(("data", f"{m.data.name} {m.data.split or ''}: {m.data.n:,} images of shape {tuple(m.data.shape)}"))
    else:
        items.append(("data", f"{m.data.name}: {m.data.n:,}"))
    if m.command == "evaluate":
        items.append(("suite", f"{m.suite.get('name', '?')}: attacks "
                               f"{', '.join(map(str, suite_attacks)) if isinstance(suite_attacks, list) else suite_attacks}"))
    else:
        items.append(("command", f"robustlab {m.command}: {_settings(m)}"))
    items.append(("run", f"{m.seconds:.0f} s on {m.device}, batch size {m.batch_size}, seed {m.seed}"))
    return items


def _model(i: int, m: ModelReport, figs: Mapping[str, bytes]) -> dict[str, Any]:

    prefix = f"{i + 1}-{slug(m.name)}"
    info = m.model if isinstance(m.model, dict) else {}
    links = [(k, info[k]) for k in LINK_KEYS if isinstance(info.get(k), str)]
    threats = []
    for t in m.threats:
        has_noise = bool(t.rows) and t.rows[0].noise is not None
        sources = list(dict.fromkeys(s for row in t.rows for s in row.transfer))
        head = [f"eps ({t.norm})", *t.attacks] + ([t.black_box] if has_noise else [])
        head += [f"transfer from {s}" for s in sources] + ["white-box worst", "worst case"]
        status = _status(t.verdict.trusted, True) if t.verdict is not None else "skip"
        label = {"ok": "checks pass", "warn": "checks warn", "skip": "unchecked"}[status]
        figures = [
            _figure(figs, f"{prefix}-{t.norm}-eps.png", "robust accuracy vs eps",
                    "Robust accuracy vs eps per attack; black: the worst case with its 95% band."),
            _figure(figs, f"{prefix}-{t.norm}-distances.png", "minimal adversarial distances",
                    "Smallest adversarial distance found per correctly classified image (an upper bound on its true "
                    "minimal distance)."),
            _figure(figs, f"{prefix}-{t.norm}-intervals.png", "robustness intervals",
                    "Per image: the true minimal adversarial distance lies in [certified radius, smallest adversarial "
                    "found]."),
        ]
        threats.append({"report": t, "head": head, "has_noise": has_noise, "sources": sources, "status": status,
                        "label": label, "figures": [f for f in figures if f]})
    certs = []
    for c in m.certificates:
        n = len(c.radii)
        picks = sorted({0, n // 8, n // 4, n // 2, 3 * n // 4}) if n else []
        picks = [p for p in picks if p < len(c.certified_accuracy)]
        certs.append({"report": c, "radii": [f"r = {c.radii[p]:.3g}" for p in picks],
                      "cells": [c.certified_accuracy[p] for p in picks],
                      "options": ", ".join(f"{k}={v}" for k, v in c.options.items())})
    grids = [_figure(figs, f"{prefix}-{kind}.png", f"{kind} images", cap, "grid") for kind, cap in (
        ("least-robust", "Least robust: the smallest adversarial perturbations found."),
        ("most-robust", "Most robust: images no attack broke (the attempt closest to success at the largest eps), "
                        "else those needing the largest perturbation."))]
    runs = [{"report": a, "key": _run_key(a), "options": ", ".join(f"{k}={v}" for k, v in a.config.items()),
             "examples": a.examples,
             "figure": _figure(figs, f"{prefix}-attack-{j + 1}-distances.png", "distances of the adversarial examples",
                               "Distances of the adversarial examples the attack found on correctly classified images "
                               "(upper bounds on each image's minimal adversarial distance).")}
            for j, a in enumerate(m.attack_runs)]
    return {
        "report": m, "status": _status(m.verdict.trusted, bool(m.checks)), "facts": _facts(m), "links": links,
        "threats": threats, "certs": certs, "runs": runs,
        "verification": [{"report": v, "rows": list(zip(v.items, v.statuses, v.seconds))} for v in m.verification],
        "detection_figure": _figure(figs, f"{prefix}-detection-roc.png", "ROC curves per detector",
                                    "ROC curves per detector: non-adaptive solid, adaptive dashed; dots: the fitted "
                                    "threshold's false-positive and detection rates."),
        "cert_figures": [_figure(figs, f"{prefix}-certified-{norm}.png", f"certified accuracy vs {norm} radius",
                                 f"Certified accuracy vs {norm} radius: the certified prediction is correct and its "
                                 "radius is at least r; abstentions count as errors. Bands: 95% intervals.")
                         for norm in dict.fromkeys(c.norm for c in m.certificates)],
        "by_threat": len({f.norm for f in m.checks}) > 1 or len(m.threats) > 1,
        "grids": [g for g in grids if g],
    }


def render(report: Report, figs: Mapping[str, bytes]) -> str:
    """The page: summary (comparison and transfer), one section per model, how to read it."""
    if not report.models:
        raise ValueError("a report needs at least one model to render")
    page = _environment().get_template("page.html").render(
        report=report, first=report.models[0], css=Markup(CSS), summary=_summary(report, figs),
        models=[_model(i, m, figs) for i, m in enumerate(report.models)], checks=CHECKS)
    return page.strip() + "\n"
