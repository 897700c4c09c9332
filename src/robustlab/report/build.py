"""Records -> Report (pure functions), combining reports, saving and loading them.

:func:`model_report` turns the per-sample records of one evaluation into a
:class:`~robustlab.report.schema.ModelReport`; :func:`report` wraps one or more of them (adding
the transfer matrices between them); :func:`save` writes ``report.json``, the PNG figures and
``index.html`` atomically; :func:`load` reads a report back, strictly.
"""

from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import torch

from robustlab._io import atomic_write_bytes, atomic_write_text
from robustlab.evaluate import checks, metrics
from robustlab.report.schema import (
    SCHEMA,
    SCHEMA_VERSION,
    AttackRow,
    CertReport,
    DataInfo,
    EncodedImage,
    EpsRow,
    Exemplar,
    ModelReport,
    Report,
    ThreatReport,
    TransferMatrix,
    from_dict,
    to_dict,
)

if TYPE_CHECKING:
    from robustlab.evaluate.run import Records
    from robustlab.evaluate.suite import Suite


def _round(v: float, digits: int = 6) -> float:
    return float(f"{v:.{digits}g}")


def _threat_report(suite: "Suite", t, records: "Records", dim: int, certs: Sequence[tuple[Any, CertReport, Any]]
                   ) -> tuple[ThreatReport, dict]:
    from robustlab.evaluate.run import UNBOUNDED

    correct = records.correct
    attacks = list(suite.attacks_for(t))
    found_all: list[torch.Tensor] = []
    found_wb: list[torch.Tensor] = []
    per_eps: dict[float, dict[str, Any]] = {}

    def found(kind: str, eps: Optional[float], name: str) -> torch.Tensor:
        return metrics.found_distance(correct, records.get(kind, t.norm, eps, name, "success"),
                                      records.get(kind, t.norm, eps, name, "distance"))

    for e in t.eps:
        d = {"attacks": {a: found("attack", e, a) for a in attacks}}
        found_wb += list(d["attacks"].values())
        if suite.checks.enabled:
            d["noise"] = found("noise", e, "noise")
        d["transfer"] = {s: found("transfer", e, s) for s in suite.transfer} if e in suite.transfer_at(t) else {}
        per_eps[e] = d
        found_all += list(d["attacks"].values()) + ([d["noise"]] if "noise" in d else []) + list(d["transfer"].values())
    for a in suite.minimal:
        f = found("minimal", UNBOUNDED, a)
        found_wb.append(f)
        found_all.append(f)
    md_all = metrics.min_distance(correct, found_all)
    md_wb = metrics.min_distance(correct, found_wb)

    rows = []
    noise_counts, transfer_counts = [], []
    n_correct = int(correct.sum())
    for e in t.eps:
        arows = []
        for a in attacks:
            s = records.get("attack", t.norm, e, a, "success")
            hit = s & correct
            arows.append(AttackRow(
                attack=a, robust=metrics.robust_accuracy(correct, s), success=metrics.success_rate(correct, s),
                distance=metrics.summary(records.get("attack", t.norm, e, a, "distance")[hit]),
                norms={nm: metrics.summary(records.get("attack", t.norm, e, a, nm)[hit]) for nm in ("linf", "l2", "l0")},
                seconds=_round(records.seconds("attack", t.norm, e, a)),
            ))
        wb_robust = metrics.robust_at(correct, md_wb, e)
        noise_rate = None
        if suite.checks.enabled:
            sn = records.get("noise", t.norm, e, "noise", "success")
            noise_rate = metrics.robust_accuracy(correct, sn)
            noise_counts.append((e, int((sn & correct & wb_robust).sum()), n_correct))
        transfer = {}
        only_transfer = torch.zeros_like(correct)
        sources = list(suite.transfer) if e in suite.transfer_at(t) else []
        for s in sources:
            st = records.get("transfer", t.norm, e, s, "success")
            transfer[s] = metrics.robust_accuracy(correct, st)
            only_transfer |= st & correct & wb_robust
        if sources:
            transfer_counts.append((e, int(only_transfer.sum()), n_correct))
        rows.append(EpsRow(eps=e, attacks=arows, worst_case=metrics.rate(metrics.robust_at(correct, md_all, e)),
                           white_box=metrics.rate(wb_robust), noise=noise_rate, transfer=transfer))

    lower = torch.zeros_like(md_all)
    lower_from = []
    for spec, rep, entry in certs:
        if entry.certifies != "model":
            continue
        factor = metrics.norm_factor(rep.norm, t.norm, dim)
        if factor is None:
            continue
        r = torch.tensor(rep.per_sample_radius, dtype=torch.float64) / factor
        ok = torch.tensor(rep.per_sample_prediction) == records.labels
        lower = torch.maximum(lower, torch.where(ok, r, torch.zeros_like(r)))
        lower_from.append(rep.label)
    lower = torch.minimum(lower, md_all)  # a certificate can never exceed a found adversarial distance
    unbroken = correct & torch.isinf(md_all)
    report = ThreatReport(
        norm=t.norm, eps=list(t.eps), attacks=attacks, minimal=list(suite.minimal), rows=rows,
        min_distance=metrics.summary(md_all[correct]), unbroken=metrics.rate(unbroken),
        per_sample_upper=[None if math.isinf(v) else _round(v) for v in md_all.tolist()],
        per_sample_lower=[_round(v) for v in lower.tolist()], lower_from=lower_from,
    )
    curves = {a.attack: [] for a in rows[0].attacks}
    for row in rows:
        for a in row.attacks:
            curves[a.attack].append(a.robust)
    union = []
    for e in t.eps:  # robust against every white-box attack run at this eps (not cumulative over eps)
        hit = torch.zeros_like(correct)
        for a in attacks:
            hit |= records.get("attack", t.norm, e, a, "success")
        union.append(metrics.rate(correct & ~hit))
    return report, {"curves": curves, "noise": noise_counts, "transfer": transfer_counts, "union": union}


