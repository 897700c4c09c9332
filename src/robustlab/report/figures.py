"""Figures as PNG bytes (matplotlib, Agg backend): rendering only, every number comes from the report.

:func:`render` returns ``{file name: PNG bytes}`` for a whole :class:`~robustlab.report.Report`;
the functions it calls draw one figure each and can be used on their own.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from robustlab.report.paths import slug  # noqa: E402

if TYPE_CHECKING:
    from robustlab.report.schema import (AttackRun, CertReport, DetectionReport, Exemplar, ModelReport, Rate, Report,
                                         ThreatReport, TransferMatrix)

DPI = 110
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
RC = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "axes.spines.top": False,
      "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25, "figure.facecolor": "white"}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _band(ax, x: Sequence[float], rates: Sequence[Rate], color: str, label: str, lw: float = 1.6, ls: str = "-",
          marker: str = "o", band: bool = True) -> None:
    v = [r.value for r in rates]
    ax.plot(x, v, ls, color=color, lw=lw, marker=marker, ms=3.5, label=label)
    if band:
        ax.fill_between(x, [r.ci_low for r in rates], [r.ci_high for r in rates], color=color, alpha=0.15, lw=0)


def _accuracy_axis(ax, xlabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))


def eps_curve(threat: ThreatReport, clean: Rate, title: str = "") -> bytes:
    """Robust accuracy vs eps per attack, the noise baseline, transfer attacks and the worst case
    (bold, with its 95% band); eps 0 is the clean accuracy."""
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(4.6, 3.1))
        x = [0.0, *threat.eps]
        for i, name in enumerate(threat.attacks):
            rates = [clean, *(row.attacks[i].robust for row in threat.rows)]
            _band(ax, x, rates, PALETTE[(i + 1) % len(PALETTE)], name, lw=1.1, band=False)
        if threat.rows and threat.rows[0].noise is not None:
            _band(ax, x, [clean, *(row.noise for row in threat.rows)], "#7f7f7f", threat.black_box, lw=1.1, ls=":",
                  marker="s", band=False)
        for j, src in enumerate(dict.fromkeys(s for row in threat.rows for s in row.transfer)):
            pts = [(0.0, clean)] + [(row.eps, row.transfer[src]) for row in threat.rows if src in row.transfer]
            _band(ax, [p[0] for p in pts], [p[1] for p in pts], PALETTE[(j + 4) % len(PALETTE)],
                  f"transfer from {src}", lw=1.1, ls="--", marker="^", band=False)
        _band(ax, x, [clean, *(row.worst_case for row in threat.rows)], "#111111", "worst case", lw=2.4)
        _accuracy_axis(ax, f"eps ({threat.norm})")
        ax.set_title(title or f"robust accuracy vs eps ({threat.norm})")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        return _png(fig)


def compare_curves(models: Sequence[ModelReport], norm: str) -> bytes:
    """Worst-case robust accuracy vs eps for several models, with 95% bands."""
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(4.6, 3.1))
        for i, m in enumerate(models):
            t = next((t for t in m.threats if t.norm == norm), None)
            if t is None or m.clean is None:
                continue
            _band(ax, [0.0, *t.eps], [m.clean, *(row.worst_case for row in t.rows)], PALETTE[i % len(PALETTE)], m.name,
                  lw=2.0)
        _accuracy_axis(ax, f"eps ({norm})")
        ax.set_title(f"worst-case robust accuracy ({norm})")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        return _png(fig)


def certified_curves(curves: Sequence[tuple[str, CertReport]]) -> bytes:
    """Certified accuracy vs radius (step curves with 95% bands), one per (name, certificate); every
    certificate in one norm (radii of different norms never share an axis)."""
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(4.6, 3.1))
        for i, (name, c) in enumerate(curves):
            color = PALETTE[i % len(PALETTE)]
            v = [r.value for r in c.certified_accuracy]
            ax.step(c.radii, v, where="post", color=color, lw=2.0, label=name)
            ax.fill_between(c.radii, [r.ci_low for r in c.certified_accuracy], [r.ci_high for r in c.certified_accuracy],
                            step="post", color=color, alpha=0.15, lw=0)
        norms = sorted({c.norm for _, c in curves}) or ["l2"]
        if len(norms) > 1:
            raise ValueError(f"certified_curves draws one norm per axis, got {norms}; use certified_figures")
        _accuracy_axis(ax, f"radius ({norms[0]})")
        ax.set_title(f"certified accuracy vs {norms[0]} radius")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        return _png(fig)


def certified_figures(curves: Sequence[tuple[str, CertReport]], stem: str) -> dict[str, bytes]:
    """:func:`certified_curves` per norm: ``{stem}-{norm}.png`` (an l2 smoothing radius and an linf
    IBP radius are different quantities)."""
    out: dict[str, bytes] = {}
    for norm in dict.fromkeys(c.norm for _, c in curves):
        out[f"{stem}-{norm}.png"] = certified_curves([(name, c) for name, c in curves if c.norm == norm])
    return out


def roc_curves(curves: Sequence[Mapping[str, Any]]) -> bytes:
    """ROC curves, one panel per detector: per attack a colour, non-adaptive solid, adaptive dashed,
    the operating point at the fitted threshold marked. Each curve: ``{"detector", "attack",
    "adaptive", "fpr": [...], "tpr": [...], "auc" (or None), "point": (fpr, detection rate) or None}``."""
    detectors = list(dict.fromkeys(str(c["detector"]) for c in curves))
    attacks = list(dict.fromkeys(str(c["attack"]) for c in curves))
    with plt.rc_context(RC):
        fig, axes = plt.subplots(1, max(1, len(detectors)), figsize=(3.2 * max(1, len(detectors)), 3.2), squeeze=False)
        for ax, det in zip(axes[0], detectors):
            for c in curves:
                if str(c["detector"]) != det or not c["fpr"]:
                    continue
                color = PALETTE[attacks.index(str(c["attack"])) % len(PALETTE)]
                auc = "n/a" if c["auc"] is None else f"{c['auc']:.3f}"
                ax.plot(c["fpr"], c["tpr"], "--" if c["adaptive"] else "-", color=color, lw=1.4,
                        label=f"{c['attack']}{' adaptive' if c['adaptive'] else ''} (AUC {auc})")
                if c.get("point") is not None:
                    ax.plot([c["point"][0]], [c["point"][1]], "o", color=color, ms=4)
            ax.plot([0, 1], [0, 1], ":", color="#888888", lw=0.8)
            ax.set_title(det)
            ax.set_xlabel("false-positive rate (clean)")
            ax.set_ylabel("detection rate (adversarial)")
            ax.set_xlim(-0.01, 1.01)
            ax.set_ylim(-0.01, 1.01)
            ax.legend(loc="lower right")
        return _png(fig)


def detection_roc(det: DetectionReport) -> bytes:
    """:func:`roc_curves` of a detection section (the operating point: false-positive and detection rate)."""
    return roc_curves([{"detector": r.detector, "attack": r.attack, "adaptive": r.adaptive, "fpr": r.roc_fpr,
                        "tpr": r.roc_tpr, "auc": r.auc,
                        "point": None if r.detection is None or r.false_positive is None
                        else (r.false_positive.value, r.detection.value)} for r in det.rows])


def attack_distances(run: AttackRun, title: str = "") -> bytes:
    """Histogram of the distances of the adversarial examples an attack run found (correct images)."""
    d = np.array([v for v in run.per_sample_distance if v is not None and v > 0], dtype=np.float64)
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(4.6, 3.1))
        if d.size:
            ax.hist(d, bins=min(30, max(5, d.size // 3)), color=PALETTE[0], alpha=0.85)
        if run.eps is not None:
            ax.axvline(run.eps, color="#111111", lw=1.0, ls="--", label=f"eps {run.eps:g}")
            ax.legend(loc="upper left", frameon=False)
        ax.set_xlabel(f"{run.norm} distance")
        ax.set_ylabel("images")
        ax.set_title(title or f"{run.result.attack}: distances of the adversarial examples found")
        return _png(fig)


def _correct(m: ModelReport) -> np.ndarray:
    return np.asarray(m.labels) == np.asarray(m.clean_pred)


def distance_histogram(m: ModelReport, threat: ThreatReport) -> bytes:
    """The smallest adversarial distance found per correctly classified image. Without a
    minimal-norm attack every attack is bounded, so the values sit on the eps grid: a bar per eps
    ("first broken at") and one for images never broken; with one, a histogram."""
    correct = _correct(m)
    up = np.array([np.inf if v is None else v for v in threat.per_sample_upper], dtype=np.float64)[correct]
    finite = up[np.isfinite(up)]
    unbroken = int((~np.isfinite(up)).sum())
    total = max(int(correct.sum()), 1)
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(5.0, 3.1))
        if not threat.minimal:
            grid = np.asarray(threat.eps, dtype=np.float64)
            idx = np.searchsorted(grid, finite - 1e-5 * np.maximum(1.0, grid.max()), side="left").clip(0, len(grid) - 1)
            counts = [int((idx == i).sum()) for i in range(len(grid))] + [unbroken]
            labels = [f"{e:g}" for e in grid] + ["none\nfound"]
            colors = ["#1f77b4"] * len(grid) + ["#2ca02c"]
            bars = ax.bar(range(len(counts)), counts, color=colors, alpha=0.85, width=0.7)
            for b, c in zip(bars, counts):
                ax.annotate(f"{100 * c / total:.0f}%", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                            va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
            ax.set_xticks(range(len(counts)), labels)
            ax.set_xlabel(f"smallest eps ({threat.norm}) at which an adversarial example was found")
            ax.grid(axis="x", visible=False)
            ax.set_ylim(0, max(counts) * 1.15 + 1)
        else:
            top = max(threat.eps[-1], float(finite.max()) if finite.size else 0.0) or 1.0
            ax.hist(finite, bins=30, range=(0, top), color="#1f77b4", alpha=0.85,
                    label=f"found: {finite.size} of {total} correct images")
            for e in threat.eps:
                ax.axvline(e, color="#555555", lw=0.8, ls="--")
            if unbroken:
                ax.plot([], [], " ", label=f"none found: {unbroken}")
            ax.set_xlabel(f"smallest adversarial distance found ({threat.norm}); dashed: eps grid")
            ax.legend(loc="upper right", frameon=False)
        ax.set_ylabel("correct images")
        ax.set_title("minimal adversarial distance (an upper bound per image)")
        return _png(fig)


def robustness_intervals(m: ModelReport, threat: ThreatReport, max_points: int = 120) -> bytes:
    """Per correct image, the interval [certified lower bound, smallest adversarial distance found],
    images sorted by the upper end (at most ``max_points`` evenly spaced ranks); arrows mark
    images with no adversarial example found."""
    correct = _correct(m)
    up = np.array([np.inf if v is None else v for v in threat.per_sample_upper], dtype=np.float64)[correct]
    lo = np.asarray(threat.per_sample_lower, dtype=np.float64)[correct]
    order = np.argsort(up, kind="stable")
    if order.size > max_points:
        order = order[np.linspace(0, order.size - 1, max_points).round().astype(int)]
    finite = up[np.isfinite(up)]
    top = max(threat.eps[-1], float(finite.max()) if finite.size else 0.0) * 1.08 or 1.0
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(5.0, 3.1))
        xs = np.arange(order.size)
        u, low = up[order], lo[order]
        fin = np.isfinite(u)
        ax.vlines(xs[fin], low[fin], u[fin], color="#1f77b4", lw=1.4, label="[certified, found]")
        ax.plot(xs[fin], u[fin], "_", color="#d62728", ms=5, label="smallest adversarial found")
        if (~fin).any():
            ax.vlines(xs[~fin], low[~fin], top * 0.97, color="#2ca02c", lw=1.4, alpha=0.6)
            ax.plot(xs[~fin], np.full((~fin).sum(), top * 0.97), "^", color="#2ca02c", ms=3.5, label="none found")
        if (low > 0).any():
            ax.plot(xs[low > 0], low[low > 0], "_", color="#111111", ms=5, label="certified radius")
        for e in threat.eps:
            ax.axhline(e, color="#555555", lw=0.6, ls="--")
        ax.set_ylim(0, top)
        ax.set_xlabel(f"correct images, sorted ({order.size} of {int(correct.sum())} shown)")
        ax.set_ylabel(f"distance ({threat.norm})")
        src = ", ".join(threat.lower_from) if threat.lower_from else "none (lower ends at 0)"
        ax.set_title(f"robustness intervals; certified lower bounds: {src}", fontsize=9)
        ax.legend(loc="upper left", frameon=False, fontsize=7)
        return _png(fig)


def transfer_heatmap(tm: TransferMatrix) -> bytes:
    """Robust accuracy of each target (rows) on each source's adversarial examples (columns)."""
    vals = np.array([[np.nan if r is None else r.value for r in row] for row in tm.robust], dtype=np.float64)
    with plt.rc_context({**RC, "axes.grid": False}):
        fig, ax = plt.subplots(figsize=(1.6 + 1.25 * len(tm.sources), 1.2 + 0.7 * len(tm.targets)))
        im = ax.imshow(vals, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for i in range(vals.shape[0]):
            for j in range(vals.shape[1]):
                text = "n/a" if math.isnan(vals[i, j]) else f"{100 * vals[i, j]:.1f}%"
                ax.text(j, i, text, ha="center", va="center", color="white" if (math.isnan(vals[i, j]) or vals[i, j] < 0.6)
                        else "black", fontsize=9)
        ax.set_xticks(range(len(tm.sources)), tm.sources, rotation=20, ha="right")
        ax.set_yticks(range(len(tm.targets)), tm.targets)
        ax.set_xlabel(f"source (adversarial examples: {tm.attack}, {tm.norm} eps {tm.eps:g})")
        ax.set_ylabel("target")
        fig.colorbar(im, ax=ax, fraction=0.05, format=matplotlib.ticker.PercentFormatter(1.0, decimals=0))
        ax.set_title("transfer: robust accuracy of the target")
        return _png(fig)


#: Images up to this side are drawn with visible pixels; larger ones (ImageNet's 224, 512) are
#: drawn antialiased in wider columns, so a grid stays readable at any input size.
SMALL_SIDE = 64


def _show(ax, img: np.ndarray, cmap: Optional[str] = "gray", vmin: float = 0.0, vmax: float = 1.0) -> None:
    interp = "nearest" if max(img.shape[1:]) <= SMALL_SIDE else "antialiased"
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap=cmap, vmin=vmin, vmax=vmax, interpolation=interp)
    else:
        ax.imshow(np.clip(img.transpose(1, 2, 0), 0, 1), interpolation=interp)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def exemplar_grid(exemplars: Sequence[Exemplar], classes: Sequence[str], title: str) -> bytes:
    """One column per image: clean (label, prediction, confidence) | adversarial (prediction,
    confidence; red when fooled) | perturbation (scaled to its own maximum; red +, blue -)."""
    n = max(len(exemplars), 1)
    side = max((max(ex.image.shape[1:]) for ex in exemplars), default=0)
    col = 1.12 if side <= SMALL_SIDE else 1.9  # inches per column: about 210 pixels for a large image at DPI 110

    def name(k: int) -> str:  # a class name short enough for a column: its first synonym, at most 18 characters
        full = classes[k] if 0 <= k < len(classes) else str(k)
        short = full.split(", ")[0]
        return short if len(short) <= 18 else short[:17] + "…"

    with plt.rc_context({**RC, "axes.grid": False}):
        fig, axes = plt.subplots(3, n, figsize=(0.35 + col * n, 3.95 * col / 1.12), squeeze=False)
        for j, ex in enumerate(exemplars):
            x = ex.image.decode().numpy()
            xa = ex.adversarial.decode().numpy()
            delta = xa - x
            amp = float(np.abs(delta).max()) or 1.0
            _show(axes[0, j], x)
            axes[0, j].set_title(f"#{ex.index} label {name(ex.label)}\npred {name(ex.clean_pred)} ({ex.clean_conf:.2f})",
                                 fontsize=7)
            _show(axes[1, j], xa)
            axes[1, j].set_title(f"{name(ex.adv_pred)} ({ex.adv_conf:.2f}) {'fooled' if ex.success else 'held'}",
                                 fontsize=7, color="#b00020" if ex.success else "#1b7f2a")
            if x.shape[0] == 1:
                _show(axes[2, j], delta, cmap="RdBu_r", vmin=-amp, vmax=amp)
            else:
                _show(axes[2, j], 0.5 + delta / (2 * amp))
            where = f"{ex.norm} {ex.distance:.3g}" if ex.success else f"eps {ex.eps:g}"
            axes[2, j].set_title(f"{ex.attack[:14]}\n{where}", fontsize=6.5)
        for j in range(len(exemplars), n):
            for i in range(3):
                axes[i, j].axis("off")
        for i, head in enumerate(("clean", "adversarial", "perturbation")):
            axes[i, 0].set_ylabel(head, fontsize=8, weight="bold")
        fig.suptitle(title, fontsize=9)
        fig.tight_layout(h_pad=0.4, w_pad=0.2)
        return _png(fig)


