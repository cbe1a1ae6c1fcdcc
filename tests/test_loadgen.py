"""LoadGen scenarios over the adapter: null-model runs of every scenario, sample rotation,
padding, the TEST01 check, the fixed-rate issuer on a fake clock, the flags, and one small
workload through a real backend."""

from __future__ import annotations


import numpy as np
import pytest

from chipbench.fixed_rate import issue_fixed_rate
from chipbench.loadgen import Adapter, Arrival, run_scenario
from chipbench.sample_library import SampleSet
from chipbench.scenarios import MeasureSettings
from tests.doubles import accurate

SHORT = MeasureSettings(warmup_count=2, warmup_s=0.0, min_count=200, min_duration_s=0.05, max_duration_s=5.0,
                        max_count=2000)


def doubling_samples(n: int = 16) -> SampleSet:
    """Distinct samples whose right answer is twice the input (`double`): a run must look at its
    input to be right."""
    rng = np.random.default_rng(0)
    items = [{"x": rng.standard_normal((1, 4)).astype(np.float32)} for _ in range(n)]
    return SampleSet(items, 1, "test")


def double(inputs):
    return {"y": inputs["x"] * 2}


@pytest.mark.parametrize("scenario, batch", [("single-stream", 1), ("multi-stream", 8), ("server", 1),
                                              ("offline", 4), ("fixed-rate", 1)])
def test_every_scenario_runs_checks_sampled_responses_and_keeps_loadgens_verdict(scenario, batch):
    settings = MeasureSettings(**{**SHORT.to_dict(), "accuracy_log_probability": 0.5, "min_count": 50})
    rate = 2000.0 if scenario == "server" else 500.0
    run = run_scenario(scenario, double, doubling_samples(), batch, settings, Arrival(rate, 1000.0, 99.0, "test"),
                       seed=1)
    assert len(run.samples_s) >= (1 if scenario == "offline" else 50)
    assert all(s > 0 for s in run.samples_s)
    assert run.result in ("VALID", "INVALID") and (run.result == "VALID") == (not run.reasons)
    assert run.issuer == ("chipbench" if scenario == "fixed-rate" else "loadgen")
    assert run.accuracy_log["checked"] > 0 and run.accuracy_log["failed"] == 0 and run.accuracy_failure is None
    rec = run.record()
    assert rec["settings"]["scenario"] in ("fixed-rate", "SingleStream", "MultiStream", "Server", "Offline")
    assert rec["summary"]


def test_single_stream_latencies_are_loadgens_own():
    run = run_scenario("single-stream", double, doubling_samples(), 1, SHORT, Arrival(1.0, 1e3, 99.0, "t"))
    stats = run.details["loadgen_summary_stats"]
    assert len(run.samples_s) == stats["result_query_count"]
    assert np.mean(run.samples_s) * 1e9 == pytest.approx(stats["result_mean_latency_ns"], rel=0.01, abs=2)
    assert run.settings["min_query_count"] == SHORT.min_count
    assert run.settings["min_duration_ms"] == 50


def test_queries_rotate_over_the_samples():
    seen = set()

    def spy(inputs):
        seen.add(float(inputs["x"][0, 0]))
        return double(inputs)

    run_scenario("single-stream", spy, doubling_samples(16), 1, SHORT, Arrival(1.0, 1e3, 99.0, "t"))
    assert len(seen) == 16


def test_a_short_last_batch_is_padded_by_repeating_samples_and_counted():
    shapes = []

    def spy(inputs):
        shapes.append(inputs["x"].shape)
        return double(inputs)

    adapter = Adapter(spy, doubling_samples(), 4, keep_probability=1.0)
    adapter.answer([3, 5, 7])
    assert shapes == [(4, 4)] and adapter.padded_runs == 1 and adapter.padded_samples == 1
    assert [i for i, _ in adapter.kept] == [3, 5, 7]  # the padding's outputs are not responses
    assert adapter.check_kept()["failed"] == 0


