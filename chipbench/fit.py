"""Deployment fit: will this stack run this line? A requirement (chipbench.requirement) judged
against a measured cell: FITS, DOES NOT FIT (naming what failed and by how much) or NOT PROVEN.

The verdict is a list of checks, each `met`, `failed` or `not proven`:

- measurement: the cell ran (status ok) at the requirement's arrival pattern and rate.
- latency: the deadline at the stated percentile, judged with MLPerf LoadGen's early-stopping
  rule (chipbench.tails). Met when the percentile's upper bound at 99 % confidence is within the
  deadline. Failed when the count supports the percentile and its sample value exceeds the
  deadline, or, whatever the count, when so many queries missed the deadline that the
  percentile exceeds it with 99 % confidence (a one-sided binomial test: with the true
  percentile within the deadline, a query misses it with probability at most 1 - p, so k or more
  misses among n have probability at most P(X >= k), X ~ Binomial(n, 1 - p); the same
  construction as LoadGen's early stopping, `loadgen/early_stopping.cc`, turned the other way).
  Not proven otherwise: too few queries (n below 64 for p90, 662 for p99, 6,636 for p99.9), a
  sample value within the deadline whose bound is not, or a miss measured while other work kept
  the machine busy or its CPU ran slower than calibrated (the record's machine-quiet or
  machine-speed rule failed, chipbench.quiet, chipbench.speed): contention only
  adds latency, so a deadline met beside it stands, and a deadline missed beside it is not proof.
- accuracy: the task metric as a share of the FP32 model's (`percent_of_fp32`; the record's
  `accuracy.task.ratio`, which is value / reference, or reference / value where lower is better,
  chipbench.taskeval) or against an absolute floor in the metric's direction.
- cores: the threads the stack ran with, and the cores its process kept busy over the timed run
  (resources.cpu.cores_busy = CPU seconds / wall seconds), within the budget.
- memory: the serving process's peak resident set (resources.peak_rss_bytes; model loading and
  compiling included, chipbench.resources) within the budget, MiB = 2**20 bytes.
- energy: joules per inference (record.energy, measured on CUDA devices only) within the budget;
  not proven where the device gave no reading.

The verdict: DOES NOT FIT when a check failed, else NOT PROVEN when one is not proven, else FITS.
`judge` is a pure function of the requirement and the record (and its raw samples), so it is
tested with synthetic records; `chipbench fit` (chipbench.cli_fit) runs the cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from chipbench.validity import SOFT_RULES
from chipbench.record import RunRecord
from chipbench.requirement import Requirement
from chipbench.scenarios import MeasureSettings
from chipbench.suite import Cell
from chipbench import tails
from chipbench.tails import CONFIDENCE

VERDICTS = ("FITS", "DOES NOT FIT", "NOT PROVEN")
MIB = 2**20  # bytes


@dataclass(frozen=True)
class Check:
    """One requirement judged: `name` (measurement, latency, accuracy, cores, memory, energy),
    `status` (met, failed, not proven), `text` saying what was measured against what, and
    `margin_pct`: how far the measured figure is from the limit, in percent of the limit
    (positive: over the limit, negative: within it; None where no figure was measured)."""

    name: str
    status: str
    text: str
    margin_pct: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stored form (a non-finite margin as null)."""
        return {"name": self.name, "status": self.status, "text": self.text,
                "margin_pct": None if self.margin_pct is None or not math.isfinite(self.margin_pct) else self.margin_pct}


