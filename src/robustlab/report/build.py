"""Writing and printing reports: :func:`save` writes ``report.json`` (the report's own JSON), the
PNG figures and ``index.html`` atomically; :func:`table` and :func:`compare_table` print them as
text. Reports are only read here (their types are :mod:`robustlab.report.schema`'s, assembled by
:mod:`robustlab.report.assemble`); nothing here imports ``robustlab.evaluate``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from robustlab._io import atomic_write_bytes, atomic_write_text
from robustlab.report.paths import slug

if TYPE_CHECKING:
    from robustlab.report.schema import AttackRun, Rate, Report


def save(rep: Report, out: "str | os.PathLike[str]", *, html: bool = True) -> Path:
    """Write ``report.json``, and unless ``html=False`` the figures (``figures/*.png``) and the
    self-contained ``index.html``, into folder ``out``; every file atomically. Returns ``out``."""
    from robustlab.report import figures
    from robustlab.report import html as html_mod

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = rep.to_json()  # raises before anything is written if a value is not JSON
    if html:
        figs = figures.render(rep)
        for fname, png in figs.items():  # names hold model names and norms from the report: keep them to one file
            atomic_write_bytes(out / "figures" / slug(fname), png)
        atomic_write_text(out / "index.html", html_mod.render(rep, figs))
    atomic_write_text(out / "report.json", text)
    return out


def table(rep: Report) -> str:
    """A plain-text summary: per model and threat model, clean and robust accuracy per eps."""
    lines = []
    for m in rep.models:
        lines.append(f"{m.name}: " + ("no labelled images (clean accuracy n/a)" if m.clean is None else
                                      f"clean accuracy {m.clean.value:.4f} [{m.clean.ci_low:.4f}, "
                                      f"{m.clean.ci_high:.4f}] (n={m.clean.n})")
                     + ("" if m.command == "evaluate" else f" (robustlab {m.command})"))
        for t in m.threats:
            sources = list(dict.fromkeys(s for row in t.rows for s in row.transfer))
            extra = (["noise"] if t.rows and t.rows[0].noise is not None else []) + [f"transfer:{s}" for s in sources]
            labels = list(t.attacks) + extra + ["worst"]
            widths = [max(10, len(label) + 2) for label in labels]  # every header readable, columns aligned
            lines.append(f"  {'eps (' + t.norm + ')':>12}" + "".join(f"{a:>{w}}" for a, w in zip(labels, widths)))
            for row in t.rows:
                values = [a.robust.value for a in row.attacks] + ([row.noise.value] if row.noise is not None else [])
                values += [row.transfer[s].value if s in row.transfer else None for s in sources]
                values.append(row.worst_case.value)
                cells = "".join(f"{'-' if v is None else f'{v:.4f}':>{w}}" for v, w in zip(values, widths))
                lines.append(f"  {row.eps:>12.4g}{cells}")
        for c in m.certificates:
            pts = sorted({0, len(c.radii) // 4, len(c.radii) // 2, 3 * len(c.radii) // 4, len(c.radii) - 1})
            lines.append(f"  certified ({c.label}, {c.norm}): " +
                         ", ".join(f"r={c.radii[i]:.3g}: {c.certified_accuracy[i].value:.4f}" for i in pts if i >= 0))
        lines += [_run_line(a) for a in m.attack_runs]
        for v in m.verification:
            lines.append(f"  verification ({v.method}): " + ", ".join(f"{k} {n}" for k, n in v.counts.items())
                         + f" of {len(v.statuses)} ({v.total_seconds:.1f} s)")
        if m.detection is not None:
            for r in m.detection.rows:
                det = "n/a" if r.detection is None else f"{r.detection.value:.4f}"
                auc = "n/a" if r.auc is None else f"{r.auc:.3f}"
                lines.append(f"  detection ({r.detector}, {r.attack}{', adaptive' if r.adaptive else ''}): detected "
                             f"{det}, AUC {auc}, evasion {r.evasion.value:.4f}")
        if m.checks:
            lines.append(f"  checks: {m.verdict.summary}")
    return "\n".join(lines)


def _run_line(a: AttackRun) -> str:
    threat = f"{a.norm} " + ("minimal norm" if a.eps is None else f"eps {a.eps:g}")
    med = a.result.distance.median
    return (f"  attack ({a.result.attack}, {threat}): robust {a.result.robust.value:.4f} [{a.result.robust.ci_low:.4f}, "
            f"{a.result.robust.ci_high:.4f}], success on correct {a.result.success.value:.4f}, median distance "
            f"{'-' if med is None else f'{med:.4g}'}" + (f", examples {a.examples}" if a.examples else ""))


def compare_table(rep: Report) -> str:
    """Models side by side: clean accuracy, worst-case robust accuracy at each eps of each threat
    model, each attack run's robust accuracy, and certified accuracy at each radius of each certifier
    (``-`` where a model has no such number)."""
    cols: dict[str, dict[str, Optional[Rate]]] = {"clean": {m.name: m.clean for m in rep.models}}
    for m in rep.models:
        for t in m.threats:
            for row in t.rows:
                cols.setdefault(f"{t.norm} {row.eps:g}", {})[m.name] = row.worst_case
        for a in m.attack_runs:
            key = f"{a.result.attack} {a.norm} " + ("min" if a.eps is None else f"{a.eps:g}")
            cols.setdefault(key, {})[m.name] = a.result.robust
        for c in m.certificates:
            for r, acc in zip(c.radii, c.certified_accuracy):
                if len(c.radii) <= 6 or r in (c.radii[0], c.radii[len(c.radii) // 4], c.radii[len(c.radii) // 2]):
                    cols.setdefault(f"cert {c.method} {c.norm} {r:.3g}", {})[m.name] = acc
    width = max(12, *(len(m.name) + 2 for m in rep.models))
    widths = [max(9, len(k) + 2) for k in cols]
    head = f"{'model':<{width}}" + "".join(f"{k:>{w}}" for k, w in zip(cols, widths)) + "  trusted"
    lines = [head]
    for m in rep.models:
        cells = []
        for (key, col), w in zip(cols.items(), widths):
            r = col.get(m.name)
            cells.append(f"{'-':>{w}}" if r is None else f"{100 * r.value:>{w - 1}.1f}%")
        trusted = "yes" if m.verdict.trusted else ("no" if m.checks else "unchecked" if m.command == "evaluate"
                                                   else m.command)
        lines.append(f"{m.name:<{width}}" + "".join(cells) + f"  {trusted}")
    return "\n".join(lines)
