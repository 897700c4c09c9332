"""A self-contained HTML page for a report: inline CSS, figures embedded as base64 PNG, no scripts,
no external assets, readable offline. Rendering only: every number comes from the report."""

from __future__ import annotations

import base64
import html
from typing import Iterable, Mapping, Optional, Sequence

from robustlab.evaluate.checks import CHECKS
from robustlab.report.schema import CertReport, Finding, ModelReport, Rate, Report, ThreatReport, TransferMatrix

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


def _e(text: object) -> str:
    return html.escape(str(text))


def img(png: bytes, alt: str, caption: str = "", cls: str = "") -> str:
    """An embedded PNG (``data:`` URI) in a figure with a caption."""
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    klass = f' class="{cls}"' if cls else ""
    return (f'<figure{klass}><img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
            f"{cap}</figure>")


def pct(r: Optional[Rate], ci: bool = True) -> str:
    """``74.6% [71.8, 77.2]``: the value and its confidence interval, in percent."""
    if r is None:
        return '<span class="ci">n/a</span>'
    main = f"{100 * r.value:.1f}%"
    if not ci:
        return main
    return f'{main} <span class="ci">[{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}]</span>'


def _cell(r: Optional[Rate], cls: str = "") -> str:
    data = f' data-value="{r.value:.6f}" data-k="{r.k}" data-n="{r.n}"' if r is not None else ""
    klass = f' class="{cls}"' if cls else ""
    return f"<td{klass}{data}>{pct(r)}</td>"


def _num(v: Optional[float], digits: int = 3) -> str:
    return "&ndash;" if v is None else f"{v:.{digits}g}"


def _table(head: Sequence[str], rows: Iterable[str], cls: str = "", left: int = 1) -> str:
    th = "".join(f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(head))
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _figure(figs: Mapping[str, bytes], name: str, alt: str, caption: str = "", cls: str = "") -> str:
    return img(figs[name], alt, caption, cls) if name in figs else ""


# -- sections ------------------------------------------------------------------------------------------