@dataclass(frozen=True)
class FitVerdict:
    """A requirement against one stack (backend × precision × threads): the `verdict` (FITS,
    DOES NOT FIT, NOT PROVEN), the `checks` behind it, the measured record's id and the
    `headroom`: the highest Poisson rate (queries/s) meeting the deadline, from a LoadGen
    FindPeakPerformance run (`{"peak_hz", "record"}`), or None when not measured."""

    requirement: Requirement
    backend: str
    precision: str
    threads: int | None
    checks: tuple[Check, ...]
    measured_record: str | None = None
    headroom: dict[str, Any] | None = None

    @property
    def verdict(self) -> str:
        """DOES NOT FIT when a check failed, else NOT PROVEN when one is not proven, else FITS."""
        statuses = {c.status for c in self.checks}
        return "DOES NOT FIT" if "failed" in statuses else ("NOT PROVEN" if "not proven" in statuses else "FITS")

    @property
    def margin(self) -> str:
        """What decided the verdict, one line: the failed checks, else the unproven ones, else
        the latency check (how far within the deadline)."""
        want = {"DOES NOT FIT": "failed", "NOT PROVEN": "not proven"}.get(self.verdict)
        if want:
            return "; ".join(c.text for c in self.checks if c.status == want)
        return "; ".join(c.text for c in self.checks if c.name == "latency")

    def headroom_text(self) -> str:
        """"812 Hz (1.27× the line's rate)" (saying so when the run at that rate then missed the
        deadline), "no rate met the deadline", or "not measured"."""
        if not self.headroom:
            return "not measured"
        peak = self.headroom.get("peak_hz")
        if not peak:
            return "no rate met the deadline"
        text = f"{peak:.4g} Hz ({peak / self.requirement.rate_hz:.2f}× the line's rate)"
        if self.headroom.get("confirmed") is False:
            return f"{text}, found by LoadGen's peak search; not confirmed: the run at that rate missed the deadline"
        return text

    def stack(self) -> str:
        """"ort-cpu · fp32 · 2 threads"."""
        threads = "default threads" if self.threads is None else f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        return f"{self.backend} · {self.precision} · {threads}"

    def to_dict(self) -> dict[str, Any]:
        """The record's `fit` part (chipbench/schema/run_record.schema.json)."""
        return {"requirement": self.requirement.to_dict(), "verdict": self.verdict,
                "checks": [c.to_dict() for c in self.checks], "margin": self.margin, "headroom": self.headroom,
                "measured_record": self.measured_record, "threads": self.threads}

    @classmethod
    def from_record(cls, rec: RunRecord) -> FitVerdict:
        """The verdict a kind "fit" record holds. KeyError/TypeError when it holds none."""
        f = rec.fit or {}
        checks = tuple(Check(c["name"], c["status"], c["text"], c.get("margin_pct")) for c in f["checks"])
        return cls(Requirement.from_dict(f["requirement"]), rec.backend["name"], rec.precision, f.get("threads"),
                   checks, f.get("measured_record"), f.get("headroom"))


def _pct(measured: float, limit: float) -> float:
    return (measured / limit - 1.0) * 100.0


def _ms(v: float) -> str:
    """Milliseconds to three significant figures, without exponent notation (2260, not 2.26e+03)."""
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def _signed(pct: float) -> str:
    return f"{pct:+.0f} %" if abs(pct) >= 1 else f"{pct:+.1f} %"


def over_with_confidence(samples_ms: np.ndarray, deadline_ms: float, percent: float,
                         confidence: float = CONFIDENCE) -> bool:
    """Whether the `percent`-th percentile of the latencies exceeds `deadline_ms` with
    `confidence` (chipbench.tails.over_with_confidence on the queries over the deadline; see the
    module docstring). `samples_ms`: per-query latencies in ms, any order."""
    ms = np.asarray(samples_ms, dtype=np.float64)
    return tails.over_with_confidence(int(ms.size), int(np.count_nonzero(ms > deadline_ms)), percent / 100.0,
                                      confidence)


