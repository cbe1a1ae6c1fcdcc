"""`chipbench compare` output: Markdown, self-contained HTML (autoescaped) and JSON of a Comparison."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from jinja2 import Environment, PackageLoader, select_autoescape

from chipbench.compare import MIN_SAMPLES_FOR_INTERVAL, Comparison
from chipbench.report import fmt_ms, md_escape


def fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def fmt_ci(ci: tuple[float, float] | list[float] | None) -> str:
    return "no interval" if not ci else f"{ci[0]:.3f}–{ci[1]:.3f}"


def fmt_value(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def noise_note(comparison: Comparison) -> str:
    """What the intervals cover: the variance between invocations where both sides have two or
    more (`chipbench run --repeat K`), else the noise within one run only, said with how many
    cells that is."""
    measured = [cell for cell in comparison.cells if cell.ci95]
    within = [cell for cell in measured if not cell.between_runs]
    if not within:
        return ("Every interval resamples the invocations of each side (chipbench run --repeat), then the samples "
                "within each, so it covers the variance between runs of a cell as well as the noise within one.")
    return (f"{len(within)} of {len(measured)} interval(s) come from one invocation on a side, so they cover the "
            f"sampling noise within a run, not the variance between runs of the same cell on the same machine, "
            f"which on a shared machine can be larger: measure both sides with `chipbench run --repeat 3` "
            f"before acting on a change.")


def render(comparison: Comparison, fmt: str) -> str:
    """The comparison as "md" or "html" text (every name and reason from a record is escaped)."""
    env = Environment(
        loader=PackageLoader("chipbench", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html.j2", "html"), default_for_string=False),
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(md=md_escape, ms=fmt_ms, ratio=fmt_ratio, ci=fmt_ci, val=fmt_value)
    return env.get_template(f"compare.{fmt}.j2").render(
        c=comparison, generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        counts=comparison.counts(), min_n=MIN_SAMPLES_FOR_INTERVAL, noise=noise_note(comparison),
        changed=[cell for cell in comparison.cells if cell.accuracy_change],
    )


def to_json(comparison: Comparison) -> str:
    """The comparison as JSON text (`Comparison.to_dict`)."""
    return json.dumps(comparison.to_dict(), indent=1, allow_nan=False)
