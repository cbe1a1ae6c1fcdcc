"""Figures for reports: drawn off-screen, saved as PNG (embedded) and SVG (for print)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Any, Any]:
    """A new (figure, axes) on the non-interactive backend, `rows` × `cols` panels (inches)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=(width, height), squeeze=False) if rows * cols > 1 \
        else plt.subplots(figsize=(width, height))


def save(fig: Any, path: Path) -> list[Path]:
    """Write `fig` as `path`.png and `path`.svg, close it, and return both paths."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = [path.with_suffix(".png"), path.with_suffix(".svg")]
    for p in out:
        fig.savefig(p, dpi=150)
    plt.close(fig)
    return out