def _cert_reports(suite: "Suite", records: "Records") -> list[tuple[Any, CertReport, Any]]:
    from robustlab.evaluate.suite import certifier

    out = []
    labels = records.labels
    for i, spec in enumerate(suite.certifiers):
        entry = certifier(spec.method)
        opts = spec.resolved()
        pred = records.tensors[f"cert|{i}|prediction"]
        radius = records.tensors[f"cert|{i}|radius"]
        abstain = records.tensors[f"cert|{i}|abstain"]
        ok = (pred == labels) & ~abstain
        top = float(radius[ok].max()) if bool(ok.any()) else 0.0
        if "sigma" in opts and "n" in opts and "alpha" in opts:  # the largest radius n samples can certify
            from scipy.stats import norm as _norm

            top = max(top, float(opts["sigma"] * _norm.ppf(opts["alpha"] ** (1.0 / opts["n"]))))
        radii = metrics.radius_grid(top if top > 0 else 1.0)
        rep = CertReport(
            method=spec.method, label=spec.label, norm=entry.norm, certifies=entry.certifies,
            alpha=float(opts.get("alpha", 0.0)), options={k: v for k, v in opts.items()},
            radii=[_round(r) for r in radii],
            certified_accuracy=metrics.certified_curve(labels, pred, radius, abstain, radii),
            accuracy=metrics.rate(ok), abstain=metrics.rate(abstain.bool()),
            radius=metrics.summary(radius[ok]), seconds=_round(records.times.get(f"cert|{i}|seconds", 0.0)),
            per_sample_radius=[_round(v) for v in torch.where(abstain, torch.zeros_like(radius), radius).tolist()],
            per_sample_prediction=[int(v) for v in pred.tolist()],
        )
        out.append((spec, rep, entry))
    return out


def _exemplars(records: "Records", suite: "Suite", sources: Sequence[str], k: int) -> list[Exemplar]:
    ex = records.exemplars
    out = []
    norm = suite.threats[0].norm
    for kind, descending, label in (("least", False, "least-robust"), ("most", True, "most-robust")):
        if f"ex|{kind}|score" not in ex or ex[f"ex|{kind}|score"].numel() == 0:
            continue
        order = ex[f"ex|{kind}|score"].argsort(descending=descending)[:k]
        for j in order.tolist():
            g = {name: ex[f"ex|{kind}|{name}"][j] for name in ("index", "x", "adv", "label", "clean_pred", "clean_conf",
                                                             "adv_pred", "adv_conf", "eps", "src", "success", "dist")}
            src = int(g["src"])
            out.append(Exemplar(
                kind=label, index=int(g["index"]), label=int(g["label"]), norm=norm,
                eps=_round(float(g["eps"])), attack=sources[src] if 0 <= src < len(sources) else "none",
                success=bool(g["success"]), distance=_round(max(float(g["dist"]), 0.0)),
                clean_pred=int(g["clean_pred"]), clean_conf=_round(float(g["clean_conf"]), 4),
                adv_pred=int(g["adv_pred"]), adv_conf=_round(float(g["adv_conf"]), 4),
                image=EncodedImage.encode(g["x"]), adversarial=EncodedImage.encode(g["adv"]),
            ))
    return out


