"""The run's step log (JSON lines) and its loss-curve plot."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["StepLog", "plot_loss_curve", "read_log"]


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a JSONL log; a torn last line (crash mid-write) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class StepLog:
    """Append-only JSONL log, one record per optimizer step (plus ``event`` records).

    Each record is flushed as written, so the log survives a crash up to the last step. When a
    run resumes from step ``k``, records after ``k`` (steps that were redone) are dropped first.
    """

    def __init__(self, path: str | os.PathLike, *, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            kept = [r for r in read_log(self.path) if int(r.get("step", 0)) <= resume_step]
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.path)
        self._fh = open(self.path, "a")  # noqa: SIM115 - kept open for the run

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, allow_nan=True) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def plot_loss_curve(
    log_path: str | os.PathLike, png_path: str | os.PathLike, *, title: str = ""
) -> Path | None:
    """Plot total loss and its parts per step (log scale) and validation scores, to a PNG.

    Returns the PNG path, or None when the log has no step yet. Written via a temporary file.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    steps = [r for r in records if "loss" in r and "event" not in r]
    vals = [r for r in records if r.get("event") == "validation"]
    if not steps:
        return None
    fig, ax = plt.subplots(figsize=(9, 5))
    xs = [r["step"] for r in steps]
    parts = sorted({k[5:] for r in steps for k in r if k.startswith("loss/")})

    def smooth(ys: list[float]) -> list[float]:
        out, avg = [], None
        alpha = 2.0 / (1 + min(50, max(1, len(ys) // 20)))
        for y in ys:
            avg = y if avg is None or not math.isfinite(avg) else (1 - alpha) * avg + alpha * y
            out.append(avg)
        return out

    total = [r["loss"] for r in steps]
    ax.plot(xs, total, color="black", alpha=0.2, linewidth=0.8)
    ax.plot(xs, smooth(total), color="black", label="total")
    for name in parts:
        ys = [r.get(f"loss/{name}", float("nan")) for r in steps]
        ax.plot(xs, smooth(ys), label=name, linewidth=1.0)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (smoothed)")
    if all(y > 0 for y in total):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if vals:
        ax2 = ax.twinx()
        keys = [k for k in vals[-1] if k.startswith("val/")]
        for k in keys:
            pts = [(r["step"], r[k]) for r in vals if k in r and isinstance(r[k], (int, float))]
            if pts and k.split("/")[-1] in ("Smeasure", "S", "maxFm", "wFmeasure", "meanEm", "MAE"):
                ax2.plot(*zip(*pts), marker="o", linestyle="--", label=k)
        ax2.set_ylabel("validation")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path
