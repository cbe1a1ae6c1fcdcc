"""Compare two sets of runs cell by cell: is the difference real?

BASE and NEW each select records (`Selector`): a results dir, the records of a git commit, or
those of a machine within one store. Cells are matched by `match_key`; for each matched cell
the speedup is BASE median / NEW median per query (> 1: NEW is faster) with a 95 % bootstrap
confidence interval from the raw samples, and a verdict against a threshold; the suite's
geometric-mean speedup gets its own interval. Accuracy and status changes are listed beside.

The bootstrap of a median needs no resampling loop: the median of n values drawn with
replacement from the sorted sample x(0) <= ... <= x(n-1) is x(floor(n U)) where U is the k-th
smallest of n standard uniforms, and that order statistic is Beta(k, n + 1 - k) (David and
Nagaraja, *Order Statistics*, 3rd ed., 2003, §2.1); for an even n the next order statistic is
U + (1 - U) Beta(1, n - k). So each bootstrap median costs two Beta draws whatever n is, and
has exactly the distribution of `np.median` of a resample (Efron and Tibshirani, *An
Introduction to the Bootstrap*, 1993, ch. 13, percentile intervals).

A cell run several times in one sweep (`chipbench run --repeat K`: each invocation a fresh
process) is compared on all its invocations: a side's location is the geometric mean of its
invocations' medians, and its bootstrap resamples the invocations first, then the samples
within each (the two-stage bootstrap of Davison and Hinkley, *Bootstrap Methods and their
Application*, 1997, §3.8; repetition at the level of invocations after Kalibera and Jones,
"Rigorous Benchmarking in Reasonable Time", ISMM 2013). One invocation a side leaves the
variance between processes out of the interval: measured on a shared 2-core VM it is larger
than the noise within a run, so such a comparison says so, cell by cell.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from chipbench.record import RunRecord
from chipbench.store import ResultsStore, StoreError

LEVEL = 0.95  # two-sided confidence of every interval
DEFAULT_THRESHOLD = 0.05  # a change smaller than 5 % is not called a change (the default)
DEFAULT_RESAMPLES = 2000
# Fewer samples than this on either side and a cell gets no interval: the bootstrap distribution
# of a median of a handful of values takes a handful of values itself and its interval is too
# narrow to trust. A project choice, stated in the report, not a published constant.
MIN_SAMPLES_FOR_INTERVAL = 20

FASTER, SLOWER, SAME = "faster", "slower", "no significant change"
NO_SAMPLES = "no interval (no raw samples)"
TOO_FEW = f"no interval (fewer than {MIN_SAMPLES_FOR_INTERVAL} samples)"

_HEX = re.compile(r"^[0-9a-fA-F]{4,40}$")


class CompareError(Exception):
    """Bad BASE/NEW (or a store that cannot be read): the message is one line naming the argument."""


@dataclass(frozen=True)
class Selector:
    """Which records one side of a comparison holds, as the user writes it:
    `PATH` or `dir:PATH` (the newest record of each cell in that results dir),
    `commit:PREFIX` (records whose provenance.git_commit starts with PREFIX, 4-40 hex digits),
    `machine:HOST` (records measured on the machine whose hostname is HOST); the last two
    look in the `--results-dir` store."""

    kind: str  # "dir", "commit", "machine"
    value: str
    text: str  # as written

    @classmethod
    def parse(cls, text: str, role: str) -> Selector:
        """CompareError naming `role` (BASE or NEW) when `text` is empty or malformed."""
        text = text.strip()
        kind, sep, value = text.partition(":")
        if not sep or kind not in ("dir", "commit", "machine"):
            kind, value = "dir", text
        if not value:
            raise CompareError(f"{role} {text!r}: empty; write a results dir, commit:PREFIX or machine:HOST")
        if kind == "commit" and not _HEX.match(value):
            raise CompareError(f"{role} {text!r}: a commit is 4 to 40 hex digits, e.g. commit:1a2b3c4")
        return cls(kind, value, text)


@dataclass
class Side:
    """One side's records (the newest of each matched cell) and the store that holds their samples."""

    selector: Selector
    store: ResultsStore
    records: list[RunRecord]

    @property
    def hosts(self) -> set[str]:
        return {hostname(r) for r in self.records}


def hostname(rec: RunRecord) -> str:
    """The machine a record was measured on ("" when it does not say)."""
    device = rec.provenance.get("device") or {}
    return str((device.get("machine") or rec.provenance.get("machine") or {}).get("hostname") or "")


