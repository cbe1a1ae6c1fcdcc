"""Deployment fit: requirement files, the verdict over synthetic records, and `chipbench fit` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from chipbench.cell import base_record
from chipbench.cli import app
from chipbench.fit import FitVerdict, fit_cell, fit_record, judge, over_with_confidence, reusable
from chipbench.record import RunRecord, validate
from chipbench.requirement import RequirementError, load_requirement
from chipbench.samples import encode
from chipbench.stats import LatencyStats
from chipbench.suite import Cell

ROOT = Path(__file__).parent.parent

CAMERA = """
name = "line-7"
workload = "edge-inspect"
[arrival]
pattern = "fixed"
rate_hz = 30
[latency]
deadline_ms = 33
percentile = "p99"
[accuracy]
percent_of_fp32 = 99
[budget]
cores = 2
memory_mib = 512
"""


def _write(tmp_path: Path, text: str, name: str = "line.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _req(tmp_path, text=CAMERA):
    return load_requirement(_write(tmp_path, text))


def _record(req, samples_ms, *, ratio=1.0, rss_mib=300.0, busy=1.5, rate=None, energy=None, status="ok"):
    """A measured record as a fixed-rate/server cell writes it, from synthetic latencies (ms)."""
    samples_s = np.asarray(samples_ms, dtype=np.float64) / 1e3
    latency = LatencyStats.from_samples(samples_s).to_dict()
    latency["samples"] = encode(samples_s)
    cell = fit_cell(req, "ort-cpu", "fp32", 2)
    arrival = {"rate_hz": rate or req.rate_hz, "latency_bound_ms": req.deadline_ms, "percentile": req.percent}
    rec = base_record(
        cell, status, latency=latency if status == "ok" else None,
        throughput={"value": req.rate_hz, "unit": "samples/s"} if status == "ok" else None,
        accuracy={"fidelity": {"max_abs": 0.0, "rel_l2": 1e-6, "cosine": 1.0}, "tolerance": {}, "failures": [],
                  "task": {"metric": "accuracy", "value": 0.9 * ratio, "reference": 0.9, "ratio": ratio,
                           "higher_is_better": True, "samples": 256}},
        scenario={"name": req.scenario, "settings": cell.settings.to_dict(), "loadgen": {"arrival": arrival}},
        resources={"peak_rss_bytes": int(rss_mib * 2**20), "cpu": {"cpu_s": busy * 10, "wall_s": 10.0, "cores": 2},
                   "threads": {"requested": 2, "backend": 2, "process": 5}},
        energy=energy, reason=None if status == "ok" else "backend unavailable")
    return rec, np.asarray(samples_ms, dtype=np.float64)


def _lognormal(n, median_ms, seed=0):
    return median_ms * np.random.default_rng(seed).lognormal(0.0, 0.1, n)


# --- requirement files ----------------------------------------------------------------------

def test_the_shipped_requirement_files_parse_with_units():
    gateway = load_requirement(ROOT / "requirements" / "vibration-gateway.toml")
    assert (gateway.workload, gateway.pattern, gateway.scenario) == ("vibration-cnn1d", "poisson", "server")
    assert (gateway.rate_hz, gateway.deadline_ms, gateway.tail, gateway.min_count) == (640.0, 100.0, "p99", 662)
    assert gateway.cores == 2 and gateway.memory_mib > 0 and gateway.percent_of_fp32 == 99.0
    camera = load_requirement(ROOT / "requirements" / "camera-line.toml")
    assert (camera.workload, camera.scenario, camera.rate_hz, camera.deadline_ms) == ("edge-inspect", "fixed-rate", 30.0, 33.0)
    with pytest.raises(AttributeError):
        camera.rate_hz = 60.0  # frozen


def test_percentiles_map_to_the_early_stopping_counts(tmp_path):
    for name, tail, need in (("p90", "p90", 64), ("p99", "p99", 662), ("p99.9", "p999", 6636)):
        req = _req(tmp_path, CAMERA.replace('"p99"', f'"{name}"'))
        assert (req.tail, req.min_count) == (tail, need)


@pytest.mark.parametrize("edit, message", [
    (('deadline_ms = 33', 'deadline_ms = "fast"'), "latency.deadline_ms must be a number > 0, got 'fast'"),
    (('deadline_ms = 33', 'deadline_ms = -1'), "latency.deadline_ms must be a number > 0"),
    (('pattern = "fixed"', 'pattern = "bursty"'), "arrival.pattern must be one of fixed, poisson"),
    (('percentile = "p99"', 'percentile = "p95"'), "latency.percentile must be one of p90, p99, p99.9"),
    (('workload = "edge-inspect"', 'workload = "nope"'), "workload: unknown workload 'nope'"),
    (('rate_hz = 30', ''), "arrival.rate_hz is missing"),
    (('cores = 2', 'cores = 1.5'), "budget.cores must be an integer >= 1"),
    (('memory_mib = 512', 'memory_gb = 1'), "unknown field(s) memory_gb in [budget]"),
    (('percent_of_fp32 = 99', 'percent_of_fp32 = 120'), "accuracy.percent_of_fp32 must be a number in (0, 100]"),
    (('workload = "edge-inspect"\n', 'workload = "edge-inspect"\nlatency = 3\n', '[latency]\ndeadline_ms = 33\npercentile = "p99"\n', ''),
     "latency must be a table"),
    (('[arrival]', '[arrival'), "not valid TOML"),
])
def test_bad_requirement_files_name_the_file_and_field(tmp_path, edit, message):
    text = CAMERA
    for old, new in zip(edit[::2], edit[1::2]):
        text = text.replace(old, new)
    path = _write(tmp_path, text)
    with pytest.raises(RequirementError) as exc:
        load_requirement(path)
    assert str(exc.value).startswith(f"{path}: ") and message in str(exc.value)


def test_cli_exits_2_with_one_error_line_naming_the_file_and_field(tmp_path):
    path = _write(tmp_path, CAMERA.replace("deadline_ms = 33", "deadline_ms = 0"))
    result = CliRunner().invoke(app, ["fit", "--requirement", str(path), "-b", "ort-cpu", "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and str(path) in lines[0] and "latency.deadline_ms" in lines[0]
    assert not (tmp_path / "r" / "runs").exists() or not any((tmp_path / "r" / "runs").iterdir())
    missing = CliRunner().invoke(app, ["fit", "--requirement", str(tmp_path / "none.toml"), "-b", "ort-cpu"])
    assert missing.exit_code == 2 and "none.toml: no such requirement file" in missing.output
    bad_threads = CliRunner().invoke(app, ["fit", "--requirement", str(ROOT / "requirements" / "camera-line.toml"),
                                           "-b", "ort-cpu", "--threads", "two"])
    assert bad_threads.exit_code == 2 and "--threads" in bad_threads.output


# --- the verdict ----------------------------------------------------------------------------

def test_fits_when_the_bound_is_within_the_deadline(tmp_path):
    req = _req(tmp_path)
    rec, ms = _record(req, _lognormal(800, 10.0))
    v = judge(req, rec, 2, ms)
    assert v.verdict == "FITS", v.checks
    latency = next(c for c in v.checks if c.name == "latency")
    tail = rec.latency.tails["p99"]
    assert latency.margin_pct == pytest.approx((tail.upper_bound / 33.0 - 1) * 100)
    assert "within 33 ms deadline" in v.margin
    assert {c.name for c in v.checks} == {"latency", "accuracy", "cores", "memory"}


def test_does_not_fit_names_the_requirement_and_the_margin(tmp_path):
    req = _req(tmp_path)
    rec, ms = _record(req, _lognormal(800, 40.0))
    v = judge(req, rec, 2, ms)
    p99 = rec.latency.tails["p99"].value
    assert v.verdict == "DOES NOT FIT"
    expected = f"p99 {p99:.3g} ms > 33 ms deadline (+{(p99 / 33 - 1) * 100:.0f} %)"
    assert v.margin == expected
    # memory and accuracy fail on their own, each named with its figure
    rec, ms = _record(req, _lognormal(800, 10.0), rss_mib=768.0, ratio=0.95)
    v = judge(req, rec, 2, ms)
    assert v.verdict == "DOES NOT FIT"
    assert "peak RSS 768 MiB > 512 MiB budget (+50 %)" in v.margin and "95 % of FP32" in v.margin


def test_not_proven_below_662_queries_at_p99(tmp_path):
    req = _req(tmp_path)
    rec, ms = _record(req, _lognormal(300, 10.0))  # well within the deadline, but 300 < 662
    v = judge(req, rec, 2, ms)
    assert v.verdict == "NOT PROVEN"
    assert v.margin == "p99 not estimable: n = 300 < 662 queries for a 99 % bound"


def test_a_miss_measured_on_a_busy_machine_is_not_proven_and_a_pass_stands(tmp_path):
    req = _req(tmp_path)
    busy = [{"rule": "machine-quiet", "passed": False,
             "reason": "machine busy: other work used start 1.90 cores (> quiet_cores=0.25); measure again on a quiet machine"}]
    rec, ms = _record(req, _lognormal(800, 40.0))
    rec.validity = busy
    v = judge(req, rec, 2, ms)
    assert v.verdict == "NOT PROVEN" and v.margin.endswith(", but measured while the machine was busy (other work used start 1.90 cores)")
    rec, ms = _record(req, _lognormal(800, 10.0))
    rec.validity = busy
    assert judge(req, rec, 2, ms).verdict == "FITS"


def test_few_queries_can_still_prove_a_miss(tmp_path):
    req = _req(tmp_path)
    rec, ms = _record(req, _lognormal(100, 50.0))  # every query late: the p99 is over with 99 % confidence
    assert over_with_confidence(ms, 33.0, 99.0)
    assert judge(req, rec, 2, ms).verdict == "DOES NOT FIT"
    # one late query in 100 is what a p99 within the deadline allows: not a proven miss
    ms = np.concatenate([np.full(99, 10.0), [50.0]])
    assert not over_with_confidence(ms, 33.0, 99.0)


def test_energy_on_a_cpu_is_not_proven_and_measured_energy_is_judged(tmp_path):
    req = _req(tmp_path, CAMERA + "energy_j_per_inference = 0.5\n")
    rec, ms = _record(req, _lognormal(800, 10.0))
    v = judge(req, rec, 2, ms)
    assert v.verdict == "NOT PROVEN" and "energy not measured on cpu" in v.margin
    energy = {"joules": 80.0, "seconds": 10.0, "avg_watts": 8.0, "samples": 100, "method": "nvml", "queries": 100,
              "inferences": 100, "joules_per_inference": 0.8}
    rec, ms = _record(req, _lognormal(800, 10.0), energy=energy)
    v = judge(req, rec, 2, ms)
    assert v.verdict == "DOES NOT FIT" and "0.8 J/inference > 0.5 J budget (+60 %)" in v.margin


def test_threads_over_the_core_budget_do_not_fit_without_a_measurement(tmp_path):
    req = _req(tmp_path)
    v = judge(req, None, 4, backend="ort-cpu", precision="fp32")
    assert v.verdict == "DOES NOT FIT" and v.margin == "4 threads > 2-core budget"


def test_a_record_at_another_rate_or_unsupported_is_not_proven(tmp_path):
    req = _req(tmp_path)
    rec, ms = _record(req, _lognormal(800, 10.0), rate=15.0)
    assert judge(req, rec, 2, ms).margin == "measured fixed-rate at 15 Hz, not fixed-rate at 30 Hz"
    rec, _ = _record(req, _lognormal(800, 10.0), status="unsupported")
    v = judge(req, rec, 2, None)
    assert v.verdict == "NOT PROVEN" and "unsupported: backend unavailable" in v.margin


def test_the_verdict_is_stored_as_a_fit_record_and_read_back(tmp_path):
    req = _req(tmp_path)
    rec, ms = _record(req, _lognormal(800, 10.0))
    v = judge(req, rec, 2, ms, headroom={"peak_hz": 75.0, "record": "abc"})
    stored = fit_record(v, rec)
    data = json.loads(stored.to_json())
    validate(data)
    back = FitVerdict.from_record(RunRecord.from_dict(data))
    assert back.verdict == "FITS" and back.margin == v.margin and back.headroom_text() == "75 Hz (2.50× the line's rate)"
    assert data["kind"] == "fit" and data["fit"]["measured_record"] == rec.id
    unconfirmed = judge(req, rec, 2, ms, headroom={"peak_hz": 75.0, "confirmed": False, "record": "abc"})
    assert unconfirmed.headroom_text().endswith("not confirmed: the run at that rate missed the deadline")
    assert judge(req, rec, 2, ms).headroom_text() == "not measured"


def test_a_suite_record_at_the_workloads_own_rate_is_reused(tmp_path):
    """The default suite's fixed-rate cell leaves the arrival to the workload (30 Hz, 33 ms at
    p99); the camera requirement states the same: its record is reused when it has enough queries."""
    req = _req(tmp_path)
    rec, _ = _record(req, _lognormal(700, 10.0))
    suite_cell = Cell(workload="edge-inspect", backend="ort-cpu", scenario="fixed-rate", timeout_s=420)
    rec.provenance["config"] = suite_cell.to_dict()
    rec.resources = type(rec.resources).from_dict({**rec.resources.to_dict(), "threads": {"requested": None, "backend": 2}})
    want = fit_cell(req, "ort-cpu", "fp32", 2)
    assert reusable(want, [rec], 662) is rec
    assert reusable(want, [rec], 1000) is None  # too few queries
    assert reusable(fit_cell(req, "ort-cpu", "fp32", 1), [rec], 662) is None  # other threads
    assert reusable(fit_cell(req, "ort-cpu", "int8", 2), [rec], 662) is None


def test_the_report_section_escapes_a_hostile_requirement_name(tmp_path):
    from chipbench.report import render

    req = _req(tmp_path, CAMERA.replace('name = "line-7"', 'name = "<script>alert(1)</script>|x"'))
    rec, ms = _record(req, _lognormal(800, 10.0))
    fit = fit_record(judge(req, rec, 2, ms), rec)
    html = render([rec], "html", fits=[fit])
    assert "Deployment fit" in html and "<script>alert" not in html and "&lt;script&gt;" in html
    md = render([rec], "md", fits=[fit])
    assert "\\<script\\>alert\\(1\\)\\</script\\>\\|x" in md and "| FITS |" in md


# --- end to end -----------------------------------------------------------------------------

def test_fit_end_to_end_on_ort_cpu(tmp_path):
    from chipbench.backends.base import get_backend

    if not get_backend("ort-cpu").available()[0]:
        pytest.skip("ort-cpu unavailable")
    req = _write(tmp_path, """