def latency_check(req: Requirement, rec: RunRecord, samples_ms: np.ndarray | None) -> Check:
    """The deadline at the requirement's percentile, by the rules of the module docstring."""
    tail = rec.latency.tails.get(req.tail) if rec.latency else None
    d, name = req.deadline_ms, req.percentile
    if tail is None:
        return Check("latency", "not proven", f"{name}: the record has no tail estimate (an older record)")
    if tail.estimable and tail.upper_bound <= d:
        m = _pct(tail.upper_bound, d)
        return Check("latency", "met", f"{name} {_ms(tail.value)} ms (≤ {_ms(tail.upper_bound)} at "
                                        f"{tail.confidence * 100:g} %) within {d:g} ms deadline ({_signed(m)})", m)
    if tail.estimable and tail.value > d:
        m = _pct(tail.value, d)
        return Check("latency", "failed", f"{name} {_ms(tail.value)} ms > {d:g} ms deadline ({_signed(m)})", m)
    if samples_ms is not None and over_with_confidence(samples_ms, d, req.percent, tail.confidence):
        over = int(np.count_nonzero(np.asarray(samples_ms) > d))
        shown = tail.value if tail.value is not None else float(np.percentile(samples_ms, req.percent))
        m = _pct(shown, d)
        return Check("latency", "failed", f"{name} {_ms(shown)} ms > {d:g} ms deadline ({_signed(m)}; {over} of "
                                          f"{len(samples_ms)} queries late, over at {tail.confidence * 100:g} % confidence)", m)
    if not tail.estimable:
        return Check("latency", "not proven", f"{name} not estimable: n = {tail.count} < {tail.min_count} queries "
                                              f"for a {tail.confidence * 100:g} % bound")
    m = _pct(tail.upper_bound, d)
    return Check("latency", "not proven", f"{name} {_ms(tail.value)} ms within {d:g} ms but its "
                                          f"{tail.confidence * 100:g} % bound {_ms(tail.upper_bound)} ms is not ({_signed(m)})", m)


def accuracy_check(req: Requirement, rec: RunRecord) -> Check | None:
    """The accuracy floor against the record's task metric; None when none is required."""
    if req.percent_of_fp32 is None and req.metric_floor is None:
        return None
    task = rec.accuracy.task if rec.accuracy else None
    if not task or task.get("value") is None:
        return Check("accuracy", "not proven", "no task metric measured (fidelity only)")
    metric, value = task["metric"], float(task["value"])
    if req.percent_of_fp32 is not None:
        ratio = task.get("ratio")
        if ratio is None:
            return Check("accuracy", "not proven", f"{metric}: no ratio to the FP32 model recorded")
        share = float(ratio) * 100.0
        floor = req.percent_of_fp32
        m = (floor - share) / floor * 100.0  # positive: below the floor
        text = f"{metric} {share:.4g} % of FP32 ({value:.4g} vs {float(task['reference']):.4g})"
        if share >= floor:
            return Check("accuracy", "met", f"{text} ≥ {floor:g} % floor", m)
        return Check("accuracy", "failed", f"{text} < {floor:g} % floor ({_signed(m)} short)", m)
    floor = req.metric_floor
    higher = task.get("higher_is_better", True)
    ok = value >= floor if higher else value <= floor
    m = (floor - value) / abs(floor) * 100.0 if floor else None
    if m is not None and not higher:
        m = -m
    sign = "≥" if higher else "≤"
    if ok:
        return Check("accuracy", "met", f"{metric} {value:.4g} {sign} {floor:g} floor", m)
    return Check("accuracy", "failed", f"{metric} {value:.4g} misses the {sign} {floor:g} floor", m)