def load_side(selector: Selector, store_dir: Path, role: str) -> Side:
    """The measurement records (`kind == "run"`) `selector` names. CompareError naming `role`
    when the dir or store is missing or unreadable, or the selector matches no record."""
    root = Path(selector.value) if selector.kind == "dir" else store_dir
    if not root.is_dir() or not ((root / "chipbench.sqlite").is_file() or (root / "runs").is_dir()):
        where = f"{role} {selector.text}" if selector.kind == "dir" else f"--results-dir {root}"
        raise CompareError(f"{where}: not a results dir (no chipbench.sqlite or runs/ in {root})")
    store = ResultsStore(root)
    try:
        records = [r for r in store.records() if r.kind == "run"]
    except StoreError as exc:
        raise CompareError(f"{role} {selector.text}: {exc}") from None
    if selector.kind == "commit":
        records = [r for r in records if str(r.provenance.get("git_commit") or "").lower()
                   .startswith(selector.value.lower())]
    elif selector.kind == "machine":
        records = [r for r in records if hostname(r) == selector.value]
    if not records:
        raise CompareError(f"{role} {selector.text}: no measurement records there (in {root})")
    return Side(selector, store, records)


def match_key(rec: RunRecord, with_host: bool) -> str:
    """What makes a BASE and a NEW record the same cell: `RunRecord.cell_key` (workload and
    params, backend, configuration bar how long it was measured, device, precision, batch,
    scenario), without the machine when the comparison is between machines. The git commit is
    never part of it."""
    if with_host:
        return rec.cell_key()
    prov = dict(rec.provenance)
    prov["machine"] = {**(prov.get("machine") or {}), "hostname": None}
    if isinstance(prov.get("device"), dict) and prov["device"].get("machine"):
        prov["device"] = {**prov["device"], "machine": {**prov["device"]["machine"], "hostname": None}}
    return replace(rec, provenance=prov).cell_key()


def invocations_per_cell(records: Iterable[RunRecord], with_host: bool) -> dict[str, list[RunRecord]]:
    """Each cell's newest record with the other invocations of its sweep (records come oldest
    first, as the store gives them; a record without a sweep stands alone)."""
    by_cell: dict[str, list[RunRecord]] = {}
    for rec in records:
        by_cell.setdefault(match_key(rec, with_host), []).append(rec)
    out = {}
    for key, recs in by_cell.items():
        newest = recs[-1]
        sweep = sweep_id(newest)
        out[key] = [r for r in recs if sweep_id(r) == sweep] if sweep else [newest]
    return out


def sweep_id(rec: RunRecord) -> str | None:
    """The `chipbench run` a record came from (None for records made before sweeps were named)."""
    return (rec.provenance.get("sweep") or {}).get("id")


# ---- statistics -----------------------------------------------------------------------------