name = "slow-line"
workload = "vibration-cnn1d"
[arrival]
pattern = "fixed"
rate_hz = 80
[latency]
deadline_ms = 5000
percentile = "p90"
[accuracy]
percent_of_fp32 = 90
[budget]
cores = 1
memory_mib = 100000
energy_j_per_inference = 1
""")
    results = tmp_path / "results"
    args = ["fit", "--requirement", str(req), "-b", "ort-cpu", "--threads", "1,2", "--results-dir", str(results)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # 1 thread is measured; 2 threads exceed the 1-core budget and are judged without a run;
    # energy is not measured on a CPU, so the best a CPU stack gets is NOT PROVEN
    assert "slow-line on ort-cpu · fp32 · 1 thread: NOT PROVEN" in result.output
    assert "energy not measured on cpu" in result.output
    assert "slow-line on ort-cpu · fp32 · 2 threads: DOES NOT FIT — 2 threads > 1-core budget" in result.output
    from chipbench.store import ResultsStore

    records = ResultsStore(results).records()
    runs = [r for r in records if r.kind == "run"]
    fits = [r for r in records if r.kind == "fit"]
    assert len(runs) == 1 and len(fits) == 2
    run = runs[0]
    assert run.scenario["name"] == "fixed-rate" and run.latency.count >= 64 and run.latency.tails["p90"].estimable
    one = FitVerdict.from_record(next(f for f in fits if f.fit["threads"] == 1))
    assert {c.name: c.status for c in one.checks}["latency"] == "met"
    assert one.measured_record == run.id
    md = (results / "report.md").read_text()
    assert "## Deployment fit" in md and "slow-line" in md and "NOT PROVEN" in md
    assert "Deployment fit" in (results / "report.html").read_text()
    # a second fit reuses the stored measurement instead of running the cell again
    again = CliRunner().invoke(app, args + ["--no-report"])
    assert again.exit_code == 0 and "reusing 1 measured cell" in again.output
    assert len([r for r in ResultsStore(results).records() if r.kind == "run"]) == 1
