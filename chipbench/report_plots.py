"""The report's plots of the records themselves: latency distributions from the raw samples and
speed against accuracy for the precision sweep. Each is drawn once per report, a panel per
workload, off-screen (chipbench.plots)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from chipbench.plots import figure, save

Curve = tuple[str, np.ndarray]  # (stack label, per-query latencies in ms)
Point = tuple[str, float, float]  # (stack label, median ms, task metric or rel L2)


def _grid(n: int, cols: int = 3) -> tuple[int, int]:
    return math.ceil(n / cols), min(n, cols)


def latency_distributions(curves: dict[str, list[Curve]], path: Path) -> list[Path]:
    """An empirical CDF of every stack's per-query latency (ms, log scale), a panel per workload
    (`curves`: workload -> [(stack, latencies in ms)]), with p99 marked: how steady, not just how
    fast. Returns the PNG and SVG paths."""
    rows, cols = _grid(len(curves))
    fig, axes = figure(4.2 * cols, 3.0 * rows, rows, cols)
    axes = np.atleast_1d(axes).ravel()
    for ax, (workload, stacks) in zip(axes, curves.items()):
        for label, ms in stacks:
            x = np.sort(ms)
            ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", label=label, linewidth=1.2)
        ax.axhline(0.99, color="grey", linewidth=0.6, linestyle=":")
        ax.set(xscale="log", xlabel="latency per query (ms)", ylabel="share of queries", title=workload, ylim=(0, 1.01))
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes[len(curves):]:
        ax.axis("off")
    return save(fig, path)


def speed_accuracy(points: dict[str, tuple[str, list[Point]]], path: Path) -> list[Path]:
    """Median latency (ms, log scale) against accuracy, a panel per workload (`points`: workload
    -> (accuracy axis label, [(stack, median ms, accuracy)])): what each precision buys in speed
    and costs in accuracy. Returns the PNG and SVG paths."""
    rows, cols = _grid(len(points))
    fig, axes = figure(4.2 * cols, 3.0 * rows, rows, cols)
    axes = np.atleast_1d(axes).ravel()
    for ax, (workload, (metric, pts)) in zip(axes, points.items()):
        for label, ms, value in pts:
            ax.scatter([ms], [value], s=18)
            ax.annotate(label, (ms, value), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(xscale="log", xlabel="median latency (ms)", ylabel=metric, title=workload)
    for ax in axes[len(points):]:
        ax.axis("off")
    return save(fig, path)