def model_figures(m: ModelReport, prefix: str) -> dict[str, bytes]:
    """The figures of one model section, named ``<prefix>-...png``."""
    out: dict[str, bytes] = {}
    for t in m.threats:
        out[f"{prefix}-{t.norm}-eps.png"] = eps_curve(t, m.clean, f"{m.name}: robust accuracy vs eps ({t.norm})")
        out[f"{prefix}-{t.norm}-distances.png"] = distance_histogram(m, t)
        out[f"{prefix}-{t.norm}-intervals.png"] = robustness_intervals(m, t)
    out.update(certified_figures([(c.label, c) for c in m.certificates], f"{prefix}-certified"))
    for j, run in enumerate(m.attack_runs):
        if any(v for v in run.per_sample_distance):
            out[f"{prefix}-attack-{j + 1}-distances.png"] = attack_distances(run, f"{m.name}: {run.result.attack}")
    if m.detection is not None and any(r.roc_fpr for r in m.detection.rows):
        out[f"{prefix}-detection-roc.png"] = detection_roc(m.detection)
    for kind in ("least-robust", "most-robust"):
        ex = [e for e in m.exemplars if e.kind == kind]
        if ex:
            out[f"{prefix}-{kind}.png"] = exemplar_grid(ex, m.data.classes, f"{m.name}: {kind.replace('-', ' ')} images")
    return out


def render(report: Report) -> dict[str, bytes]:
    """Every figure of the report: comparisons (several models), transfer matrices, per-model figures."""

    out: dict[str, bytes] = {}
    if len(report.models) > 1:
        norms = []
        for m in report.models:
            norms += [t.norm for t in m.threats if t.norm not in norms]
        for norm in norms:
            out[f"compare-{norm}.png"] = compare_curves(report.models, norm)
        certs = [(f"{m.name}: {c.label}", c) for m in report.models for c in m.certificates]
        if len(certs) > 1:
            out.update(certified_figures(certs, "compare-certified"))
    for tm in report.transfer:
        out[f"transfer-{tm.norm}-{tm.eps:g}.png"] = transfer_heatmap(tm)
    for i, m in enumerate(report.models):
        out.update(model_figures(m, f"{i + 1}-{slug(m.name)}"))
    return out
