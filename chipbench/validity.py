"""Validity as named rules: each rule passes or fails with a reason, and the verdict combines them.

After LoadGen's `results.cc` (its VALID/INVALID with the reasons: minimum duration, minimum
queries, early stopping, latency bound). The verdict of a measured cell is

- INVALID when any correctness or measurement rule fails (accuracy gates, accuracy during the
  timed run, minimum count and duration, the tail estimate the scenario rests on, LoadGen's own
  verdict);
- NOISY when only the machine rules fail (machine-quiet: other processes were busy;
  machine-speed: the CPU ran slower than calibrated. The figures may be true of a busy machine
  and not of this backend: measure again on a quiet one);
- VALID otherwise.

Rules that derive from what a record already holds (`accuracy`, `latency.tails`,
`scenario["loadgen"]`) are recomputed by `judge`; rules only the harness can know (the timing
loop's stop, the machine's load) come in as `extra` and are kept in `record.validity`.
Pure Python: the bundle runner uses it on a machine with only numpy and a runtime.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chipbench.measures import Accuracy
    from chipbench.stats import LatencyStats

VERDICTS = ("VALID", "NOISY", "INVALID")

# rule names (stable: reports and comparisons read them)
FIDELITY = "accuracy-fidelity"
TASK = "accuracy-task"
TIMED_ACCURACY = "accuracy-timed-run"
MIN_COUNT_DURATION = "min-count-duration"
TAIL = "tail-estimate"
LOADGEN = "loadgen"
QUIET = "machine-quiet"
SPEED = "machine-speed"

# a failure of these makes a cell NOISY, not INVALID: they speak of the machine, not the backend
SOFT_RULES = frozenset({QUIET, SPEED})
# these are recomputed from the record's own fields each time it is judged
DERIVED_RULES = frozenset({FIDELITY, TASK, TIMED_ACCURACY, TAIL, LOADGEN})

# The percentile a scenario's latency result rests on, per the MLPerf Inference rules
# ("Scenarios" table: SingleStream 90th-percentile latency; MultiStream and Server 99th;
# Offline reports throughput only). A scenario not listed is held to the 99th.
METRIC_PERCENTILE: dict[str, str | None] = {
    "single-stream": "p90", "multi-stream": "p99", "server": "p99", "offline": None,
}


@dataclass(frozen=True)
class Rule:
    """One named validity rule: `passed`, and when it failed (or has something to say) a
    one-line `reason`. Serialised as {"rule", "passed", "reason"} (record.validity)."""

    name: str
    passed: bool
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.name, "passed": self.passed, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        return cls(str(data["rule"]), bool(data["passed"]), data.get("reason"))


def verdict_of(rules: Iterable[Rule]) -> tuple[str, str | None]:
    """(verdict, reason): INVALID when a rule outside SOFT_RULES fails, NOISY when only soft
    rules fail, else VALID; the reason joins the failed rules' reasons, hard ones first."""
    rules = list(rules)
    hard = [r for r in rules if not r.passed and r.name not in SOFT_RULES]
    soft = [r for r in rules if not r.passed and r.name in SOFT_RULES]
    reason = "; ".join(r.reason or f"rule {r.name} failed" for r in hard + soft) or None
    if hard:
        return "INVALID", reason
    if soft:
        return "NOISY", reason
    return "VALID", None


def measurement_rule(note: str | None) -> Rule:
    """Minimum count and duration met: fails with the timing loop's note when it stopped at
    max_duration_s before a minimum was met (chipbench.scenarios.stop)."""
    return Rule(MIN_COUNT_DURATION, note is None, note)


def accuracy_rules(accuracy: Accuracy | None) -> list[Rule]:
    """The accuracy gates of a record's `accuracy` part: fidelity to the FP32 reference (its
    failures are those of `failures` that are not the task metric's) and, where the workload
    has one, the task metric against the FP32 model's."""
    if not accuracy:
        return []
    task = accuracy.task or None
    task_failures = list((task or {}).get("failures") or [])
    fid_failures = [f for f in accuracy.failures if f not in task_failures]
    rules = [Rule(FIDELITY, not fid_failures, "; ".join(fid_failures) or None)]
    if task is not None:
        rules.append(Rule(TASK, not task_failures, "; ".join(task_failures) or None))
    return rules


