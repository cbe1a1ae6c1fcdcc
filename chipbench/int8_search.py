"""Which int8 configuration a deployer would run: the fastest that passes the accuracy gate.

For one model on one machine, every configuration of `chipbench.int8_configs.CANDIDATES` is
quantized, checked for fidelity against the FP32 reference with the workload's int8 gate, and
timed on ONNX Runtime's CPU execution provider beside the fp32 model in the same process
(`quick_p50`: round-robin rounds, so drift of a shared machine spreads over all candidates
alike). `select` (a pure function) picks the fastest configuration that passes; when it is
slower than fp32, `loss_reason` says which operator families got slower (from ORT's per-op
profiles of both, chipbench.int8_loss). The search runs once and is cached under the cache dir by its exact key:
the model's hash, the candidate set, the calibration data, the gate, the inputs, the thread
count, the machine (CPU model, ISA flags, cores) and ONNX Runtime's version.

The quick timing only ranks candidates; the cell then measures the chosen model with the
harness's normal (LoadGen) path. Other backends read QDQ models: `Choice.qdq` names the best
passing QDQ configuration, which is the chosen one unless a QOperator configuration won.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chipbench.errors import one_line
from chipbench.int8_configs import CANDIDATES, OLD_RECIPE, Int8Config
from chipbench.int8_gate import AccuracyGate
from chipbench.paths import atomic_write_text, cache_dir, sha256_file
from chipbench.quiet import default_quiet_cores, try_sample

Arrays = dict[str, np.ndarray]
SEARCH_VERSION = 3  # bump when the search's method changes (part of the cache key)
TIMED_ON = "ort-cpu"  # the backend whose timing the search's p50s are (ONNX Runtime's CPU EP)


@dataclass(frozen=True)
class Measured:
    """One configuration as the search found it: its quick p50 (ms, one query at the cell's
    batch, ORT CPU EP), its fidelity to the FP32 reference, whether it passed the gate (False
    with `error` when it could not be made or run), and whether it is QDQ."""

    name: str
    p50_ms: float | None
    passed: bool
    qdq: bool = True
    rel_l2: float | None = None
    cosine: float | None = None
    error: str | None = None
    gate_failure: str | None = None  # the first accuracy gate it missed
    task_checked: bool = True  # False: fidelity only (a faster configuration already passed both gates)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Choice:
    """What `select` decided. `chosen`: the configuration that runs on ONNX Runtime (None only
    when there were no candidates); `qdq`: the best QDQ configuration, for the backends that
    read QDQ models; `passed`: whether `chosen` passes the gate (False: none did, and `chosen`
    is the most faithful one); `beats_fp32`: its p50 is below fp32's; `why`: one line."""

    chosen: str | None
    qdq: str | None
    passed: bool
    beats_fp32: bool
    why: str


def select(fp32_ms: float | None, measured: Sequence[Measured]) -> Choice:
    """The fastest passing configuration by quick p50 (ties: the earlier candidate); when none
    passes, the most faithful one (lowest relative L2; among equally faithful ones the fastest)
    so its cell shows what int8 costs. Pure: depends on its arguments only."""
    ran = [m for m in measured if m.p50_ms is not None]
    passing = sorted((m for m in ran if m.passed), key=lambda m: m.p50_ms)  # stable: candidate order on ties
    faithful = sorted((m for m in ran if m.rel_l2 is not None), key=lambda m: (m.rel_l2, m.p50_ms))
    if passing:
        best = passing[0]
        qdq = next((m.name for m in passing if m.qdq), None) or next((m.name for m in faithful if m.qdq), None)
        beats = fp32_ms is not None and best.p50_ms < fp32_ms
        slower = [m.name for m in passing[1:]]
        why = (f"{best.name} is the fastest of {len(passing)} configuration(s) passing the accuracy gate "
               f"({best.p50_ms:.3g} ms p50"
               + (f" vs fp32 {fp32_ms:.3g} ms" if fp32_ms is not None else "") + ")"
               + (f"; slower: {', '.join(slower)}" if slower else "")
               + (" (the task metric is checked fastest first: slower ones passed on fidelity)"
                  if any(not m.task_checked for m in passing) else "")
               + _listed("failing the gate", [m.name for m in measured if not m.passed and m.error is None])
               + _listed("not run", [m.name for m in measured if m.error is not None]))
        old = next((m for m in ran if m.name == OLD_RECIPE.name), None)
        if old is not None and old.name != best.name:
            why += f"; the previous fixed recipe {old.name}: {old.p50_ms:.3g} ms"
        return Choice(best.name, qdq, True, beats, why)
    if not faithful:
        return Choice(None, None, False, False, "no int8 configuration could be made or run")
    best = faithful[0]
    qdq = next((m.name for m in faithful if m.qdq), None)
    return Choice(best.name, qdq, False, fp32_ms is not None and best.p50_ms < fp32_ms,
                  f"no configuration passes the accuracy gate; {best.name} is the most faithful "
                  f"(rel L2 {best.rel_l2:.3g})")


