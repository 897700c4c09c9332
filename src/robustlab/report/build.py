"""Assembling, combining, saving and loading reports.

:func:`report` wraps one or more :class:`~robustlab.report.schema.ModelReport` (made from the
records by :func:`robustlab.evaluate.summarize.model_report`), adding the transfer matrices between
them; :func:`save` writes ``report.json``, the PNG figures and ``index.html`` atomically;
:func:`load` reads a report back, strictly. Nothing here imports ``robustlab.evaluate``.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

from robustlab._io import atomic_write_bytes, atomic_write_text
from robustlab.report.schema import (
    SCHEMA,
    SCHEMA_VERSION,
    AttackRun,
    ModelReport,
    Rate,
    Report,
    TransferMatrix,
    from_dict,
    to_dict,
)


def transfer_matrices(models: Sequence[ModelReport]) -> list[TransferMatrix]:
    """Matrices over the models of a report: entry (target, source) is the target's robust accuracy
    against the source's transfer examples; the diagonal is the target's own white-box result for the
    transfer attack. Built per (norm, eps) where at least one off-diagonal entry exists."""
    names = [m.name for m in models]
    out = []
    keys: dict[tuple[str, float], None] = {}
    for m in models:
        for t in m.threats:
            for row in t.rows:
                if row.transfer:
                    keys[(t.norm, row.eps)] = None
    for norm, eps in keys:
        attack = next((m.suite.get("transfer_attack", "pgd") for m in models if m.suite.get("transfer")), "pgd")
        sources = list(names)
        for m in models:
            for t in m.threats:
                if t.norm == norm:
                    for row in t.rows:
                        if row.eps == eps:
                            sources += [s for s in row.transfer if s not in sources]
        table = []
        for m in models:
            line: list = [None] * len(sources)
            for t in m.threats:
                if t.norm != norm:
                    continue
                for row in t.rows:
                    if row.eps != eps:
                        continue
                    for j, s in enumerate(sources):
                        if s == m.name:
                            line[j] = next((a.robust for a in row.attacks if a.attack == attack), None)
                        elif s in row.transfer:
                            line[j] = row.transfer[s]
            table.append(line)
        out.append(TransferMatrix(norm, eps, attack, sources, names, table))
    return out


def report(models: Sequence[ModelReport], title: str = "robustlab report", notes: Sequence[str] = ()) -> Report:
    """A report over ``models`` (names must differ), with their transfer matrices."""
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names in a report must differ, got {names}")
    from robustlab import __version__

    return Report(title=title, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  robustlab_version=__version__, models=list(models), transfer=transfer_matrices(models),
                  notes=list(notes))


def combine(reports: Sequence[Report], title: Optional[str] = None) -> Report:
    """One report over the models of several (for side-by-side comparison); a repeated model name
    gets the command that wrote it as a suffix (``mlp (certify)``), else a number."""
    models: list[ModelReport] = []
    seen: dict[str, int] = {}
    for r in reports:
        for m in r.models:
            name = m.name
            if name in seen:
                seen[name] += 1
                name = f"{name} ({m.command})" if m.command != "evaluate" else f"{name} ({seen[name]})"
                while name in seen:
                    name = f"{name} ({seen[m.name]})"
                seen[name] = 1
            else:
                seen[name] = 1
            models.append(m if name == m.name else ModelReport(**{**m.__dict__, "name": name}))
    notes = [n for r in reports for n in r.notes]
    return report(models, title or "robustlab comparison: " + " vs ".join(m.name for m in models), notes)


# -- files ---------------------------------------------------------------------------------------------


def dumps(rep: Report) -> str:
    return json.dumps(to_dict(rep), indent=1, allow_nan=False) + "\n"


def loads(text: str, where: str = "report") -> Report:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{where} is not a robustlab report (expected \"schema\": \"{SCHEMA}\")")
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise ValueError(f"{where} has schema_version {version!r}; this robustlab reads versions 1..{SCHEMA_VERSION} "
                         "(a newer robustlab wrote it?)")
    rep = from_dict(Report, data, where)
    rep.schema_version = SCHEMA_VERSION  # an older file is read with the defaults of the newer keys: now a current one
    return rep


def load(path: "str | os.PathLike[str]") -> Report:
    """Read a report from ``report.json`` (or a folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    if not p.is_file():
        raise FileNotFoundError(f"no report at {p}")
    return loads(p.read_text(), str(p))


def moved(rep: Report, source: "str | os.PathLike[str]", target: "str | os.PathLike[str]") -> Report:
    """``rep`` (read from the folder ``source``) with its relative paths (the attack runs' exported
    examples) made relative to the folder ``target`` it is about to be written into."""
    src, dst = Path(source).resolve(), Path(target).resolve()
    if src != dst:
        for m in rep.models:
            for a in m.attack_runs:
                if a.examples and not Path(a.examples).is_absolute():
                    a.examples = os.path.relpath(src / a.examples, dst)
    return rep


def slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")
    return s or "model"


def save(rep: Report, out: "str | os.PathLike[str]", *, html: bool = True) -> Path:
    """Write ``report.json``, and unless ``html=False`` the figures (``figures/*.png``) and the
    self-contained ``index.html``, into folder ``out``; every file atomically. Returns ``out``."""
    from robustlab.report import figures
    from robustlab.report import html as html_mod

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = dumps(rep)  # raises before anything is written if a value is not JSON
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
