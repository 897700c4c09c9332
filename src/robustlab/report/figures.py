"""Figures as PNG bytes (matplotlib, Agg backend): rendering only, no computation of metrics."""

from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def eps_curves(curves: dict[str, tuple[Sequence[float], Sequence[dict]]], norm: str) -> bytes:
    """Robust accuracy vs eps, one line per model, with the Wilson interval as error bars.
    ``curves[name] = (eps list, [rate dict per eps])`` (rate dicts from ``metrics.rate``)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, (eps, rates) in curves.items():
        v = [r["value"] for r in rates]
        err = [[max(0.0, r["value"] - r["ci_low"]) for r in rates], [max(0.0, r["ci_high"] - r["value"]) for r in rates]]
        ax.errorbar(list(eps), v, yerr=err, marker="o", capsize=3, label=name)
    ax.set_xlabel(f"eps ({norm})")
    ax.set_ylabel("robust accuracy (worst case)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def adversarial_grid(x: torch.Tensor, x_adv: torch.Tensor, labels: Sequence[str], clean_text: Sequence[str],
                     adv_text: Sequence[str], amplify: float = 5.0) -> bytes:
    """Rows of clean | adversarial | amplified perturbation (0.5 + amplify * delta), with labels."""
    n = x.shape[0]
    fig, axes = plt.subplots(n, 3, figsize=(4.2, 1.45 * n), squeeze=False)
    for i in range(n):
        delta = (0.5 + amplify * (x_adv[i] - x[i])).clamp(0, 1)
        for j, (img, text) in enumerate(((x[i], clean_text[i]), (x_adv[i], adv_text[i]), (delta, f"x{amplify:g} delta"))):
            ax = axes[i, j]
            arr = img.detach().cpu().permute(1, 2, 0).numpy()
            ax.imshow(arr[..., 0] if arr.shape[2] == 1 else arr, cmap="gray" if arr.shape[2] == 1 else None, vmin=0, vmax=1)
            ax.set_title(text, fontsize=7)
            ax.axis("off")
    fig.suptitle("clean | adversarial | perturbation", fontsize=8)
    return _png(fig)