def test_a_backend_right_only_when_checked_untimed_is_invalid_during_the_timed_run():
    """MLPerf TEST01: right in the untimed warm-up and when asked again after the run, wrong
    during the first 150 timed queries; those of its timed responses that were kept differ
    from its own untimed answers."""
    calls = []

    def cheat(inputs):
        calls.append(1)
        return {"y": np.zeros_like(inputs["x"])} if SHORT.warmup_count < len(calls) <= 150 else double(inputs)

    settings = MeasureSettings(**{**SHORT.to_dict(), "accuracy_log_probability": 0.2})
    run = run_scenario("single-stream", cheat, doubling_samples(), 1, settings, Arrival(1.0, 1e3, 99.0, "t"), seed=3)
    log = run.accuracy_log
    assert len(calls) > 150 + log["checked"] and 0 < log["failed"] < log["checked"]
    assert run.accuracy_failure == (f"{log['failed']} of {log['checked']} sampled responses outside tolerance "
                                    "during the timed run")


def test_an_honest_backend_that_misses_the_reference_on_some_samples_passes_test01():
    """TEST01 asks for the same answers timed and untimed, not for FP32's (int8 may differ)."""
    def coarse(inputs):
        return {"y": np.round(inputs["x"] * 2, 0)}

    run = run_scenario("single-stream", coarse, doubling_samples(), 1,
                       MeasureSettings(**{**SHORT.to_dict(), "accuracy_log_probability": 0.5}),
                       Arrival(1.0, 1e3, 99.0, "t"), seed=3)
    assert run.accuracy_log["checked"] > 0 and run.accuracy_log["failed"] == 0


