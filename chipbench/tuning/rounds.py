"""Rounds in worker subprocesses: run one, blame and skip a task that crashes its worker, and
keep meta.json and curve.json up to date."""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chipbench.tuning.database import CURVE_FILE, META_FILE, TuningError, now, record_count, write_json


class RoundRunner:
    """Runs worker subprocesses for rounds, blames and skips crashing tasks, keeps meta/curve."""

    def __init__(self, folder: Path, job_base: dict, meta: dict, curve: list[dict], nice: int,
                 round_timeout_s: float | None, log: Callable[[str], None]):
        self.folder, self.job_base, self.meta, self.curve = folder, job_base, meta, curve
        self.nice, self.round_timeout_s, self.log = nice, round_timeout_s, log
        self.notes: list[str] = []
        self.last_coverage: dict | None = None

    # one worker ------------------------------------------------------------------------
    def _run_worker(self, job: dict, label: str) -> tuple[dict, str | None, float]:
        """Run one worker; returns (its output, failure reason or None, wall seconds)."""
        work = self.folder / "work"
        job_file, out_file, log_file = work / f"{label}.job.json", work / f"{label}.out.json", work / f"{label}.log"
        job_file.write_text(json.dumps(job))
        out_file.unlink(missing_ok=True)
        timeout = self.round_timeout_s or 600.0 + 10.0 * max(job.get("trials", 0), 0)
        start = time.perf_counter()
        with open(log_file, "w") as lf:
            # TVM's x86 runtime otherwise starts half as many threads as there are CPUs (one on
            # a 2-vCPU VM), and candidates would be timed with fewer threads than the target's
            # num-cores, which is what the tuned build will run with (see backends.tvm).
            env = {**os.environ, "TVM_NUM_THREADS": str(job["threads"])}
            proc = subprocess.Popen([sys.executable, "-m", "chipbench.tuning", "worker", str(job_file), str(out_file)],
                                    stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, preexec_fn=_nicer(self.nice))
            try:
                proc.wait(timeout=timeout)
                reason = None if proc.returncode == 0 else _exit_reason(proc.returncode, log_file)
            except subprocess.TimeoutExpired:
                _killpg(proc)
                reason = f"timed out after {timeout:g} s (killed)"
            except BaseException:  # interrupted (Ctrl-C, SIGTERM): stop the worker, keep what it did
                _killpg(proc)
                self._account({}, time.perf_counter() - start)
                self._save()
                raise
        wall = time.perf_counter() - start
        try:
            out = json.loads(out_file.read_text())
        except (OSError, ValueError):
            out = {}
        if reason is None and out.get("stage") != "done":
            reason = "worker ended without finishing"
        if reason is not None:
            out["blamed_task"] = _blame(log_file)
        return out, reason, wall

    def _job(self, trials: int, seed: int, **extra: Any) -> dict:
        return {**self.job_base, "trials": trials, "seed": seed,
                "exclude": sorted(self.meta["failed_tasks"]), **extra}

    def _account(self, out: dict, wall: float, measure_s: float | None = None) -> float:
        """Tuning seconds of a worker: its wall time less the time it spent measuring latency."""
        spent = max(0.0, wall - float(measure_s if measure_s is not None else out.get("measure_s", 0.0)))
        self.meta["tuning_s"] = self.meta.get("tuning_s", 0.0) + spent
        self.meta["wall_s"] = self.meta.get("wall_s", 0.0) + wall
        return spent

    def _save(self) -> None:
        self.meta["trials"] = record_count(self.folder)
        self.meta["updated"] = now()
        write_json(self.folder / META_FILE, self.meta)
        write_json(self.folder / CURVE_FILE, self.curve)

    def _fail_task(self, task: str, reason: str, round_no: int) -> None:
        self.meta["failed_tasks"][task] = {"reason": reason, "round": round_no, "at": now()}
        self.log(f"  task {task} failed ({reason}); recorded, the rest goes on")

    def _point(self, out: dict, round_no: int) -> None:
        if out.get("latency_ms") is None:
            return
        point = {"round": round_no, "trials": record_count(self.folder), "tuning_s": round(self.meta["tuning_s"], 3),
                 "latency_ms": out["latency_ms"], "latency_min_ms": out.get("latency_min_ms"),
                 "tvm_num_threads": out.get("tvm_num_threads"),
                 "coverage": out.get("coverage"),
                 "rel_l2_vs_ort": out.get("rel_l2_vs_ort"), "at": now()}
        self.curve.append(point)
        self.last_coverage = out.get("coverage")
        cov = out.get("coverage") or {}
        self.log(f"  round {round_no}: {point['trials']} trials, {point['tuning_s']:.0f} s tuning → "
                 f"{point['latency_ms']:.4g} ms (tasks with a record {cov.get('tasks_with_record', 0)}/"
                 f"{cov.get('tasks_found', 0)}, applied {cov.get('tasks_applied', 0)})")

    def _systemic_failure(self, tasks: list[str], reason: str, round_info: dict) -> None:
        """Every task died the same way: the tuner is broken (a cost model, a missing package),
        not the tasks. Forget the blame, so that a rerun retries them, and stop."""
        for t in tasks:
            self.meta["failed_tasks"].pop(t, None)
        self.meta["rounds"].append({**round_info, "ended": now(), "error": reason})
        self._save()
        raise TuningError(f"every task failed the same way, so the tuner is at fault: {reason} "
                          f"(logs: {self.folder / 'work'})")

    def _baseline(self, out: dict) -> None:
        """Round 0: untuned latency and ONNX Runtime's, measured by the first worker."""
        self.meta.update(untuned_ms=out["untuned_ms"], ort_ms=out.get("ort_ms"))
        self.curve.insert(0, {"round": 0, "trials": 0, "tuning_s": 0.0, "latency_ms": out["untuned_ms"],
                              "latency_min_ms": out.get("untuned_min_ms"), "ort_ms": out.get("ort_ms"),
                              "tvm_num_threads": out.get("tvm_num_threads"),
                              "untuned": True, "at": now()})
        self.log(f"  untuned {out['untuned_ms']:.4g} ms"
                 + (f", ONNX Runtime {out['ort_ms']:.4g} ms" if out.get("ort_ms") else "")
                 + f"; {len(out.get('tasks', []))} task(s)")
        self._save()

    def round(self, trials: int, seed: int) -> int:
        """Tune `trials` more (the first worker also measures the untuned baseline); returns how
        many records it added. A crashing task is blamed, recorded and skipped, and the round
        goes on with the rest."""
        round_no = len(self.meta["rounds"]) + 1
        before = record_count(self.folder)
        started, spent_total, attempt, events = now(), 0.0, 0, []
        while True:
            left = trials - (record_count(self.folder) - before)
            tasks = [t["name"] for t in self.meta.get("tasks", [])]
            active = [t for t in tasks if t not in self.meta["failed_tasks"]]
            baseline = "untuned_ms" not in self.meta
            if not baseline and (left <= 0 or (tasks and not active)):
                break
            attempt += 1
            self.log(f"round {round_no}" + (f" (attempt {attempt})" if attempt > 1 else "")
                     + f": {max(left, 0)} trials" + (", after measuring untuned latency" if baseline else ""))
            out, reason, wall = self._run_worker(self._job(max(left, 0), seed + attempt, baseline=baseline),
                                                 f"round-{round_no}.{attempt}")
            spent_total += self._account(out, wall)
            if out.get("tasks"):
                self.meta["tasks"] = out["tasks"]
            if out.get("seeded", {}).get("seeded") and "seeded_from" in self.meta:  # records measured here
                self.meta["seeded_from"]["records_seeded"] = (self.meta["seeded_from"].get("records_seeded", 0)
                                                              + out["seeded"]["seeded"])
            if baseline and out.get("untuned_ms") is not None:
                self._baseline(out)
            if reason is None:
                self._point(out, round_no)
                break
            tasks = [t["name"] for t in self.meta.get("tasks", [])]
            active = [t for t in tasks if t not in self.meta["failed_tasks"]]
            stage = out.get("stage")
            blamed = out.get("blamed_task") if stage == "tune" else None
            events.append({"attempt": attempt, "reason": reason, "stage": stage, "blamed": blamed})
            if stage != "tune":
                msg = f"round {round_no}: worker failed at stage '{stage}': {reason} (log: {self.folder}/work)"
                if baseline and "untuned_ms" not in self.meta:
                    self._save()
                    raise TuningError(msg)
                self.notes.append(msg)
                break
            if blamed and blamed in active:
                self._fail_task(blamed, reason, round_no)
                if _systemic(self.meta["failed_tasks"], tasks, reason):
                    self._systemic_failure(tasks, reason, {"round": round_no, "started": started, "attempts": attempt,
                                                           "trials": record_count(self.folder) - before,
                                                           "tuning_s": round(spent_total, 3), "events": events})
                continue
            # Nobody to blame from the log: each task alone, in its own worker.
            self.log(f"  worker failed ({reason}) and no task could be blamed; isolating each task")
            share = max(1, math.ceil(left / max(len(active), 1)))
            for i, task in enumerate(active):
                o, r, w = self._run_worker(self._job(share, seed + 100 + i, only=[task], measure=False),
                                           f"round-{round_no}.{attempt}.{i}")
                spent_total += self._account(o, w)
                if r is not None:
                    self._fail_task(task, r, round_no)
            last = self.meta["failed_tasks"].get(active[-1], {}).get("reason", "") if active else ""
            if active and _systemic(self.meta["failed_tasks"], active, last):
                self._systemic_failure(active, last, {"round": round_no, "started": started, "attempts": attempt,
                                                      "trials": record_count(self.folder) - before,
                                                      "tuning_s": round(spent_total, 3), "events": events})
            out, reason, wall = self._run_worker(self._job(0, seed), f"round-{round_no}.measure")
            self._account(out, wall, measure_s=wall)
            if reason is None:
                self._point(out, round_no)
            else:
                self.notes.append(f"round {round_no}: measuring latency failed: {reason}")
            break
        added = record_count(self.folder) - before
        self.meta["rounds"].append({"round": round_no, "started": started, "ended": now(), "trials": added,
                                    "tuning_s": round(spent_total, 3), "attempts": attempt, "events": events,
                                    "cost_model": self.job_base["cost_model"], "strategy": self.job_base["strategy"]})
        self._save()
        return added


def _systemic(failed: dict[str, dict], tasks: list[str], reason: str) -> bool:
    return len(tasks) > 1 and all(t in failed and failed[t]["reason"] == reason for t in tasks)


def _blame(log_file: Path) -> str | None:
    """The task the MetaSchedule task scheduler was last working on, from the worker's log."""
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return None
    hits = re.findall(r'(?:Initializing Task|TaskScheduler picks Task) #\d+: "?([^"\s]+)"?', text)
    return hits[-1] if hits else None


def _exit_reason(code: int, log_file: Path) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"worker killed by {signal.Signals(-code).name}"
        return f"worker killed by signal {-code}"
    try:
        lines = [ln.strip() for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    return f"worker exit code {code}: {lines[-1][:300] if lines else 'no output'}"


def _killpg(proc: subprocess.Popen) -> None:
    """The worker runs in its own session (its builders and runner with it): kill them all."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _nicer(n: int):
    if n <= 0:
        return None
    return lambda: os.nice(n)