def budget_checks(req: Requirement, rec: RunRecord, threads: int | None) -> list[Check]:
    """Cores, memory and energy against the budget (those the requirement states)."""
    checks = []
    res = rec.resources
    if req.cores is not None:
        busy = res.cpu.cores_busy if res and res.cpu else None
        if threads is not None and threads > req.cores:
            checks.append(Check("cores", "failed", f"{threads} threads > {req.cores}-core budget", _pct(threads, req.cores)))
        elif busy is not None and busy > req.cores:
            m = _pct(busy, req.cores)
            checks.append(Check("cores", "failed", f"{busy:.2f} cores busy > {req.cores}-core budget ({_signed(m)})", m))
        elif threads is None and busy is None:
            checks.append(Check("cores", "not proven", "threads and CPU use not recorded"))
        else:
            shown = f"{busy:.2f} cores busy" if busy is not None else "CPU use not recorded"
            checks.append(Check("cores", "met", f"{threads or 'default'} threads, {shown}, within {req.cores}-core budget",
                                _pct(busy, req.cores) if busy is not None else None))
    if req.memory_mib is not None:
        rss = res.peak_rss_bytes if res else None
        if rss is None:
            checks.append(Check("memory", "not proven", "peak memory not measured"))
        else:
            mib = rss / MIB
            m = _pct(mib, req.memory_mib)
            status = "met" if mib <= req.memory_mib else "failed"
            word = "within" if status == "met" else ">"
            checks.append(Check("memory", status, f"peak RSS {mib:.0f} MiB {word} {req.memory_mib:g} MiB budget ({_signed(m)})", m))
    if req.energy_j_per_inference is not None:
        joules = (rec.energy or {}).get("joules_per_inference")
        if joules is None:
            checks.append(Check("energy", "not proven", f"energy not measured on {rec.device_id} "
                                                        "(chipbench measures it on CUDA devices)"))
        else:
            m = _pct(joules, req.energy_j_per_inference)
            status = "met" if joules <= req.energy_j_per_inference else "failed"
            word = "within" if status == "met" else ">"
            checks.append(Check("energy", status, f"{joules:.3g} J/inference {word} {req.energy_j_per_inference:g} J "
                                                  f"budget ({_signed(m)})", m))
    return checks


def measured_arrival(rec: RunRecord) -> dict[str, Any] | None:
    """The arrival the record's timed run was measured at (rate_hz, latency_bound_ms,
    percentile), as its scenario issuer recorded it; None for a record without one."""
    return ((rec.scenario or {}).get("loadgen") or {}).get("arrival")


def busy_machine(rec: RunRecord) -> str | None:
    """Why the record's machine rules failed (machine-quiet: other work kept cores busy during
    the timed run, chipbench.quiet; machine-speed: the CPU ran slower than calibrated,
    chipbench.speed), or None when they passed, were not judged, or are absent."""
    for rule in rec.validity or []:
        if rule.get("rule") in SOFT_RULES and rule.get("passed") is False:
            reason = rule.get("reason") or ""
            return reason.split(" (> ")[0].removeprefix("machine busy: ") or rule.get("rule")
    return None


def judge(req: Requirement, rec: RunRecord | None, threads: int | None, samples_ms: np.ndarray | None = None,
          backend: str | None = None, precision: str | None = None,
          headroom: dict[str, Any] | None = None) -> FitVerdict:
    """`req` judged against the measured record `rec` (None: the cell was not measured) run
    with `threads` threads; `samples_ms` are its raw per-query latencies in ms (None: not
    available, then only the stored tails count). Pure: nothing is run or read."""
    backend = backend or (rec.backend["name"] if rec else "?")
    precision = precision or (rec.precision if rec else "fp32")

    def verdict(*checks: Check) -> FitVerdict:
        return FitVerdict(req, backend, precision, threads, tuple(c for c in checks if c is not None),
                          rec.id if rec else None, headroom)

    if req.cores is not None and threads is not None and threads > req.cores:
        return verdict(Check("cores", "failed", f"{threads} threads > {req.cores}-core budget", _pct(threads, req.cores)))
    if rec is None:
        return verdict(Check("measurement", "not proven", "not measured"))
    if rec.status != "ok" or rec.latency is None:
        return verdict(Check("measurement", "not proven", f"{rec.status}: {rec.reason or 'no latency measured'}"))
    checks = []
    arrival = measured_arrival(rec)
    rate = (arrival or {}).get("rate_hz")
    if rec.scenario.get("name") != req.scenario or rate is None or not math.isclose(rate, req.rate_hz, rel_tol=1e-9):
        shown = f"{rate:g} Hz" if rate is not None else "no recorded rate"
        return verdict(Check("measurement", "not proven", f"measured {rec.scenario.get('name')} at {shown}, "
                                                          f"not {req.scenario} at {req.rate_hz:g} Hz"))
    latency = latency_check(req, rec, samples_ms)
    busy = busy_machine(rec)
    if latency.status == "failed" and busy:
        # other work inflates latency: a miss measured beside it proves nothing about the stack
        latency = Check("latency", "not proven", f"{latency.text}, but measured while the machine was busy ({busy})",
                        latency.margin_pct)
    checks.append(latency)
    checks.append(accuracy_check(req, rec))
    checks += budget_checks(req, rec, threads)
    return verdict(*checks)