class FakeClock:
    """Seconds that move only when the issuer sleeps or a query is served."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


@pytest.mark.parametrize("service_s, rate", [(0.004, 30.0), (0.05, 10.0)])
def test_fixed_rate_issues_on_schedule_and_counts_latency_from_the_due_time(service_s, rate):
    clock = FakeClock()
    served = []

    def answer(index):
        served.append(index)
        clock.now += service_s

    fr = issue_fixed_rate(answer, 8, rate, min_count=20, min_duration_s=1.0, max_duration_s=10.0, max_count=1000,
                          latency_bound_ms=1000 / rate, percentile=99.0, clock=clock, sleep=clock.sleep)
    period = 1 / rate
    assert fr.issued_s == pytest.approx([k * period for k in range(len(fr.issued_s))])
    assert fr.samples_s == pytest.approx([service_s] * len(fr.samples_s))
    assert len(fr.samples_s) >= 20 and fr.wall_s >= 1.0 and fr.result == "VALID"
    assert sorted(set(served)) == list(range(8))


def test_fixed_rate_backlog_shows_in_latency_and_breaks_the_bound():
    clock = FakeClock()

    def slow(index):
        clock.now += 0.15  # slower than the 100 ms period: each query waits longer than the last

    fr = issue_fixed_rate(slow, 4, 10.0, min_count=10, min_duration_s=0.5, max_duration_s=10.0, max_count=10,
                          latency_bound_ms=100.0, percentile=99.0, clock=clock, sleep=clock.sleep)
    assert np.all(np.diff(fr.samples_s) > 0)
    assert fr.samples_s[-1] == pytest.approx(0.15 + 9 * 0.05)
    assert fr.result == "INVALID" and any("latency bound not met" in r for r in fr.reasons)


def test_server_find_peak_uses_loadgens_search():
    import time

    def slow(inputs):
        time.sleep(0.002)
        return double(inputs)

    settings = MeasureSettings(warmup_count=1, warmup_s=0.0, min_count=30, min_duration_s=0.1, max_duration_s=2.0,
                               max_count=400, find_peak=True, accuracy_log_probability=0.0)
    run = run_scenario("server", slow, doubling_samples(), 1, settings, Arrival(50.0, 20.0, 90.0, "t"))
    peak = run.details["find_peak"]
    assert peak["method"] == "LoadGen FindPeakPerformance" and peak["latency_bound_ms"] == 20.0
    assert peak["peak_qps"] is None or peak["peak_qps"] > 0
    if peak["peak_qps"]:
        assert run.settings["server_target_qps"] == pytest.approx(peak["peak_qps"])
        assert run.details["arrival"]["rate_hz"] == pytest.approx(peak["peak_qps"])


@pytest.mark.parametrize("args, message", [
    (["--rate", "5"], "--rate goes with the fixed-rate scenario"),
    (["--find-peak"], "--find-peak goes with the server scenario"),
    (["--scenario", "multi-stream", "--target-qps", "3"], "--target-qps goes with the server scenario"),
    (["--scenario", "single-stream", "--samples-per-query", "4"], "--samples-per-query goes with the multi-stream"),
    (["--scenario", "fixed-rate", "--rate", "-1"], "--rate"),
    (["--scenario", "warp-speed"], "unknown scenario 'warp-speed'"),
])
def test_scenario_flags_are_checked_before_any_cell_runs(args, message, tmp_path):
    from typer.testing import CliRunner

    from chipbench.cli import app

    result = CliRunner().invoke(app, ["run", "-w", "vibration-cnn1d", "-b", "null", *args,
                                      "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.json"))


def test_suite_scenario_settings_are_checked(tmp_path):
    from chipbench.suite import SuiteError, load_suite

    path = tmp_path / "s.toml"
    path.write_text('[[cells]]\nworkload = "vibration-cnn1d"\nbackend = "null"\nscenario = "server"\npercentile = 150\n')
    with pytest.raises(SuiteError, match="percentile must be > 0 and < 100"):
        load_suite(path)
    path.write_text('[[cells]]\nworkload = "vibration-cnn1d"\nbackend = "ort-cpu"\nscenario = "fixed-rate"\n'
                    'rate_hz = 30.0\nlatency_bound_ms = 33\n')
    (cell,) = load_suite(path)
    assert cell.settings.rate_hz == 30.0 and cell.settings.latency_bound_ms == 33


@pytest.mark.parametrize("scenario", ["single-stream", "server", "fixed-rate"])
def test_a_small_workload_on_ort_cpu_through_its_scenario(scenario):
    from chipbench.backends.base import get_backend
    from chipbench.cell import execute
    from chipbench.record import validate
    from chipbench.suite import Cell

    if not get_backend("ort-cpu").available()[0]:
        pytest.skip("ort-cpu unavailable")
    settings = MeasureSettings(warmup_count=2, warmup_s=0.0, min_count=30, min_duration_s=0.05, max_duration_s=5.0,
                               rate_hz=100.0, target_qps=100.0)
    rec = execute(Cell(workload="vibration-cnn1d", backend="ort-cpu", scenario=scenario, task_samples=0,
                       settings=settings))
    data = rec.to_dict() if hasattr(rec, "to_dict") else __import__("json").loads(rec.to_json())
    validate(data)
    assert data["status"] == "ok" and accurate(data), data["reason"]
    # a short run may not support its scenario's tail (p99 needs 662 queries): only those rules may fail
    assert {r["rule"] for r in data["validity"] if not r["passed"]} <= {"tail-estimate", "loadgen"}, data["reason"]
    lg = data["scenario"]["loadgen"]
    assert lg["issuer"] == ("chipbench" if scenario == "fixed-rate" else "loadgen")
    assert lg["accuracy_log"]["failed"] == 0 and lg["samples"]["source"] == "test split"
    assert data["latency"]["count"] >= 30
    if scenario != "single-stream":
        assert lg["arrival"]["rate_hz"] == 100.0 and lg["arrival"]["latency_bound_ms"] == 100.0
        assert data["throughput"]["value"] == pytest.approx(100.0, rel=0.5)