def tail_rule(latency: LatencyStats | None, scenario: Mapping[str, Any] | None) -> Rule | None:
    """The scenario's result percentile (METRIC_PERCENTILE) supported by the sample count, from
    `latency.tails[pXX].estimable` (early-stopping bound, chipbench.tails); None (no rule)
    where the record has no tails, names no scenario (a bundle's run), or its scenario reports
    no latency percentile."""
    tails = latency.tails if latency else {}
    name = (scenario or {}).get("name")
    which = METRIC_PERCENTILE.get(name, "p99") if name else None
    if which is None or which not in tails:
        return None
    tail = tails[which]
    if tail.estimable:
        return Rule(TAIL, True)
    return Rule(TAIL, False, f"{which} of {name}: {tail.reason}")


def loadgen_rules(scenario: Mapping[str, Any] | None) -> list[Rule]:
    """LoadGen's own verdict (`scenario["loadgen"]["result"]` with its `reasons`) and the
    accuracy of the responses it sampled from the timed run (`["accuracy_log"]["failures"]`,
    MLPerf's TEST01 idea); none where the cell did not run under LoadGen."""
    loadgen = (scenario or {}).get("loadgen")
    if not loadgen:
        return []
    rules = []
    if "result" in loadgen:
        ok = loadgen["result"] == "VALID"
        reasons = [str(r) for r in loadgen.get("reasons") or []]
        rules.append(Rule(LOADGEN, ok, None if ok else "LoadGen: " + ("; ".join(reasons) or str(loadgen["result"]))))
    log = loadgen.get("accuracy_log")
    if log:
        failures = [str(f) for f in log.get("failures") or []]
        rules.append(Rule(TIMED_ACCURACY, not failures,
                          f"timed-run responses off the reference ({len(failures)} of {log.get('checked')} checked): "
                          + "; ".join(failures[:3]) if failures else None))
    return rules


def derived_rules(accuracy: Accuracy | None, latency: LatencyStats | None,
                  scenario: Mapping[str, Any] | None) -> list[Rule]:
    """Every rule that follows from a record's own fields (DERIVED_RULES), in report order."""
    tail = tail_rule(latency, scenario)
    return [*accuracy_rules(accuracy), *loadgen_rules(scenario), *([tail] if tail else [])]


def judged(accuracy: Accuracy | None, latency: LatencyStats | None,
           scenario: Mapping[str, Any] | None, extra: Sequence[Rule] = ()) -> dict[str, Any]:
    """{"validity": [rule dicts], "verdict", "reason"} for these record parts and the `extra`
    rules (the measurement's and the machine's), as RunRecord keyword arguments."""
    rules = derived_rules(accuracy, latency, scenario) + [r for r in extra if r.name not in DERIVED_RULES]
    verdict, reason = verdict_of(rules)
    return {"validity": [r.to_dict() for r in rules], "verdict": verdict, "reason": reason}


def judge(record: Any, extra: Sequence[Rule] = ()) -> None:
    """Set `record.validity`, `record.verdict` and `record.reason` of a measured RunRecord from
    its fields, the rules it already carries that are not derived from them, and `extra` (which
    replace kept rules of the same name). A record that was not measured (status other than
    "ok") or is a per-operator profile is left as it is."""
    if record.status != "ok" or record.latency is None:
        return
    by_name = {r["rule"]: Rule.from_dict(r) for r in record.validity or [] if r["rule"] not in DERIVED_RULES}
    by_name.update({r.name: r for r in extra})
    out = judged(record.accuracy, record.latency, record.scenario, list(by_name.values()))
    record.validity, record.verdict, record.reason = out["validity"], out["verdict"], out["reason"]
