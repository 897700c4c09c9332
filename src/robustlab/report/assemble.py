"""Assembling reports: :func:`report` wraps one or more :class:`~robustlab.report.schema.ModelReport`
(made from the records by :func:`robustlab.evaluate.summarize.model_report`), adding the transfer
matrices between them; :func:`combine` puts the models of several reports side by side; :func:`moved`
re-bases a report's relative paths. Nothing here imports ``robustlab.evaluate``.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

from robustlab.report.schema import ModelReport, Report, TransferMatrix


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
