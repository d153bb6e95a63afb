"""Figures of a transfer with baselines: score vs spent epochs and vs training FLOPs per arm.

Like Fig. 7 of the VPGTrans paper: one PNG per metric with two panels (x = epochs, x = training
FLOPs), one line per arm (VPGTrans, TFS, VPG inherit), the baseline's best score as a dotted
line and the speed-up written on the plot. Over several seeds a line is the mean and the band
the min–max range.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vpgtrans_jax import paths

LABELS = {"vpgtrans": "VPGTrans", "tfs": "TFS (VPG from scratch)", "inherit": "VPG inherit"}
COLORS = {"vpgtrans": "#d62728", "tfs": "#1f77b4", "inherit": "#2ca02c"}


def series(
    runs: Sequence[Mapping[str, Sequence[Mapping[str, Any]]]], task: str
) -> dict[str, dict[str, list[float]]]:
    """Per arm, the points of ``task`` aligned over runs (seeds) by point name:
    ``{"epoch", "flops", "mean", "min", "max", "n"}`` lists (points no run scored are left out)."""
    out: dict[str, dict[str, list[float]]] = {}
    for arm in runs[0] if runs else {}:
        order = [q["point"] for q in runs[0][arm]]
        by_point = [{q["point"]: q for q in r.get(arm, [])} for r in runs]
        s: dict[str, list[float]] = {k: [] for k in ("epoch", "flops", "mean", "min", "max", "n")}
        for name in order:
            pts = [bp[name] for bp in by_point if name in bp]
            vals = [q["scores"].get(task) for q in pts]
            vals = [v for v in vals if v is not None]
            if not vals:
                continue
            s["epoch"].append(pts[0]["epoch"])
            s["flops"].append(float(np.mean([q["flops"] for q in pts])))
            s["mean"].append(float(np.mean(vals)))
            s["min"].append(min(vals))
            s["max"].append(max(vals))
            s["n"].append(len(vals))
        if s["epoch"]:
            out[arm] = s
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    return "∞" if np.isinf(v) else f"{v:.2f}x"


def plot_task(
    data: Mapping[str, Mapping[str, Sequence[float]]],
    out_path: str,
    *,
    title: str,
    metric: str,
    baseline_best: float | None = None,
    notes: Sequence[str] = (),
    best_label: str = "TFS best",
) -> str:
    """Draws one metric's two panels into ``out_path`` (PNG, a file or a URL); returns the path.

    Args:
      data: ``series(...)`` output.
      baseline_best: the TFS best score (drawn as a dotted line), if any.
      notes: lines of text (the speed-ups) written under the panels.
      best_label: the legend entry of the dotted line.
    """
    import matplotlib  # lazy: ~0.5 s to import and only the final report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: see above

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4 + 0.22 * len(notes)), dpi=110)
    for ax, x_key, xlabel in (
        (axes[0], "epoch", "training epochs spent (VPGTrans: stage 1 + stage 2)"),
        (axes[1], "flops", "training FLOPs (samples x analytic FLOPs per sample)"),
    ):
        for arm, s in data.items():
            x = np.asarray(s[x_key], float)
            color = COLORS.get(arm)
            ax.plot(x, s["mean"], marker="o", ms=3.5, lw=1.8, color=color,
                    label=LABELS.get(arm, arm))  # fmt: skip
            if max(s["n"], default=1) > 1:
                ax.fill_between(x, s["min"], s["max"], color=color, alpha=0.18, lw=0)
        if baseline_best is not None:
            ax.axhline(baseline_best, color=COLORS["tfs"], ls=":", lw=1.2, label=best_label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[1].legend(loc="lower right", fontsize=8.5)
    fig.suptitle(title, fontsize=11)
    # The speed-ups go under the panels, where they hide no curve.
    fig.tight_layout(rect=(0, 0.05 * len(notes) / (1 + 0.05 * len(notes)), 1, 1))
    if notes:
        fig.text(0.01, 0.01, "\n".join(notes), ha="left", va="bottom", fontsize=9)
    if paths.is_remote(out_path):  # drawn locally, then uploaded as one object
        with tempfile.TemporaryDirectory(prefix="vpgtrans-figure-") as tmp:
            local = os.path.join(tmp, "figure.png")
            fig.savefig(local)
            plt.close(fig)
            paths.copy_file(local, out_path)
        return out_path
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    fig.savefig(out_path + ".tmp.png")
    plt.close(fig)
    os.replace(out_path + ".tmp.png", out_path)
    return out_path


def speedup_notes(results: Mapping[str, Mapping[str, Any]], seeds: bool) -> list[str]:
    """Lines for the plot: the speed-up over each baseline (median over seeds when ``seeds``)."""
    lines = []
    for arm, r in results.items():
        name = LABELS.get(arm, arm).split(" (")[0]
        if seeds:
            e, f = r["epochs"], r["flops"]
            per = ", ".join(
                _fmt(v.get("epochs")) if v.get("status") == "ok" else v.get("status", "?")
                for v in r["per_seed"].values()
            )
            lines.append(
                f"vs {name}: median {_fmt(e['median'])} epochs, {_fmt(f['median'])} FLOPs "
                f"(seeds: {per})"
            )
        elif r["status"] == "ok" or r["status"] == "reached_untrained":
            lines.append(f"vs {name}: {_fmt(r['epochs'])} epochs, {_fmt(r['flops'])} FLOPs")
        else:
            lines.append(f"vs {name}: {r['status'].replace('_', ' ')}")
    return lines