def _summary(report: Report, figs: Mapping[str, bytes]) -> str:
    first = report.models[0]
    cols: list[tuple[str, float]] = []
    for m in report.models:
        for t in m.threats:
            cols += [(t.norm, e) for e in t.eps if (t.norm, e) not in cols]
    cert_cols: list[tuple[int, int]] = []
    head = ["model", "clean accuracy", *(f"worst case, {n} eps {e:g}" for n, e in cols)]
    any_cert = next((c for m in report.models for c in m.certificates), None)
    if any_cert is not None:
        picks = sorted({0, len(any_cert.radii) // 4, len(any_cert.radii) // 2})
        head += [f"certified, r = {any_cert.radii[i]:.2g}" for i in picks]
        cert_cols = [(0, i) for i in picks]
    head.append("checks")
    rows = []
    for i, m in enumerate(report.models):
        cells = [f'<td class="l"><a href="#model-{i + 1}">{_e(m.name)}</a></td>', _cell(m.clean)]
        for norm, e in cols:
            r = next((row.worst_case for t in m.threats if t.norm == norm for row in t.rows if row.eps == e), None)
            cells.append(_cell(r))
        for _, j in cert_cols:
            c = m.certificates[0] if m.certificates else None
            r = None
            if c is not None and any_cert is not None:
                target = any_cert.radii[j]
                k = max((idx for idx, rad in enumerate(c.radii) if rad <= target + 1e-12), default=0)
                r = c.certified_accuracy[k]
            cells.append(_cell(r))
        status = "ok" if m.verdict.trusted else ("warn" if m.checks else "skip")
        label = {"ok": "trusted", "warn": f"{len(m.verdict.warnings)} warning(s)", "skip": "not checked"}[status]
        cells.append(f'<td><span class="badge {status}">{label}</span></td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    parts = ['<section id="summary"><h2>Summary</h2>',
             f'<p class="muted">{_e(first.data.name)} {_e(first.data.split or "")}, {first.data.n:,} images per model. '
             "Worst case: no adversarial example within eps was found by any attack. Brackets: 95% Wilson intervals "
             "(the test images are a sample).</p>",
             _table(head, rows, "summary")]
    figs_html = []
    for name in sorted(figs):
        if name.startswith("compare-") and name != "compare-certified.png":
            figs_html.append(img(figs[name], "worst-case robust accuracy of every model",
                                 "Worst-case robust accuracy vs eps; eps 0 is the clean accuracy; bands: 95% intervals."))
    if "compare-certified.png" in figs:
        figs_html.append(img(figs["compare-certified.png"], "certified accuracy of every model",
                             "Certified accuracy vs radius of every model's certifiers."))
    for tm in report.transfer:
        figs_html.append(img(figs[f"transfer-{tm.norm}-{tm.eps:g}.png"], "transfer matrix",
                             f"Robust accuracy of each target (row) on adversarial examples crafted on each source "
                             f"(column) with {tm.attack} at {tm.norm} eps {tm.eps:g}; the diagonal is white-box."))
    if figs_html:
        parts.append(f'<div class="figs">{"".join(figs_html)}</div>')
    for tm in report.transfer:
        parts.append(_transfer_table(tm))
    parts.append("</section>")
    return "".join(parts)


def _transfer_table(tm: TransferMatrix) -> str:
    rows = []
    for target, line in zip(tm.targets, tm.robust):
        rows.append(f'<tr><td class="l">{_e(target)}</td>{"".join(_cell(r) for r in line)}</tr>')
    return (f"<h3>Transfer matrix ({_e(tm.attack)}, {_e(tm.norm)} eps {tm.eps:g})</h3>"
            + _table(["target \\ source", *(_e(s) for s in tm.sources)], rows, "transfer"))


def _facts(m: ModelReport) -> str:
    info = m.model
    arch = info.get("architecture", {})
    training = info.get("training", {})
    adv = training.get("adversary", {}) if isinstance(training, dict) else {}
    items = [("model", f"{_e(arch.get('name', info.get('class', '?')))} ({info.get('parameters', 0):,} parameters)")]
    if info.get("role"):
        items.append(("defence", _e(info["role"])))
    if training:
        adv_txt = ", ".join(f"{k}={v}" for k, v in adv.items() if k != "name" and not isinstance(v, dict))
        thr = adv.get("threat") if isinstance(adv, dict) else None
        if isinstance(thr, dict):
            adv_txt = f"{thr.get('norm')} eps {thr.get('eps')}" + (", " + adv_txt if adv_txt else "")
        items.append(("training", f"{_e(adv.get('name', 'standard'))}{' (' + _e(adv_txt) + ')' if adv_txt else ''}, "
                                  f"{training.get('epochs', '?')} epochs on {training.get('train_size', '?')} images"))
    metrics = info.get("metrics", {})
    if isinstance(metrics, dict) and "test_accuracy" in metrics:
        items.append(("test accuracy (training run)", f"{100 * metrics['test_accuracy']:.2f}%"))
    items += [
        ("data", f"{_e(m.data.name)} {_e(m.data.split or '')}: {m.data.n:,} images of shape {tuple(m.data.shape)}"),
        ("suite", f"{_e(m.suite.get('name', '?'))}: attacks {_e(', '.join(m.suite.get('attacks', [])))}"),
        ("run", f"{m.seconds:.0f} s on {_e(m.device)}, batch size {m.batch_size}, seed {m.seed}"),
    ]
    return '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _threat_table(t: ThreatReport, clean: Rate) -> str:
    head = [f"eps ({_e(t.norm)})", *(_e(a) for a in t.attacks)]
    has_noise = bool(t.rows) and t.rows[0].noise is not None
    sources = list(dict.fromkeys(s for row in t.rows for s in row.transfer))
    if has_noise:
        head.append("random noise")
    head += [f"transfer from {_e(s)}" for s in sources]
    head += ["white-box worst", "worst case"]
    rows = [f'<tr><td class="l">0 (clean)</td>{_cell(clean)}' + "<td></td>" * (len(head) - 2) + "</tr>"]
    for row in t.rows:
        cells = [f'<td class="l">{row.eps:g}</td>', *(_cell(a.robust) for a in row.attacks)]
        if has_noise:
            cells.append(_cell(row.noise))
        cells += [_cell(row.transfer.get(s)) for s in sources]
        cells += [_cell(row.white_box), _cell(row.worst_case, "worst")]
        rows.append(f'<tr class="worst-row">{"".join(cells)}</tr>')
    return _table(head, rows, f"robust robust-{_e(t.norm)}")


def _norms_table(t: ThreatReport) -> str:
    rows = []
    for row in t.rows:
        for a in row.attacks:
            d = a.norms
            rows.append(
                f'<tr><td class="l">{row.eps:g}</td><td class="l">{_e(a.attack)}</td>{_cell(a.success)}'
                f"<td>{_num(a.distance.median)}</td><td>{_num(d['linf'].median)}</td><td>{_num(d['l2'].median)}</td>"
                f"<td>{_num(d['l0'].median, 4)}</td><td>{a.seconds:.1f}</td></tr>")
    return ("<details><summary>Attack success and the norms of the perturbations found (medians)</summary>"
            + _table(["eps", "attack", "success rate", f"{_e(t.norm)} distance", "linf", "l2", "l0 (pixels)",
                      "seconds"], rows, "norms", left=2) + "</details>")


def _cert_section(m: ModelReport, prefix: str, figs: Mapping[str, bytes]) -> str:
    if not m.certificates:
        return ""
    parts = ["<h3>Certified robustness</h3>"]
    for c in m.certificates:
        picks = sorted({0, len(c.radii) // 8, len(c.radii) // 4, len(c.radii) // 2, 3 * len(c.radii) // 4})
        head = ["certifier", *(f"r = {c.radii[i]:.3g}" for i in picks), "abstain", "median radius", "seconds"]
        row = (f'<tr><td class="l">{_e(c.label)}</td>{"".join(_cell(c.certified_accuracy[i]) for i in picks)}'
               f"{_cell(c.abstain)}<td>{_num(c.radius.median)}</td><td>{c.seconds:.1f}</td></tr>")
        what = ("the smoothed classifier g (holds with probability &ge; 1 &minus; alpha = "
                f"{1 - c.alpha:g})" if c.certifies == "smoothed" else "the model itself")
        opts = ", ".join(f"{k}={v}" for k, v in c.options.items())
        parts.append(_table(head, [row], "certified") +
                     f'<p class="muted">{_e(c.norm)} radii certifying {what}; options {_e(opts)}.</p>')
    parts.append(_figure(figs, f"{prefix}-certified.png", "certified accuracy vs radius",
                         "Certified accuracy vs radius: the certified prediction is correct and its radius is at least r; "
                         "abstentions count as errors. Bands: 95% intervals."))
    return "".join(parts)


def _checks_section(m: ModelReport) -> str:
    if not m.checks:
        return ('<h3>Gradient-masking checks</h3><div class="verdict skip">The checks were switched off: the robust '
                "accuracy is an upper bound of unknown tightness.</div>")
    rows = []
    for f in m.checks:
        rows.append(f'<tr><td class="l"><span class="badge {f.status}">{f.status}</span></td>'
                    f'<td class="l"><a href="{_e(f.doc)}">{_e(f.title)}</a></td>'
                    f'<td class="evidence">{_e(f.evidence)}</td></tr>')
    return "<h3>Gradient-masking checks</h3>" + _table(["", "check", "evidence"], rows, "checks", left=3)


def _model_section(i: int, m: ModelReport, figs: Mapping[str, bytes]) -> str:
    from robustlab.report.build import slug

    prefix = f"{i + 1}-{slug(m.name)}"
    status = "ok" if m.verdict.trusted else ("warn" if m.checks else "skip")
    parts = [f'<section id="model-{i + 1}"><h2>{_e(m.name)}</h2>',
             f'<div class="verdict {status}"><b>{"Trusted" if status == "ok" else ("Not trusted" if status == "warn" else "Unchecked")}'
             f":</b> {_e(m.verdict.summary)}</div>",
             _facts(m),
             f'<p>Clean accuracy: <b data-value="{m.clean.value:.6f}">{pct(m.clean)}</b> on {m.clean.n:,} images.</p>']
    for t in m.threats:
        parts.append(f"<h3>Robust accuracy, {_e(t.norm)} threat model</h3>")
        parts.append(_threat_table(t, m.clean))
        never = f"{100 * t.unbroken.value:.1f}%"
        md = t.min_distance
        parts.append(f'<p class="muted">Worst case over every attack, radius &le; eps, noise and transfer examples. '
                     f"Median smallest adversarial distance found: {_num(md.median)} ({_e(t.norm)}); no adversarial "
                     f"example found at any radius for {never} of the images.</p>")
        parts.append('<div class="figs">' + _figure(figs, f"{prefix}-{t.norm}-eps.png", "robust accuracy vs eps",
                                                     "Robust accuracy vs eps per attack; black: the worst case with its 95% band.")
                     + _figure(figs, f"{prefix}-{t.norm}-distances.png", "minimal adversarial distances",
                               "Smallest adversarial distance found per correctly classified image (an upper bound on "
                               "its true minimal distance).")
                     + _figure(figs, f"{prefix}-{t.norm}-intervals.png", "robustness intervals",
                               "Per image: the true minimal adversarial distance lies in [certified radius, smallest "
                               "adversarial found].") + "</div>")
        parts.append(_norms_table(t))
    parts.append(_cert_section(m, prefix, figs))
    parts.append(_checks_section(m))
    grids = [_figure(figs, f"{prefix}-{kind}.png", f"{kind} images", cap, "grid") for kind, cap in (
        ("least-robust", "Least robust: the smallest adversarial perturbations found."),
        ("most-robust", "Most robust: images no attack broke (the attempt closest to success at the largest eps), "
                        "else those needing the largest perturbation."))]
    if any(grids):
        parts.append("<h3>Adversarial examples</h3>" + f'<div class="figs">{"".join(grids)}</div>')
    for note in m.notes:
        parts.append(f'<p class="note">{_e(note)}</p>')
    parts.append("</section>")
    return "".join(parts)


def _about() -> str:
    items = "".join(f'<dt id="check-{name}">{_e(title)}</dt><dd>{_e(text)} <span class="muted">({_e(ref)})</span></dd>'
                    for name, (title, text, ref) in CHECKS.items())
    return ('<section id="about"><h2>How to read this report</h2>'
            "<p><b>Robust accuracy</b> at eps is the fraction of test images that are classified correctly and for "
            "which no attack found an adversarial example within distance eps. Attacks give an <i>upper bound</i> on "
            "the true robust accuracy (a stronger attack can only lower it); certificates give a <i>lower bound</i>. "
            "Every accuracy is an estimate from a sample of test images, shown with its 95% Wilson interval.</p>"
            "<p>The <b>worst case</b> at eps counts an image as broken if any attack at any radius found an adversarial "
            "example within eps (white-box attacks, random noise, transfer from other models, minimal-norm attacks), "
            "so the curve never rises with eps.</p>"
            f'<h3>Gradient-masking checks</h3><dl class="checks">{items}</dl></section>')


def render(report: Report, figs: Mapping[str, bytes]) -> str:
    """The page: summary (comparison and transfer), one section per model, how to read it."""
    nav = "".join(f'<a href="#model-{i + 1}">{_e(m.name)}</a>' for i, m in enumerate(report.models))
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in report.notes)
    body = (f"<main><header><h1>{_e(report.title)}</h1>"
            f'<p class="meta">robustlab {_e(report.robustlab_version)} &middot; {_e(report.created)} &middot; report schema '
            f"{report.schema_version}</p></header>"
            f'<nav><a href="#summary">Summary</a>{nav}<a href="#about">How to read</a></nav>{notes}'
            + _summary(report, figs)
            + "".join(_model_section(i, m, figs) for i, m in enumerate(report.models))
            + _about() + "</main>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(report.title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n")
