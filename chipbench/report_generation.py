"""The report's generation section: TTFT, TPOT and tokens/s per backend (chipbench.generation)."""

from __future__ import annotations

from dataclasses import dataclass

from chipbench.record import RunRecord


@dataclass(frozen=True)
class GenerationRow:
    """One generation cell as the report shows it: TTFT and TPOT statistics in ms (median,
    p90, p99 over queries), output tokens/s over the whole run, TTFT median per prompt length
    (ms, keyed by the length in tokens), and where the figures come from."""

    workload: str
    backend: str
    device: str
    output_tokens: int
    ttft: dict
    tpot: dict
    tokens_per_s: float
    ttft_by_len: dict[str, float]
    issuer: str
    prefill_graphs: str
    verdict: str


def generation_rows(records: list[RunRecord]) -> list[GenerationRow]:
    """Rows for the measured records that carry a `generation` part, by workload then backend."""
    rows = []
    for r in records:
        g = getattr(r, "generation", None)
        if r.status != "ok" or not g:
            continue
        rows.append(GenerationRow(
            r.workload["name"], r.backend["name"], r.device_label, g["output_tokens"], g["ttft"], g["tpot"],
            g["tokens_per_s"]["value"], {n: p["ttft"]["median"] for n, p in g["per_prompt_len"].items()},
            g["issuer"], g.get("prefill_graphs", ""), r.verdict or ""))
    return sorted(rows, key=lambda x: (x.workload, x.device, x.backend))


def prompt_lengths(rows: list[GenerationRow]) -> list[str]:
    """The prompt lengths the rows measured, ascending (as the per-length columns' keys)."""
    return sorted({n for row in rows for n in row.ttft_by_len}, key=int)
