"""The report's int8 findings: which configuration each int8 cell ran, and where int8 loses, why.

Read from the records' `quantization` field (chipbench.int8_search). int8 is reported as a
loss only when the configuration a deployer would choose (the fastest passing the accuracy gate)
is still slower than fp32 on the same backend, scenario and device, measured by the cells
themselves (their p50s), not by the search's quick timing, by more than ON_PAR; or when no
configuration passes the gate. Within ON_PAR it is on par: no speed to gain from int8.

Where the cells say int8 is slower but the search's paired timing says it is faster by more than
ON_PAR, the two disagree and neither is a loss: the search timed the chosen configuration and
fp32 round-robin in one process (the same clock for both), the two cells ran in two processes,
whose clocks differ by up to 2x on a shared host. The finding gives both and points to
`--repeat 3` and `compare`, which settle it.

ON_PAR = 5 %: two cells are two processes, and on a shared host one process's clock differs
from the next's by far more than that (chipbench.speed: up to 1.6x), so a difference this
small between two single cells is no evidence either way (measure with `--repeat 3` and
`chipbench compare` to resolve it). A project choice, as compare's default threshold is.
"""

from __future__ import annotations

from dataclasses import dataclass

from chipbench.record import RunRecord

ON_PAR = 0.05  # int8 at most 5 % slower than fp32: on par, not a loss


@dataclass(frozen=True)
class Int8Finding:
    """One int8 cell as the report states it: the configuration that ran, how many were
    measured, int8's measured speed-up over fp32 (fp32 p50 / int8 p50; None without an fp32
    cell), and one sentence: why it was chosen, or why int8 loses here."""

    workload: str
    backend: str
    executed: str
    candidates: int
    speedup: float | None
    loses: bool
    text: str


def int8_findings(records: list[RunRecord]) -> list[Int8Finding]:
    """A finding per measured int8 cell that carries a `quantization` field, by workload then
    backend (the newest record of each cell is the caller's to pick)."""
    fp32 = {_key(r): r for r in records if r.precision == "fp32" and r.status == "ok" and r.latency}
    out = []
    for r in records:
        q = getattr(r, "quantization", None)
        if r.precision != "int8" or r.status != "ok" or not q or not r.latency:
            continue
        base = fp32.get(_key(r))
        speedup = base.latency.median / r.latency.median if base else None
        alternatives = q.get("alternatives") or []
        if alternatives and not q.get("passed_gate"):
            failure = _executed(q).get("gate_failure")
            loses, text = True, (q["why"] + (f" ({failure})" if failure else "")
                                 + (f"; and slower than fp32: {q['loss_reason']}"
                                    if speedup is not None and speedup < 1 and q.get("loss_reason") else ""))
        elif speedup is not None and speedup >= 1 / (1 + ON_PAR) and speedup < 1:
            loses, text = False, (f"on par with fp32 (within {ON_PAR:.0%}, closer than two single cells can tell "
                                  f"apart: `--repeat 3` and `compare` resolve it): no speed to gain from int8 here; "
                                  + q["why"])
        elif speedup is not None and speedup < 1 and (paired := _paired_speedup(q, r)) and paired >= 1 + ON_PAR:
            loses, text = False, (f"undecided between processes: these two cells, {r.latency.median:.3g} ms against "
                                  f"fp32 {base.latency.median:.3g} ms, ran in two processes, while the search timed "
                                  f"{q.get('executed')} round-robin with fp32 in one process at {paired:.2f}× fp32's "
                                  f"speed; not a loss (`--repeat 3` and `compare` settle it); " + q["why"])
        elif speedup is not None and speedup < 1:
            timed = _searched_ms(q)
            searched = f" ({timed[0]:.3g} ms against fp32 {timed[1]:.3g} ms)" if timed else ""
            reason = q.get("loss_reason") or (
                f"this timed cell, {r.latency.median:.3g} ms against {base.latency.median:.3g} ms, is the measurement; "
                f"the search timed it on ONNX Runtime{searched}")
            loses, text = True, f"int8 loses to fp32 with the fastest passing configuration; {reason}"
        else:
            loses, text = False, q["why"]
        out.append(Int8Finding(r.workload["name"], r.backend["name"], q.get("executed") or "–",
                               len(alternatives), speedup, loses, text))
    return sorted(out, key=lambda f: (f.workload, f.backend))


def _executed(q: dict) -> dict:
    """The search's measurement of the configuration the cell ran ({} when it has none)."""
    return next((a for a in q.get("alternatives") or [] if a.get("name") == q.get("executed")), {})


def _searched_ms(q: dict) -> tuple[float, float] | None:
    """(the executed configuration's p50, fp32's p50) in ms, from the search's round-robin timing
    in one process; None when it did not time both."""
    ms = _executed(q).get("p50_ms")
    return (ms, q["fp32_p50_ms"]) if ms and q.get("fp32_p50_ms") else None


def _paired_speedup(q: dict, r: RunRecord) -> float | None:
    """fp32's p50 over the executed configuration's in the search's timing, when the search timed
    them on the cell's own backend (`timed_on`); else None."""
    timed = _searched_ms(q) if q.get("timed_on") == r.backend["name"] else None
    return timed[1] / timed[0] if timed else None


def _key(r: RunRecord) -> tuple:
    return (r.workload["name"], r.backend["name"], r.scenario["name"], r.device_id, r.batch)
