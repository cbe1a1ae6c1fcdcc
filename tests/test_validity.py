"""Validity as named rules and the machine-quiet check, with injected figures: deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from chipbench.accuracy import Tolerance
from chipbench.quiet import LoadSample, default_quiet_cores, machine_load_dict, quiet_rule, sample_load
from chipbench.record import RunRecord, validate
from chipbench.recording import measured_fields
from chipbench.validity import (
    FIDELITY, LOADGEN, MIN_COUNT_DURATION, QUIET, TAIL, TASK, TIMED_ACCURACY, Rule, judge, measurement_rule,
    verdict_of,
)

GATE = Tolerance(max_abs=1e-3, rel_l2=1e-3, min_cosine=0.999)


def load(others: float, steal: float = 0.0) -> LoadSample:
    return LoadSample(others_cores=others, steal_cores=steal, others_share=others / 2, cores=2, load1=0.5,
                      window_s=0.2)


def fields(outputs=None, rules=(), scenario=None, task=None, n=50):
    ref = {"y": np.linspace(0, 1, 16, dtype=np.float32)}
    samples = list(np.full(n, 1e-3))
    return measured_fields(samples, 1, outputs if outputs is not None else ref, ref, GATE, vars(GATE),
                           rules=rules, scenario=scenario, task=task)


def by_rule(validity):
    return {v["rule"]: v for v in validity}


def test_all_rules_passing_is_valid_and_each_rule_is_named():
    f = fields(rules=[measurement_rule(None), quiet_rule(load(0.01), load(0.02), 0.25)])
    assert f["verdict"] == "VALID" and f["reason"] is None
    assert [v["rule"] for v in f["validity"]] == [FIDELITY, MIN_COUNT_DURATION, QUIET]
    assert all(v["passed"] for v in f["validity"])


def test_a_busy_machine_makes_the_cell_noisy_with_its_figures():
    f = fields(rules=[measurement_rule(None), quiet_rule(load(0.01), load(0.9, steal=0.3), 0.25)])
    assert f["verdict"] == "NOISY"
    assert f["reason"] == ("machine busy: other work used end 0.90 cores (0.30 stolen by the hypervisor) "
                           "(> quiet_cores=0.25); measure again on a quiet machine")
    assert by_rule(f["validity"])[QUIET]["passed"] is False


def test_a_failed_measurement_rule_is_invalid_even_on_a_busy_machine():
    note = "stopped at max_duration_s=1 with 5 < min_count=100 queries"
    f = fields(rules=[measurement_rule(note), quiet_rule(load(1.5), load(1.5), 0.25)])
    assert f["verdict"] == "INVALID"
    assert f["reason"].startswith(note + "; machine busy: other work used start 1.50 cores and end 1.50 cores")


def test_a_wrong_output_fails_the_fidelity_rule_and_a_task_miss_the_task_rule():
    wrong = {"y": np.linspace(0, 1, 16, dtype=np.float32)[::-1].copy()}
    task = {"metric": "accuracy", "value": 0.5, "reference": 0.9, "samples": 10, "failures": ["accuracy 0.5 < 0.89"]}
    f = fields(outputs=wrong, task=task)
    rules = by_rule(f["validity"])
    assert f["verdict"] == "INVALID"
    assert not rules[FIDELITY]["passed"] and "rel_l2" in rules[FIDELITY]["reason"]
    assert rules[TASK] == {"rule": TASK, "passed": False, "reason": "accuracy 0.5 < 0.89"}
    assert f["reason"] == rules[FIDELITY]["reason"] + "; accuracy 0.5 < 0.89"  # as before: fidelity, then task


def test_machine_quiet_off_records_nothing_judged():
    assert quiet_rule(None, None, None) == Rule(QUIET, True, "machine load not judged (quiet_cores off)")
    assert quiet_rule(None, load(3.0), 0.25).passed  # a figure that could not be measured is not guessed
    assert quiet_rule(load(0.25), load(0.25), 0.25).passed  # the threshold itself is quiet enough
    d = machine_load_dict(load(0.1), load(0.2), 0.25)
    assert d["start"]["others_cores"] == 0.1 and d["end"]["others_cores"] == 0.2 and d["max_others_cores"] == 0.25


def test_only_soft_rules_make_noisy():
    assert verdict_of([Rule(QUIET, False, "busy")]) == ("NOISY", "busy")
    assert verdict_of([Rule(QUIET, False, "busy"), Rule(TAIL, False, "p90 not estimable")]) == \
        ("INVALID", "p90 not estimable; busy")
    assert verdict_of([Rule(FIDELITY, True), Rule(QUIET, True)]) == ("VALID", None)


PROVENANCE = {"libraries": {}, "git_commit": None, "seed": 0, "config": {},
              "machine": {"cpu_model": "test", "cores": 2, "isa": [], "memory_gib": 1.0, "os": "Linux"}}


def record(n=100, **parts) -> RunRecord:
    f = fields(n=n)  # 100: enough for single-stream's p90 (64)
    return RunRecord(workload={"name": "w", "scenario": "", "params": {}}, backend={"name": "b", "versions": {}},
                     precision="fp32", batch=1, scenario=parts.pop("scenario", {"name": "single-stream", "settings": {}}),
                     status="ok", reason=None, latency=f["latency"], throughput=f["throughput"], accuracy=f["accuracy"],
                     verdict=f["verdict"], validity=f["validity"], provenance=PROVENANCE, **parts)


def test_the_scenarios_tail_must_be_supported_by_the_sample_count():
    rec = record(n=20)
    judge(rec)
    assert rec.verdict == "INVALID"
    assert by_rule(rec.validity)[TAIL]["reason"] == "p90 of single-stream: not estimable (n = 20 < 64)"
    rec = record(n=100)
    judge(rec)
    assert rec.verdict == "VALID" and by_rule(rec.validity)[TAIL]["passed"]  # p99 is not what single-stream rests on
    rec = record(n=20, scenario={"name": "offline", "settings": {}})
    judge(rec)
    assert rec.verdict == "VALID" and TAIL not in by_rule(rec.validity)  # offline reports throughput


def test_loadgen_verdict_and_timed_run_accuracy_are_rules():
    loadgen = {"issuer": "loadgen", "result": "INVALID", "reasons": ["min duration not met", "early stopping: too few queries"],
               "accuracy_log": {"sampled": 10, "checked": 10, "failures": ["sample 3: rel_l2 0.4 > 0.001"]}}
    rec = record(scenario={"name": "server", "settings": {}, "loadgen": loadgen})
    judge(rec)
    rules = by_rule(rec.validity)
    assert rec.verdict == "INVALID"
    assert rules[LOADGEN]["reason"] == "LoadGen: min duration not met; early stopping: too few queries"
    assert rules[TIMED_ACCURACY]["reason"] == ("timed-run responses off the reference (1 of 10 checked): "
                                               "sample 3: rel_l2 0.4 > 0.001")
    validate(rec.to_dict())


def test_judging_again_keeps_the_harness_rules_and_rederives_the_rest():
    rec = record()
    judge(rec, [quiet_rule(load(2.0), load(0.0), 0.25)])
    assert rec.verdict == "NOISY"
    rec.scenario = {**rec.scenario, "loadgen": {"issuer": "loadgen", "result": "VALID", "reasons": []}}
    judge(rec)  # a later part adds LoadGen's result: the quiet rule stays, LoadGen's joins
    assert rec.verdict == "NOISY" and set(by_rule(rec.validity)) == {FIDELITY, QUIET, LOADGEN, TAIL}
    validate(rec.to_dict())


def test_quiet_threshold_from_the_environment(monkeypatch):
    monkeypatch.delenv("CHIPBENCH_QUIET_CORES", raising=False)
    assert default_quiet_cores() == 0.25
    monkeypatch.setenv("CHIPBENCH_QUIET_CORES", "0.5")
    assert default_quiet_cores() == 0.5
    monkeypatch.setenv("CHIPBENCH_QUIET_CORES", "off")
    assert default_quiet_cores() is None
    monkeypatch.setenv("CHIPBENCH_QUIET_CORES", "lots")
    with pytest.raises(ValueError, match="CHIPBENCH_QUIET_CORES='lots'"):
        default_quiet_cores()


def test_sampling_the_machine_gives_figures_within_its_cores():
    slept = []
    s = sample_load(0.0, sleep=slept.append)  # no waiting: the counters are read twice
    assert slept == [0.0] and 0.0 <= s.others_cores <= s.cores and 0.0 <= s.others_share <= 1.0