# --- the cells a requirement needs -------------------------------------------------------

MIN_DURATION_S = 1.0
WARMUP_COUNT = 2
WARMUP_S = 0.2
COMPILE_ALLOWANCE_S = 400.0  # seconds a cell may spend compiling before it is killed (tuned TVM builds)


def fit_cell(req: Requirement, backend: str, precision: str, threads: int | None, headroom: bool = False,
             min_count: int | None = None) -> Cell:
    """The cell that measures `req` on one stack: the requirement's scenario (fixed-rate or
    server) at its rate, deadline and percentile, with `min_count` queries (default: the count
    the percentile needs, `Requirement.min_count`) and time for them at the rate (1.2 × count /
    rate + 5 s, at least 10 s). `headroom`: a server cell with LoadGen's FindPeakPerformance
    instead, searching the highest Poisson rate meeting the deadline."""
    count = min_count or req.min_count
    max_s = max(10.0, 1.2 * count / req.rate_hz + 5.0)
    arrival = {"latency_bound_ms": req.deadline_ms, "percentile": req.percent}
    scenario = "server" if headroom else req.scenario
    if scenario == "server":
        arrival["target_qps"] = req.rate_hz
    else:
        arrival["rate_hz"] = req.rate_hz
    settings = MeasureSettings(warmup_count=WARMUP_COUNT, warmup_s=WARMUP_S, min_count=count,
                               min_duration_s=MIN_DURATION_S, max_duration_s=max_s, find_peak=headroom, **arrival)
    return Cell(workload=req.workload, backend=backend, precision=precision, scenario=scenario, threads=threads,
                timeout_s=max_s * (3 if headroom else 1) + COMPILE_ALLOWANCE_S, settings=settings)


# The configuration keys that say how long a cell was measured, not what was measured.
_LENGTH_KEYS = ("timeout_s", "task_samples")
_LENGTH_SETTINGS = ("warmup_count", "warmup_s", "min_count", "min_duration_s", "max_duration_s", "max_count",
                    "quiet_cores", "accuracy_log_probability")
_ARRIVAL_SETTINGS = ("target_qps", "rate_hz", "latency_bound_ms", "percentile")


def _what(config: dict[str, Any]) -> str:
    """What a cell configuration (Cell.to_dict) measures, as canonical JSON: how long it was
    measured, its threads and its arrival settings left out (those are compared as they ran)."""
    from chipbench.store import canonical

    out = {k: v for k, v in config.items() if k not in _LENGTH_KEYS + ("threads", "settings")}
    settings = config.get("settings") or {}
    out["settings"] = {k: v for k, v in settings.items() if k not in _LENGTH_SETTINGS + _ARRIVAL_SETTINGS}
    return canonical(out)


def effective_threads(rec: RunRecord) -> int | None:
    """The threads a record's cell ran with: those it asked for, else those its backend reports
    it set (an integer), else None."""
    threads = (rec.resources.threads if rec.resources else None) or {}
    for key in ("requested", "backend"):
        value = threads.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    config_threads = (rec.provenance.get("config") or {}).get("threads")
    return config_threads if isinstance(config_threads, int) else None


