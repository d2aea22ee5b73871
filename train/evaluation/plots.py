"""Pictures of online learning: learning curves and accuracy by shots seen.

matplotlib is imported lazily (Agg backend), so the rest of the evaluation
core works without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .harness import EvalResult


def smooth(curve: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average [T] -> [T] (shorter window at the start)."""
    c = np.cumsum(np.insert(np.asarray(curve, dtype=np.float64), 0, 0.0))
    t = np.arange(1, len(curve) + 1)
    lo = np.maximum(t - window, 0)
    return (c[t] - c[lo]) / (t - lo)


def plot_results(results: Mapping[str, EvalResult], path: str | Path, *, title: str = "", window: int = 50) -> Path:
    """Write a PNG with two panels: accuracy over time, and accuracy by shots seen.

    Left: per-step accuracy (mean over streams) smoothed over ``window``
    steps; the band is the 95% binomial interval of each smoothed point
    (S streams x window steps). Right: accuracy on an example against how many
    examples of its class the learner had seen before it (0 = first sight).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    # a point of the right panel pools S streams x B classes at most: few streams of few classes
    # (the tabular suite: 4 x 2) still get a curve, from fewer examples per point
    min_count = int(min(20, *(max(1, r.shots.count.max()) for r in results.values())))
    for i, (name, r) in enumerate(results.items()):
        color = f"C{i}"
        acc = smooth(r.curves.accuracy, window)
        t = np.arange(1, len(acc) + 1)
        n = r.summary.n_streams * np.minimum(t, window)
        half = 1.96 * np.sqrt(np.clip(acc * (1 - acc), 1e-6, None) / n)
        s = r.summary
        label = f"{name}: mean {s.accuracy.mean:.3f}, first{s.first_steps} {s.first_accuracy.mean:.3f}"
        ax.plot(t, acc, color=color, lw=1.6 if name.startswith("vsml") else 1.1, label=label)
        ax.fill_between(t, acc - half, acc + half, color=color, alpha=0.15, lw=0)
        k = np.arange(len(r.shots.accuracy))
        keep = r.shots.count >= min_count
        ax2.plot(k[keep], r.shots.accuracy[keep], color=color, marker=".", ms=3, lw=1, label=name)
    ax.set_xlabel("online step (each example seen once)")
    ax.set_ylabel(f"accuracy before seeing the label (moving mean, {window} steps)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "online (prequential) accuracy")
    ax2.set_xscale("symlog", linthresh=1)
    ax2.set_xlabel("examples of the same class seen before (0 = first sight)")
    ax2.set_ylabel("accuracy on the next example of that class")
    ax2.set_ylim(0, 1)
    ax2.grid(alpha=0.3)
    ax2.legend(loc="lower right", fontsize=8)
    ax2.set_title("how fast each learner picks up a class")
    ax2.text(
        0.5,
        -0.3,
        "each point: accuracy on examples whose class the learner had seen k times before\n"
        f"(points from at least {min_count} examples); a curve that rises within a few k learns from few examples",
        transform=ax2.transAxes,
        ha="center",
        va="top",
        fontsize=7.5,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
