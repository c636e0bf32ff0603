"""Curve plots of evaluation results (matplotlib, Agg backend): one line per model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# Threshold of curve index i (official order: index 0 is the strictest threshold, 255).
THRESHOLDS = np.arange(255, -1, -1) / 255.0


def plot_curves(results: dict[str, dict], out_dir: str | os.PathLike) -> dict[str, tuple[Path, int]]:
    """Write precision-recall, F-measure-vs-threshold and E-measure-vs-threshold PNGs.

    Args:
        results: {model name: results} as returned by
            :func:`birefnet.metrics.evaluate.evaluate_folders` (needs the F and/or E curves).
        out_dir: folder to write into (created).

    Returns:
        {plot kind: (PNG path, number of model lines drawn)}; kinds whose curves no model has
        (e.g. E not evaluated) are skipped.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = [
        ("pr_curve", "Precision-recall", "Recall", "Precision", ("recall", "precision")),
        (
            "fmeasure_curve",
            "F-measure (beta^2 = 0.3) vs threshold",
            "Threshold",
            "F-measure",
            (None, "Fm_curve"),
        ),
        ("emeasure_curve", "E-measure vs threshold", "Threshold", "E-measure", (None, "Em_curve")),
    ]
    written: dict[str, tuple[Path, int]] = {}
    for kind, title, xlabel, ylabel, (xkey, ykey) in specs:
        models = [
            (m, r["curves"])
            for m, r in results.items()
            if ykey in r["curves"] and (xkey is None or xkey in r["curves"])
        ]
        if not models:
            continue
        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
        for model, curves in models:
            x = THRESHOLDS if xkey is None else np.asarray(curves[xkey])
            y = np.asarray(curves[ykey])
            label = model
            if ykey == "Fm_curve" or ykey == "Em_curve":
                label = f"{model} (max {y.max():.3f})"
            ax.plot(x, y, label=label, linewidth=1.5)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
        fig.tight_layout()
        path = out / f"{kind}.png"
        fig.savefig(path)
        plt.close(fig)
        written[kind] = (path, len(models))
    return written