def bootstrap_medians(samples: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """`resamples` medians of samples drawn with replacement from `samples` (any unit, n >= 1),
    drawn exactly through the Beta law of uniform order statistics (see the module docstring);
    the same distribution as `np.median(rng.choice(samples, n))`, in O(resamples)."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = x.size
    if n == 0:
        raise ValueError("no samples")
    if n == 1:
        return np.full(resamples, x[0])
    k = (n + 1) // 2  # 1-based rank of the (lower) median
    u = rng.beta(k, n + 1 - k, size=resamples)
    lower = x[np.minimum((u * n).astype(np.int64), n - 1)]
    if n % 2:
        return lower
    u2 = u + (1.0 - u) * rng.beta(1, n - k, size=resamples)
    upper = x[np.minimum((u2 * n).astype(np.int64), n - 1)]
    return (lower + upper) / 2


@dataclass(frozen=True)
class Speedup:
    """BASE location / NEW location (> 1: NEW is faster), with its `LEVEL` bootstrap interval
    (None when there is none) and the bootstrap replicates behind it (for the geometric mean).
    `between_runs`: the interval includes the variance between invocations (two or more a side)."""

    estimate: float
    low: float | None = None
    high: float | None = None
    replicates: np.ndarray | None = field(default=None, repr=False, compare=False)
    between_runs: bool = False


def location(runs: list[np.ndarray]) -> float:
    """A side's location: the geometric mean of its invocations' medians (the median itself for
    one invocation), in the samples' unit. ValueError when a run is empty."""
    if any(np.asarray(r).size == 0 for r in runs) or not runs:
        raise ValueError("no samples")
    return float(np.exp(np.mean([np.log(np.median(r)) for r in runs])))


def bootstrap_locations(runs: list[np.ndarray], resamples: int, rng: np.random.Generator) -> np.ndarray:
    """`resamples` bootstrap replicates of `location(runs)`: the m invocations are drawn m times
    with replacement, then each drawn invocation's median from its own bootstrap law
    (`bootstrap_medians`, an independent draw each time it is drawn). One invocation: the
    bootstrap of its median."""
    m = len(runs)
    if m == 1:
        return bootstrap_medians(runs[0], resamples, rng)
    # draws[j, k, r]: a bootstrap median of invocation j for slot k of replicate r
    draws = np.stack([bootstrap_medians(r, m * resamples, rng).reshape(m, resamples) for r in runs])
    pick = rng.integers(0, m, size=(m, resamples))
    chosen = draws[pick, np.arange(m)[:, None], np.arange(resamples)[None, :]]
    return np.exp(np.mean(np.log(chosen), axis=0))


def speedup(base_s: np.ndarray | list[np.ndarray], new_s: np.ndarray | list[np.ndarray],
            resamples: int = DEFAULT_RESAMPLES, seed: int | Iterable[int] = 0) -> Speedup:
    """Ratio of the two sides' locations with a percentile-bootstrap interval, the sides
    resampled independently. Each side is one latency sample (one invocation) or a list of
    them (one per invocation), all in one unit. ValueError when a side has no samples."""
    base_runs, new_runs = _runs(base_s), _runs(new_s)
    rng = np.random.default_rng(seed)
    ratios = bootstrap_locations(base_runs, resamples, rng) / bootstrap_locations(new_runs, resamples, rng)
    alpha = (1 - LEVEL) / 2
    lo, hi = np.quantile(ratios, [alpha, 1 - alpha])
    return Speedup(location(base_runs) / location(new_runs), float(lo), float(hi), ratios,
                   between_runs=min(len(base_runs), len(new_runs)) >= 2)


def _runs(side: np.ndarray | list[np.ndarray]) -> list[np.ndarray]:
    if isinstance(side, np.ndarray) or not len(side) or np.isscalar(side[0]):
        side = [side]  # one invocation's samples
    runs = [np.asarray(r, dtype=np.float64) for r in side]
    if not runs or any(r.size == 0 for r in runs):
        raise ValueError("no samples")
    return runs


def verdict(s: Speedup, threshold: float) -> str:
    """faster when the whole interval lies above 1 + threshold, slower when it lies below
    1 / (1 + threshold) (NEW's median more than `threshold` longer), else no significant
    change: a change must be both real (outside the interval's noise) and large enough to
    matter. Symmetric in log-time. A speedup without interval gets no verdict (NO_SAMPLES)."""
    if s.low is None or s.high is None:
        return NO_SAMPLES
    if s.low > 1 + threshold:
        return FASTER
    if s.high < 1 / (1 + threshold):
        return SLOWER
    return SAME


def geomean(speedups: list[Speedup]) -> Speedup | None:
    """The geometric mean of the cells' speedups, with the percentile interval of the geometric
    mean of their bootstrap replicates (measurement noise of each cell; the suite's cells are
    fixed, not resampled). Cells without replicates enter at their point estimate. None when
    `speedups` is empty."""
    if not speedups:
        return None
    est = math.exp(sum(math.log(s.estimate) for s in speedups) / len(speedups))
    reps = [s.replicates for s in speedups if s.replicates is not None]
    if not reps:
        return Speedup(est)
    fixed = sum(math.log(s.estimate) for s in speedups if s.replicates is None)
    logs = (np.sum(np.log(np.vstack(reps)), axis=0) + fixed) / len(speedups)
    alpha = (1 - LEVEL) / 2
    lo, hi = np.exp(np.quantile(logs, [alpha, 1 - alpha]))
    return Speedup(est, float(lo), float(hi), np.exp(logs))


# ---- the comparison -------------------------------------------------------------------------

@dataclass
class CellComparison:
    """One matched cell: medians in ms, samples counted, the speedup and its verdict, accuracy
    on both sides. `change` is None when accuracy and status did not change."""

    workload: str
    backend: str
    device: str
    precision: str
    batch: int
    scenario: str
    host_base: str
    host_new: str
    status_base: str
    status_new: str
    verdict_base: str | None
    verdict_new: str | None
    median_base_ms: float | None = None
    median_new_ms: float | None = None
    n_base: int | None = None
    n_new: int | None = None
    runs_base: int = 1  # invocations compared on each side (chipbench run --repeat)
    runs_new: int = 1
    between_runs: bool = False  # the interval includes the variance between invocations
    speedup: float | None = None
    ci95: tuple[float, float] | None = None
    verdict: str = ""
    rel_l2_base: float | None = None
    rel_l2_new: float | None = None
    task_base: float | None = None
    task_new: float | None = None
    task_metric: str | None = None
    accuracy_change: str | None = None
    regression: str | None = None  # why this cell counts as a regression (exit 1), if it does
    ids: tuple[str, str] = ("", "")

    @property
    def label(self) -> str:
        return f"{self.workload} / {self.backend} / {self.device} / {self.precision} / b{self.batch} / {self.scenario}"


@dataclass
class Comparison:
    """Every matched cell, the cells only one side has, and the suite's geometric mean."""

    base: str
    new: str
    threshold: float
    resamples: int
    seed: int
    across_machines: bool
    cells: list[CellComparison]
    only_base: list[str]
    only_new: list[str]
    geomean: Speedup | None
    geomean_cells: int
    geomean_without_samples: int
    level: float = LEVEL

    @property
    def regressions(self) -> list[CellComparison]:
        return [c for c in self.cells if c.regression]

    @property
    def exit_code(self) -> int:
        """1 when any cell regressed (significantly slower, or newly failed or INVALID), else 0."""
        return 1 if self.regressions else 0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.cells:
            if c.verdict:
                out[c.verdict] = out.get(c.verdict, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what `--json` writes."""
        g = self.geomean
        return {
            "base": self.base, "new": self.new, "threshold": self.threshold, "level": self.level,
            "resamples": self.resamples, "seed": self.seed, "across_machines": self.across_machines,
            "speedup_definition": "BASE median / NEW median per query; > 1 means NEW is faster",
            "geomean": None if g is None else {"speedup": g.estimate, "ci95": None if g.low is None else [g.low, g.high],
                                               "cells": self.geomean_cells,
                                               "cells_without_samples": self.geomean_without_samples},
            "counts": self.counts(),
            "cells_with_between_run_interval": sum(1 for c in self.cells if c.between_runs),
            "regressions": [f"{c.label}: {c.regression}" for c in self.regressions],
            "cells": [{**asdict(c), "ci95": list(c.ci95) if c.ci95 else None, "ids": list(c.ids)} for c in self.cells],
            "only_base": self.only_base, "only_new": self.only_new,
            "exit_code": self.exit_code,
        }


def _describe(rec: RunRecord) -> str:
    return (f"{rec.workload.get('name')} / {rec.backend.get('name')} / {rec.device_id} / {rec.precision} / "
            f"b{rec.batch} / {rec.scenario.get('name')}" + (f" on {hostname(rec)}" if hostname(rec) else ""))


def _samples(side: Side, recs: list[RunRecord]) -> list[np.ndarray] | None:
    """The raw samples of every invocation (seconds), or None when one is missing or damaged."""
    try:
        runs = [side.store.samples(rec) for rec in recs]
    except StoreError:
        return None  # a damaged or missing samples file: compared on the stored median, said so
    return None if any(r is None for r in runs) else runs


def _accuracy(rec: RunRecord) -> tuple[float | None, float | None, str | None]:
    if rec.accuracy is None:
        return None, None, None
    task = rec.accuracy.task or {}
    return rec.accuracy.fidelity.rel_l2, task.get("value"), task.get("metric")


def _accuracy_change(c: CellComparison) -> str | None:
    changes = []
    if c.verdict_base != c.verdict_new:
        changes.append(f"verdict {c.verdict_base} → {c.verdict_new}")
    if c.task_base is not None and c.task_new is not None and not math.isclose(c.task_base, c.task_new, rel_tol=1e-9):
        changes.append(f"{c.task_metric} {c.task_base:.4g} → {c.task_new:.4g}")
    a, b = c.rel_l2_base, c.rel_l2_new
    if a is not None and b is not None and abs(a - b) > max(1e-7, 0.01 * max(abs(a), abs(b))):
        changes.append(f"rel L2 {a:.3g} → {b:.3g}")
    return "; ".join(changes) or None


def compare_cell(base: Side, new: Side, base_recs: list[RunRecord], new_recs: list[RunRecord], threshold: float,
                 resamples: int, seed: Iterable[int]) -> tuple[CellComparison, Speedup | None]:
    """One matched cell (each side its invocations of one sweep, newest last) as a
    CellComparison, and its Speedup (with the bootstrap replicates) when every invocation on
    both sides is a measurement."""
    rb, rn = base_recs[-1], new_recs[-1]
    c = CellComparison(
        workload=str(rb.workload.get("name")), backend=str(rb.backend.get("name")), device=rb.device_id,
        precision=rb.precision, batch=rb.batch, scenario=str(rb.scenario.get("name")),
        host_base=hostname(rb), host_new=hostname(rn), status_base=rb.status, status_new=rn.status,
        verdict_base=rb.verdict, verdict_new=rn.verdict, ids=(rb.id, rn.id),
        runs_base=len(base_recs), runs_new=len(new_recs))
    c.rel_l2_base, c.task_base, c.task_metric = _accuracy(rb)
    c.rel_l2_new, c.task_new, metric_new = _accuracy(rn)
    c.task_metric = c.task_metric or metric_new
    measured = [r for r in base_recs + new_recs if r.status == "ok" and r.latency]
    if len(measured) < len(base_recs) + len(new_recs):
        c.verdict = "not compared (not measured on both sides)"
        if rb.status == "ok" and rn.status != "ok":
            c.regression = f"measured in BASE, {rn.status} in NEW" + (f" ({rn.reason})" if rn.reason else "")
        c.accuracy_change = _accuracy_change(c)
        return c, None
    medians_b = [r.latency.median for r in base_recs]
    medians_n = [r.latency.median for r in new_recs]
    if min(medians_b + medians_n) <= 0:
        c.verdict = "not compared (a median of zero)"
        c.accuracy_change = _accuracy_change(c)
        return c, None
    c.median_base_ms, c.median_new_ms = location(medians_b), location(medians_n)
    c.n_base = sum(r.latency.count for r in base_recs)
    c.n_new = sum(r.latency.count for r in new_recs)
    sb, sn = _samples(base, base_recs), _samples(new, new_recs)
    if sb is None or sn is None:
        s = Speedup(c.median_base_ms / c.median_new_ms)
        c.verdict = NO_SAMPLES
    elif min(sum(r.size for r in sb), sum(r.size for r in sn)) < MIN_SAMPLES_FOR_INTERVAL:
        s = Speedup(location(sb) / location(sn))
        c.verdict = TOO_FEW
    else:
        s = speedup(sb, sn, resamples, seed)
        c.verdict = verdict(s, threshold)
    c.speedup = s.estimate
    c.ci95 = None if s.low is None else (s.low, s.high)
    c.between_runs = s.between_runs
    c.accuracy_change = _accuracy_change(c)
    if c.verdict == SLOWER:
        c.regression = f"{(1 / s.estimate - 1) * 100:.1f} % slower (speedup {s.estimate:.3f}, 95 % CI {s.low:.3f}–{s.high:.3f})"
    elif rb.verdict == "VALID" and rn.verdict not in (None, "VALID"):
        c.regression = f"verdict VALID → {rn.verdict}" + (f" ({rn.reason})" if rn.reason else "")
    return c, s


def compare(base: Side, new: Side, threshold: float = DEFAULT_THRESHOLD, resamples: int = DEFAULT_RESAMPLES,
            seed: int = 0) -> Comparison:
    """Match BASE's and NEW's cells and compare each (see the module docstring). The machine
    leaves the cell's identity when the comparison is between machines: a `machine:` side, or
    each side measured on one machine. Otherwise cells match machine by machine."""
    if resamples < 100:
        raise ValueError(f"resamples {resamples} < 100")
    across = "machine" in (base.selector.kind, new.selector.kind) or (len(base.hosts) == 1 and len(new.hosts) == 1)
    b, n = invocations_per_cell(base.records, not across), invocations_per_cell(new.records, not across)
    cells, speedups = [], []
    for i, key in enumerate(k for k in b if k in n):
        cell, s = compare_cell(base, new, b[key], n[key], threshold, resamples, (seed, i))
        cells.append(cell)
        if s is not None:
            speedups.append(s)
    g = geomean(speedups)
    return Comparison(
        base=base.selector.text, new=new.selector.text, threshold=threshold, resamples=resamples, seed=seed,
        across_machines=across, cells=cells,
        only_base=[_describe(r[-1]) for k, r in b.items() if k not in n],
        only_new=[_describe(r[-1]) for k, r in n.items() if k not in b],
        geomean=g, geomean_cells=len(speedups),
        geomean_without_samples=sum(1 for s in speedups if s.replicates is None))