def reusable(cell: Cell, records: list[RunRecord], need_count: int) -> RunRecord | None:
    """The newest ok benchmark record that measured `cell`: the same cell configuration (workload
    and its parameters, backend, precision, scenario and its other settings, seed, device,
    target, tuning database), the same arrival as it ran (rate, deadline, percentile as the
    issuer recorded them, whether the suite gave them or the workload did), the same threads
    (asked for, or set by the backend where the cell asked for none), and at least `need_count`
    queries. How long it was measured otherwise may differ. None when no record qualifies."""
    want = _what(cell.to_dict())
    s = cell.settings
    rate = s.rate_hz if cell.scenario == "fixed-rate" else s.target_qps
    for rec in reversed(records):
        if rec.kind != "run" or rec.status != "ok" or rec.latency is None or rec.latency.count < need_count:
            continue
        config = rec.provenance.get("config") or {}
        if _what(config) != want:
            continue
        arrival = measured_arrival(rec) or {}
        if not (_close(arrival.get("rate_hz"), rate) and _close(arrival.get("latency_bound_ms"), s.latency_bound_ms)
                and _close(arrival.get("percentile"), s.percentile)):
            continue
        if cell.threads is not None and effective_threads(rec) != cell.threads:
            continue
        if cell.threads is None and config.get("threads") is not None:
            continue
        return rec
    return None


def _close(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9)


def headroom_of(rec: RunRecord | None) -> dict[str, Any] | None:
    """A find-peak server record's headroom: {"peak_hz": LoadGen's peak (None when no rate met
    the bound), "confirmed": whether the timed run at that rate then met the deadline too
    (LoadGen's VALID), "record": its id}; None without an ok record."""
    if rec is None or rec.status != "ok":
        return None
    loadgen = (rec.scenario or {}).get("loadgen") or {}
    peak = (loadgen.get("find_peak") or {}).get("peak_qps")
    return {"peak_hz": float(peak) if peak else None, "confirmed": loadgen.get("result") == "VALID", "record": rec.id}


def fit_record(verdict: FitVerdict, measured: RunRecord | None) -> RunRecord:
    """The store's record of a verdict: kind "fit", its `fit` part, the requirement's workload,
    the stack, and the provenance of the machine it was judged on (the measured record's where
    there is one)."""
    from chipbench.machine import git_commit, library_versions, machine_info

    req = verdict.requirement
    prov = {"libraries": library_versions(), "machine": machine_info(), "git_commit": git_commit(), "seed": 0}
    if measured is not None:
        prov.update({k: measured.provenance[k] for k in ("libraries", "machine", "device") if k in measured.provenance})
    prov["config"] = {"requirement": req.name, "threads": verdict.threads}
    backend = {"name": verdict.backend, "versions": dict(measured.backend.get("versions") or {}) if measured else {}}
    return RunRecord(
        workload={"name": req.workload, "scenario": req.description, "params": {}},
        backend=backend, precision=verdict.precision, batch=1,
        scenario={"name": req.scenario, "requirement": req.name,
                  "settings": dict((measured.scenario or {}).get("settings") or {}) if measured else {}},
        status="ok", reason=None, kind="fit", fit=verdict.to_dict(), provenance=prov,
        notes=[f"requirement {req.name}: {req.summary()}"],
    )


@dataclass
class FitRow:
    """One verdict as the report's "Deployment fit" table shows it."""

    requirement: str
    summary: str
    stack: str
    verdict: str
    margin: str
    headroom: str
    workload: str = ""


def fit_rows(records: list[RunRecord]) -> list[FitRow]:
    """The kind "fit" records among `records` as report rows, by requirement then stack."""
    rows = []
    for rec in records:
        if rec.kind != "fit" or not rec.fit:
            continue
        v = FitVerdict.from_record(rec)
        rows.append(FitRow(v.requirement.name, v.requirement.summary(), v.stack(), v.verdict, v.margin, v.headroom_text(),
                           v.requirement.workload))
    return sorted(rows, key=lambda r: (r.requirement, r.stack))


__all__ = ["Check", "FitVerdict", "FitRow", "VERDICTS", "judge", "latency_check", "accuracy_check", "budget_checks",
           "over_with_confidence", "fit_cell", "reusable", "headroom_of", "fit_record", "fit_rows"]