def model_report(suite: "Suite", records: "Records", probes: Optional[Mapping[str, Any]], info: Mapping[str, Any]
                 ) -> ModelReport:
    """One model's report from its records, the check probes and facts about the run (``info``:
    name, model, data, seed, batch_size, device, seconds, sources)."""
    data = info["data"]
    shape = [int(v) for v in data["shape"]]
    dim = int(shape[0] * shape[1] * shape[2])
    certs = _cert_reports(suite, records)
    threats, aux = [], []
    for t in suite.threats:
        tr, extra = _threat_report(suite, t, records, dim, certs)
        threats.append(tr)
        aux.append(extra)
    first = suite.threats[0]
    check_attack = suite.checks.attack
    found = checks.findings(probes, aux[0]["curves"], list(first.eps), first.norm, aux[0]["noise"], aux[0]["transfer"],
                            check_attack, aux[0]["union"]) if suite.checks.enabled else []
    notes = []
    if not suite.checks.enabled:
        notes.append("Gradient-masking checks were switched off for this run.")
    for spec, rep, entry in certs:
        if entry.certifies == "smoothed":
            notes.append(f"{rep.label} certifies the smoothed classifier g(x) = argmax_c P(f(x + noise) = c), not the "
                         "model itself, so its radii are reported on their own and not used as lower bounds of the "
                         "model's robustness intervals.")
    return ModelReport(
        name=str(info["name"]), model=dict(info.get("model", {})),
        data=DataInfo(str(data["name"]), data.get("split"), int(data["n"]), shape, [str(c) for c in data["classes"]]),
        suite=suite.to_dict(), seed=int(info.get("seed", 0)), batch_size=int(info.get("batch_size", 0)),
        device=str(info.get("device", "cpu")), seconds=_round(float(info.get("seconds", 0.0))),
        clean=metrics.rate(records.correct), threats=threats, certificates=[rep for _, rep, _ in certs],
        checks=found, verdict=checks.verdict(found), exemplars=_exemplars(records, suite, info.get("sources", []),
                                                                          suite.exemplars),
        labels=[int(v) for v in records.labels.tolist()], clean_pred=[int(v) for v in records.clean_pred.tolist()],
        notes=notes,
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
    """One report over the models of several (for side-by-side comparison); repeated model names
    get a numeric suffix."""
    models: list[ModelReport] = []
    seen: dict[str, int] = {}
    for r in reports:
        for m in r.models:
            name = m.name
            if name in seen:
                seen[name] += 1
                name = f"{name} ({seen[name]})"
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
    return from_dict(Report, data, where)


def load(path: "str | os.PathLike[str]") -> Report:
    """Read a report from ``report.json`` (or a folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    if not p.is_file():
        raise FileNotFoundError(f"no report at {p}")
    return loads(p.read_text(), str(p))


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
        for fname, png in figs.items():
            atomic_write_bytes(out / "figures" / fname, png)
        atomic_write_text(out / "index.html", html_mod.render(rep, figs))
    atomic_write_text(out / "report.json", text)
    return out


def table(rep: Report) -> str:
    """A plain-text summary: per model and threat model, clean and robust accuracy per eps."""
    lines = []
    for m in rep.models:
        lines.append(f"{m.name}: clean accuracy {m.clean.value:.4f} [{m.clean.ci_low:.4f}, {m.clean.ci_high:.4f}] "
                     f"(n={m.clean.n})")
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
            pts = [0, len(c.radii) // 4, len(c.radii) // 2, 3 * len(c.radii) // 4, len(c.radii) - 1]
            lines.append(f"  certified ({c.label}, {c.norm}): " +
                         ", ".join(f"r={c.radii[i]:.3g}: {c.certified_accuracy[i].value:.4f}" for i in pts))
        if m.checks:
            lines.append(f"  checks: {m.verdict.summary}")
    return "\n".join(lines)


def compare_table(rep: Report) -> str:
    """Models side by side: clean and worst-case robust accuracy at each eps of each threat model."""
    cols: list[tuple[str, Optional[float]]] = [("clean", None)]
    for m in rep.models:
        for t in m.threats:
            for e in t.eps:
                if (t.norm, e) not in cols:
                    cols.append((t.norm, e))  # type: ignore[arg-type]
    width = max(12, *(len(m.name) + 2 for m in rep.models))
    head = f"{'model':<{width}}" + "".join(f"{('clean' if e is None else f'{n} {e:g}'):>14}" for n, e in cols) + "  trusted"
    lines = [head]
    for m in rep.models:
        cells = []
        for norm, e in cols:
            if e is None:
                cells.append(f"{100 * m.clean.value:>13.1f}%")
                continue
            v = next((row.worst_case.value for t in m.threats if t.norm == norm for row in t.rows if row.eps == e), None)
            cells.append(f"{'-':>14}" if v is None else f"{100 * v:>13.1f}%")
        trusted = "yes" if m.verdict.trusted else ("no" if m.checks else "unchecked")
        lines.append(f"{m.name:<{width}}" + "".join(cells) + f"  {trusted}")
    return "\n".join(lines)
