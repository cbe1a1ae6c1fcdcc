"""The machine-speed rule: the reference loop against its calibration, pure and in a real cell."""

from __future__ import annotations

import json
import os
import sys

import pytest

from chipbench.scenarios import MeasureSettings
from chipbench.speed import MAX_SLOWDOWN, SpeedSample, per_cpu_seconds, sample_speed, speed_dict, speed_rule
from chipbench.suite import Cell
from chipbench.validity import SPEED, Rule, verdict_of

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU affinity is Linux's")


def sample(slowdown: float) -> SpeedSample:
    return SpeedSample({0: 1e-3 * slowdown, 1: 1e-3}, slowdown)


def test_rule_passes_within_the_limit_and_names_the_slow_moment_beyond_it():
    assert speed_rule(sample(1.0), sample(MAX_SLOWDOWN), True) == Rule(SPEED, True)
    rule = speed_rule(sample(1.0), sample(2.6), True)
    assert not rule.passed and "end 2.60x" in rule.reason and "start" not in rule.reason
    # a slow CPU speaks of the machine, not the backend: the cell is NOISY, not INVALID
    assert verdict_of([rule])[0] == "NOISY"


def test_rule_not_judged_says_why():
    assert speed_rule(None, None, False) == Rule(SPEED, True, "CPU speed not judged (quiet_cores off)")
    rule = speed_rule(None, None, True)
    assert rule.passed and "no calibration" in rule.reason


@linux_only
def test_each_usable_cpu_is_timed_and_the_affinity_restored():
    before = os.sched_getaffinity(0)
    seconds = per_cpu_seconds(reps=1)
    assert set(seconds) == before and all(s > 0 for s in seconds.values())
    assert os.sched_getaffinity(0) == before
    # against a calibration of the same loop the slowdown is the slowest CPU's ratio
    calibrated = min(seconds.values())
    s = sample_speed(calibrated, reps=1)
    assert s.slowdown == pytest.approx(max(s.seconds.values()) / calibrated)
    assert speed_dict(s, s, calibrated)["start"]["slowdown"] == round(s.slowdown, 3)


@pytest.mark.parametrize("calibrated_s, passed", [(1e-9, False), (10.0, True)])
def test_a_real_cell_judges_the_cpu_against_the_device_profile(tmp_path, monkeypatch, calibrated_s, passed):
    """The calibration travels in the cell's context (the results dir's device profile); a CPU
    far slower than it makes the cell NOISY with the machine-speed reason, and the record keeps
    both checks."""
    from chipbench import cell as cell_module

    monkeypatch.delenv("CHIPBENCH_PARENT_PID", raising=False)
    settings = MeasureSettings(warmup_count=2, warmup_s=0.0, min_count=64, min_duration_s=0.3, quiet_cores=4096.0)
    cell = Cell(workload="vibration-cnn1d", backend="ort-cpu", task_samples=0, settings=settings)
    job, out = tmp_path / "cell.json", tmp_path / "record.json"
    job.write_text(json.dumps({"cell": cell.to_dict(),
                               "context": {"device_profile": {"reference_loop_s": calibrated_s}}}))
    assert cell_module.main([str(job), str(out)]) == 0
    rec = json.loads(out.read_text())
    rule = next(r for r in rec["validity"] if r["rule"] == SPEED)
    assert rule["passed"] is passed
    assert rec["verdict"] == ("VALID" if passed else "NOISY"), rec["reason"]
    speed = rec["resources"]["machine_load"]["speed"]
    assert speed["calibrated_s"] == calibrated_s
    assert all(s > 0 for when in ("start", "end") for s in speed[when]["seconds_per_cpu"].values())