def _listed(label: str, names: list[str]) -> str:
    return f"; {label}: {', '.join(names)}" if names else ""


def quick_p50(runs: dict[str, Callable[[], Any]], budget_s: float = 0.4, rounds: int = 25,
              warmup: int = 3) -> dict[str, float]:
    """Median seconds of one call of each of `runs`, timed by the host clock over `rounds`
    round-robin rounds in which each callable runs for a slice of `budget_s / rounds` seconds
    (at least one call), so every callable meets the same machine conditions and the whole
    takes about `budget_s` × len(runs) seconds whatever the tails. 25 rounds: a shared host's
    clock changes within a second or two (chipbench.speed), and slices of a few milliseconds
    spread each change over every candidate alike. Ranks candidates only: the cell's own
    measurement is LoadGen's."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    slice_s = budget_s / rounds
    for _ in range(rounds):
        for name, run in runs.items():
            until = time.perf_counter() + slice_s
            while True:
                start = time.perf_counter()
                run()
                end = time.perf_counter()
                samples[name].append(end - start)
                if end >= until:
                    break
    return {name: statistics.median(s) for name, s in samples.items()}


@dataclass
class SearchResult:
    """The search's outcome for one model on one machine (what a record's `quantization` holds).
    Times in ms; `search_s`: seconds the search took when it ran (not on a cache hit)."""

    chosen: str | None
    qdq: str | None
    passed: bool
    beats_fp32: bool
    why: str
    fp32_p50_ms: float | None
    alternatives: list[Measured]
    configs: dict[str, dict[str, Any]]
    loss_reason: str | None = None
    search_s: float = 0.0
    method: str = ("quick p50 on ONNX Runtime CPU EP, round-robin with fp32 in one process; "
                   "accuracy: the cell's int8 gates (fidelity to the FP32 reference on its inputs for "
                   "all; the task metric, where the workload has one, fastest first until one "
                   "configuration and one QDQ configuration pass both)")
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["alternatives"] = [m.to_dict() for m in self.alternatives]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchResult:
        d = dict(d)
        d["alternatives"] = [Measured(**m) for m in d["alternatives"]]
        return cls(**d)

    def record(self, runs_on: str, backend_reads: str) -> dict[str, Any]:
        """The record's `quantization` field for a cell that ran `runs_on` ("chosen": the
        configuration chosen for ONNX Runtime; "qdq": the best QDQ one) of this search on
        `backend_reads`: which configuration executed and its arguments, whether it passed the
        gate and beat fp32 in the search's timing, why it was chosen, the reason int8 loses when
        it does, and every measured alternative."""
        name = self.chosen if runs_on == "chosen" else self.qdq
        why = self.why
        if runs_on == "qdq" and self.qdq != self.chosen:
            why += f"; {backend_reads} reads QDQ models, so it runs {self.qdq}, the best QDQ one"
        mine = next((m for m in self.alternatives if m.name == name), None)
        passed = bool(mine and mine.passed)
        beats = bool(mine and mine.p50_ms is not None and self.fp32_p50_ms is not None
                     and mine.p50_ms < self.fp32_p50_ms)
        return {"executed": name, "config": self.configs.get(name or "", {}), "chosen_for_ort": self.chosen,
                "passed_gate": passed, "beats_fp32": beats, "why": why,
                "loss_reason": None if beats else self.loss_reason, "fp32_p50_ms": self.fp32_p50_ms,
                "alternatives": [m.to_dict() for m in self.alternatives], "search_s": round(self.search_s, 3),
                "cached": self.cached, "method": self.method, "timed_on": TIMED_ON}


def _machine_key() -> dict[str, Any]:
    from chipbench.machine import machine_info

    m = machine_info()
    return {k: m.get(k) for k in ("cpu_model", "cores", "isa", "arch")}


def search_key(onnx_path: Path, calibration_key: dict, gate: AccuracyGate, threads: int,
               candidates: Sequence[Int8Config]) -> dict[str, Any]:
    """The exact key of one search: change any part and the search runs again."""
    import onnxruntime

    return {"version": SEARCH_VERSION, "model": sha256_file(onnx_path), "calibration": calibration_key,
            "gate": gate.key(), "threads": threads,
            "candidates": [c.key() for c in candidates], "machine": _machine_key(),
            "onnxruntime": onnxruntime.__version__}


def search(onnx_path: Path, calibration: Callable[[], list[Arrays]], calibration_key: dict, gate: AccuracyGate,
           threads: int,
           candidates: Sequence[Int8Config] = CANDIDATES, budget_s: float = 0.3) -> SearchResult:
    """The search for `onnx_path` (cached by `search_key`; a hit returns the stored result with
    `cached` True). Every candidate's model is made (cached too) and a candidate that cannot be
    made or run is recorded with its error and never chosen."""
    key = search_key(onnx_path, calibration_key, gate, threads, candidates)
    text = json.dumps(key, sort_keys=True, default=str)
    folder = cache_dir("int8-search", hashlib.sha256(text.encode()).hexdigest()[:24])
    result_file, key_file = folder / "result.json", folder / "key.json"
    if result_file.exists() and key_file.exists() and key_file.read_text() == text:
        result = SearchResult.from_dict(json.loads(result_file.read_text()))
        result.cached = True
        return result
    start = time.perf_counter()
    result = _run_search(onnx_path, calibration, calibration_key, gate, threads, candidates, budget_s)
    result.search_s = time.perf_counter() - start
    busy = busy_cores(result.extra.get("machine_load"))
    if busy:  # a ranking timed beside other work is used once, not kept
        result.why += (f"; timed while other work kept {busy:.2f} cores busy (above {default_quiet_cores():g}): "
                       "not cached, the next int8 cell searches again")
        return result
    atomic_write_text(result_file, json.dumps(result.to_dict(), sort_keys=True, default=str))
    atomic_write_text(key_file, text)
    return result


def busy_cores(load: dict[str, Any] | None) -> float | None:
    """The most cores other work kept busy around the search's timing (`load`: {"before",
    "after"} LoadSample dicts), when above the machine-quiet threshold (chipbench.quiet's
    default, CHIPBENCH_QUIET_CORES); None when quiet, unmeasured or judging is off."""
    limit = default_quiet_cores()
    samples = [s for s in (load or {}).values() if s]
    if limit is None or not samples:
        return None
    worst = max(s["others_cores"] for s in samples)
    return worst if worst > limit else None


def _session(path: Path, threads: int):
    import onnxruntime as ort

    from chipbench.backends.ort_runtime import session_options

    opts = session_options(threads)
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run_search(onnx_path: Path, calibration, calibration_key: dict, gate: AccuracyGate, threads: int,
                candidates: Sequence[Int8Config], budget_s: float) -> SearchResult:
    import onnx

    from chipbench.int8_configs import not_applicable
    from chipbench.quantize import int8_model

    runs: dict[str, Callable[[], Any]] = {}
    model_runs: dict[str, Callable[[Arrays], Arrays]] = {}
    paths: dict[str, Path] = {}
    accuracy: dict[str, tuple[list[str], float | None, float | None]] = {}
    errors: dict[str, str] = {}
    inputs = gate.inputs
    fp32 = _session(onnx_path, threads)
    runs["fp32"] = lambda s=fp32: s.run(None, inputs)
    graph = onnx.load(str(onnx_path), load_external_data=False)
    for config in candidates:
        skip = not_applicable(config, graph)
        if skip:
            errors[config.name] = skip
            continue
        try:
            path = int8_model(onnx_path, calibration, calibration_key, config)
            session = _session(path, threads)
            names = [o.name for o in session.get_outputs()]
            model_run = (lambda x, s=session, n=names: dict(zip(n, s.run(n, x))))
            failures, fid = gate.check_fidelity(model_run)
        except Exception as exc:  # one configuration ORT cannot make or run: recorded, never chosen
            errors[config.name] = one_line(exc, 200)
            continue
        paths[config.name] = path
        accuracy[config.name] = (failures, fid.rel_l2, fid.cosine)
        model_runs[config.name] = model_run
        runs[config.name] = lambda s=session: s.run(None, inputs)
    before = try_sample()
    p50 = quick_p50(runs, budget_s=budget_s)
    after = try_sample()
    load = {"before": before.to_dict() if before else None, "after": after.to_dict() if after else None}
    # The task metric (hundreds of queries each) only where it can change the choice: fastest
    # first, until a configuration and a QDQ configuration have passed both gates.
    task_checked: set[str] = set()
    need_any = need_qdq = True
    by_speed = sorted((c for c in candidates if c.name in accuracy and not accuracy[c.name][0]),
                      key=lambda c: p50[c.name])
    for config in by_speed:
        if not (need_any or (need_qdq and config.qdq)):
            continue
        task_checked.add(config.name)
        failures = gate.check_task(model_runs[config.name])
        accuracy[config.name] = (failures, *accuracy[config.name][1:])
        if not failures:
            need_any = False
            need_qdq = need_qdq and not config.qdq
    measured = []
    for config in candidates:
        if config.name in errors:
            measured.append(Measured(config.name, None, False, config.qdq, error=errors[config.name]))
            continue
        failures, rel_l2, cosine = accuracy[config.name]
        measured.append(Measured(config.name, p50[config.name] * 1e3, not failures, config.qdq,
                                 _finite(rel_l2), _finite(cosine), gate_failure=failures[0] if failures else None,
                                 task_checked=gate.task is None or config.name in task_checked))
    fp32_ms = p50["fp32"] * 1e3
    choice = select(fp32_ms, measured)
    loss = None
    if choice.chosen is not None and not choice.beats_fp32:
        try:
            from chipbench.int8_loss import loss_reason

            loss = loss_reason(onnx_path, paths[choice.chosen], inputs, threads)
        except Exception as exc:  # the profile is an explanation, not the result
            loss = f"per-op profile unavailable: {one_line(exc, 150)}"
    return SearchResult(choice.chosen, choice.qdq, choice.passed, choice.beats_fp32, choice.why, fp32_ms,
                        measured, {c.name: c.to_dict() for c in candidates}, loss, extra={"machine_load": load})


def _finite(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def int8_for(onnx_path: Path, spec, backend: str, qdq_only: bool) -> tuple[Path, dict[str, Any]]:
    """The int8 model a backend compiles for a cell, and the record's `quantization` field.

    With the cell's accuracy gate in `spec.accuracy_gate` (an AccuracyGate), the configuration
    the search chose (`qdq_only`: the best QDQ one, for backends that read QDQ models only);
    without one (a caller outside a cell), the default configuration, `OLD_RECIPE`, and the
    field says there was no search. Unsupported (chipbench.backends.base) when the cell has no
    calibration data or no configuration could be made at all."""
    from chipbench.backends.base import Unsupported, calibration_of
    from chipbench.machine import usable_cores
    from chipbench.quantize import int8_model

    batches, key = calibration_of(spec)
    gate = getattr(spec, "accuracy_gate", None)
    if gate is None:
        return int8_model(onnx_path, batches, dict(key)), {
            "executed": OLD_RECIPE.name, "config": OLD_RECIPE.to_dict(),
            "why": "no accuracy gate to search with: the default configuration"}
    result = search(onnx_path, batches, dict(key), gate, spec.threads or usable_cores())
    name = result.qdq if qdq_only else result.chosen
    if name is None:
        raise Unsupported(f"int8: {result.why}")
    config = next(c for c in CANDIDATES if c.name == name)
    return (int8_model(onnx_path, batches, dict(key), config),
            result.record("qdq" if qdq_only else "chosen", backend))
