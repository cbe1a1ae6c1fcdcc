"""`chipbench compare`: ratio-of-medians speedups with bootstrap intervals, on synthetic samples."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from chipbench.cell import base_record
from chipbench.cli import app
from chipbench.compare import (FASTER, NO_SAMPLES, SAME, SLOWER, Selector, CompareError, bootstrap_medians,
                               geomean, speedup, verdict)
from chipbench.stats import LatencyStats
from chipbench.samples import encode
from chipbench.store import ResultsStore
from chipbench.suite import Cell


def test_the_bootstrap_median_has_the_resampling_distribution():
    rng = np.random.default_rng(0)
    for n in (200, 201):  # even and odd
        x = rng.lognormal(0, 0.3, n)
        exact = bootstrap_medians(x, 20_000, np.random.default_rng(1))
        naive = np.median(x[np.random.default_rng(2).integers(0, n, (20_000, n))], axis=1)
        np.testing.assert_allclose(np.quantile(exact, [0.025, 0.5, 0.975]), np.quantile(naive, [0.025, 0.5, 0.975]),
                                   rtol=0.01)


def test_a_ten_percent_slowdown_at_n_200_with_five_percent_noise_is_detected():
    detected = 0
    for trial in range(20):
        rng = np.random.default_rng(trial)
        base, new = rng.lognormal(0, 0.05, 200), 1.10 * rng.lognormal(0, 0.05, 200)
        s = speedup(base, new, seed=trial)
        assert s.low <= s.estimate <= s.high
        detected += verdict(s, 0.05) == SLOWER
    assert detected == 20


def test_identical_distributions_raise_no_alarm_in_95_of_100_trials():
    alarms = 0
    for trial in range(100):
        rng = np.random.default_rng(1000 + trial)
        alarms += verdict(speedup(rng.lognormal(0, 0.05, 200), rng.lognormal(0, 0.05, 200), seed=trial), 0.05) != SAME
    assert alarms <= 5


def test_a_speedup_is_faster_only_beyond_the_threshold():
    rng = np.random.default_rng(3)
    base = rng.lognormal(0, 0.05, 400)
    assert verdict(speedup(base, base / 1.3), 0.05) == FASTER
    assert verdict(speedup(base, base / 1.02), 0.05) == SAME  # real but below the threshold
    assert verdict(speedup(base, base / 1.02), 0.0) == FASTER


def test_geomean_interval_brackets_the_suite_speedup():
    rng = np.random.default_rng(4)
    cells = [speedup(rng.lognormal(0, 0.05, 300), f * rng.lognormal(0, 0.05, 300), seed=i)
             for i, f in enumerate((1 / 1.2, 1.0, 1.1))]
    g = geomean(cells)
    expected = np.exp(np.mean(np.log([c.estimate for c in cells])))
    assert g.estimate == pytest.approx(expected)
    assert g.low < g.estimate < g.high
    # averaging three cells' noise: narrower (in log) than the widest single cell's interval
    assert np.log(g.high / g.low) < max(np.log(c.high / c.low) for c in cells)


@pytest.mark.parametrize("text, kind, value", [("results-a/", "dir", "results-a/"), ("dir:a:b", "dir", "a:b"),
                                               ("commit:1a2b3c4", "commit", "1a2b3c4"),
                                               ("machine:lab-7", "machine", "lab-7")])
def test_selectors(text, kind, value):
    s = Selector.parse(text, "BASE")
    assert (s.kind, s.value) == (kind, value)


@pytest.mark.parametrize("text", ["", "commit:", "commit:xyz", "commit:12", "machine:"])
def test_bad_selectors_name_the_argument(text):
    with pytest.raises(CompareError, match="^NEW"):
        Selector.parse(text, "NEW")


# ---- end to end on two small stores of synthetic records -------------------------------------

def _record(workload, backend, samples_s, host="lab-1", commit="aaaa1111", verdict_="VALID", keep_samples=True):
    latency = LatencyStats.from_samples(samples_s).to_dict()
    if keep_samples:
        latency["samples"] = encode(samples_s)
    rec = base_record(Cell(workload=workload, backend=backend), "ok", latency=latency,
                      throughput={"value": 1.0 / float(np.median(samples_s)), "unit": "samples/s"},
                      accuracy={"fidelity": {"max_abs": 0.0, "rel_l2": 1e-6, "cosine": 1.0}, "tolerance": {},
                                "failures": [], "task": None},
                      verdict=verdict_, compile={"seconds": 1.0, "artifact_bytes": 1024})
    rec.provenance["machine"] = {**rec.provenance["machine"], "hostname": host}
    rec.provenance["git_commit"] = commit
    return rec


def _stores(tmp_path, slow_factor=1.0, hostile="vibration-cnn1d"):
    rng = np.random.default_rng(11)
    a, b = ResultsStore(tmp_path / "a"), ResultsStore(tmp_path / "b")
    for store, factor, commit in ((a, 1.0, "aaaa1111"), (b, slow_factor, "bbbb2222")):
        for w, ms in (("vibration-cnn1d", 1.0), ("sensor-transformer", 2.0)):
            store.add(_record(w, "ort-cpu", ms * 1e-3 * factor * rng.lognormal(0, 0.05, 300), commit=commit))
        store.add(_record(hostile, "null", 1e-5 * rng.lognormal(0, 0.05, 300), commit=commit))
    return a, b


def _run(*args):
    return CliRunner().invoke(app, ["compare", *map(str, args)])


def test_compare_identical_runs_exits_0_and_writes_md_html_json(tmp_path):
    a, b = _stores(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    r = _run(a.root, b.root, "--md", out / "c.md", "--html", out / "c.html", "--json", out / "c.json")
    assert r.exit_code == 0, r.output
    data = json.loads((out / "c.json").read_text())
    assert data["exit_code"] == 0 and not data["regressions"] and len(data["cells"]) == 3
    assert all(c["verdict"] == SAME for c in data["cells"])
    assert data["geomean"]["cells"] == 3 and data["geomean"]["ci95"][0] < 1.0 < data["geomean"]["ci95"][1]
    assert "Suite geometric-mean speedup" in (out / "c.md").read_text()
    assert "<table>" in (out / "c.html").read_text()


def test_compare_a_slower_new_run_exits_1_and_names_the_cells(tmp_path):
    a, b = _stores(tmp_path, slow_factor=1.15)
    r = _run(a.root, b.root)
    assert r.exit_code == 1, r.output
    assert "Regressions (2)" in r.output and "slower" in r.output


def test_compare_commits_and_machines_within_one_store(tmp_path):
    rng = np.random.default_rng(5)
    store = ResultsStore(tmp_path / "s")
    store.add(_record("vibration-cnn1d", "ort-cpu", 1e-3 * rng.lognormal(0, 0.05, 300), commit="aaaa1111"))
    store.add(_record("vibration-cnn1d", "ort-cpu", 0.7e-3 * rng.lognormal(0, 0.05, 300), commit="bbbb2222"))
    store.add(_record("vibration-cnn1d", "ort-cpu", 0.5e-3 * rng.lognormal(0, 0.05, 300), host="lab-2",
                      commit="bbbb2222"))
    js = tmp_path / "c.json"
    r = _run("commit:aaaa", "commit:bbbb", "--results-dir", store.root, "--json", js)
    assert r.exit_code == 0, r.output
    data = json.loads(js.read_text())
    # commit bbbb ran on two machines: cells match machine by machine, lab-2 is NEW's only
    assert [c["verdict"] for c in data["cells"]] == [FASTER] and len(data["only_new"]) == 1
    r = _run("machine:lab-1", "machine:lab-2", "--results-dir", store.root, "--json", js)
    assert r.exit_code == 0, r.output
    data = json.loads(js.read_text())
    assert data["across_machines"] and data["cells"][0]["verdict"] == FASTER  # lab-1's newest: 0.7 ms


def test_old_records_without_samples_are_compared_on_their_medians(tmp_path):
    rng = np.random.default_rng(6)
    a, b = ResultsStore(tmp_path / "a"), ResultsStore(tmp_path / "b")
    a.add(_record("vibration-cnn1d", "ort-cpu", 1e-3 * rng.lognormal(0, 0.05, 300), keep_samples=False))
    b.add(_record("vibration-cnn1d", "ort-cpu", 2e-3 * rng.lognormal(0, 0.05, 300)))
    js = tmp_path / "c.json"
    r = _run(a.root, b.root, "--json", js)
    assert r.exit_code == 0, r.output  # twice as slow, but no interval: no verdict either way
    cell = json.loads(js.read_text())["cells"][0]
    assert cell["verdict"] == NO_SAMPLES and cell["ci95"] is None and cell["speedup"] == pytest.approx(0.5, rel=0.05)


def test_an_accuracy_regression_exits_1(tmp_path):
    rng = np.random.default_rng(8)
    a, b = ResultsStore(tmp_path / "a"), ResultsStore(tmp_path / "b")
    a.add(_record("vibration-cnn1d", "ort-cpu", 1e-3 * rng.lognormal(0, 0.05, 300)))
    b.add(_record("vibration-cnn1d", "ort-cpu", 1e-3 * rng.lognormal(0, 0.05, 300), verdict_="INVALID"))
    r = _run(a.root, b.root)
    assert r.exit_code == 1 and "verdict VALID → INVALID" in r.output


def test_the_index_keeps_no_sample_data_and_the_store_reads_it_from_the_record_file(tmp_path):
    a, _ = _stores(tmp_path)
    rec = a.records()[0]
    assert "data" not in rec.latency.samples and rec.latency.samples["count"] == 300
    assert a.samples(rec).shape == (300,)


def test_hostile_names_are_escaped_in_html(tmp_path):
    a, b = _stores(tmp_path)
    html = tmp_path / "c.html"
    for store in (a, b):  # a name no workload has: the record is as a foreign store could hold it
        rec = store.records()[-1]
        path = store.runs_dir / f"{rec.id}.json"
        data = json.loads(path.read_text())
        data["workload"]["name"] = "<script>alert(1)</script>"
        path.write_text(json.dumps(data))
        store.db_path.unlink()
        store.rebuild()
    r = _run(a.root, b.root, "--html", html)
    assert r.exit_code == 0, r.output
    text = html.read_text()
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


@pytest.mark.parametrize("args, names", [
    (["nowhere/", "{b}"], "BASE nowhere/"),
    (["{a}", "commit:zz"], "NEW 'commit:zz'"),
    (["{a}", "commit:cccc", "--results-dir", "{a}"], "NEW commit:cccc"),
    (["{a}", "{b}", "--threshold", "-3"], "--threshold"),
    (["{a}", "{b}", "--threshold", "lots"], "--threshold"),
    (["{a}", "{b}", "--html", "{tmp}/no/such/dir/c.html"], "--html"),
    (["machine:lab-1", "{b}", "--results-dir", "{tmp}/none"], "--results-dir"),
])
def test_bad_input_exits_2_with_one_error_line(tmp_path, args, names):
    a, b = _stores(tmp_path)
    r = _run(*[x.format(a=a.root, b=b.root, tmp=tmp_path) for x in args])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and names in lines[0], r.output


# ---- repeated invocations: the variance between runs -----------------------------------------

def _invocations(rng, m, factor=1.0, between=0.04, n=200):
    """m invocations of one cell: each process lands on its own level (lognormal, `between`),
    then 5 % noise within the run."""
    return [factor * rng.lognormal(0, between) * rng.lognormal(0, 0.05, n) for _ in range(m)]


def test_one_invocation_a_side_mistakes_run_to_run_drift_for_a_change_and_five_do_not():
    rng = np.random.default_rng(21)
    single = sum(verdict(speedup(_invocations(rng, 1), _invocations(rng, 1), seed=t), 0.05) != SAME
                 for t in range(100))
    repeated = sum(verdict(speedup(_invocations(rng, 5), _invocations(rng, 5), seed=t), 0.05) != SAME
                   for t in range(100))
    assert single >= 10  # the within-run interval is too narrow for drift between processes
    assert repeated <= 5


def test_repeated_invocations_still_catch_a_real_twenty_percent_slowdown():
    rng = np.random.default_rng(22)
    caught = sum(verdict(speedup(_invocations(rng, 5), _invocations(rng, 5, factor=1.2), seed=t), 0.05) == SLOWER
                 for t in range(20))
    assert caught >= 18


def test_the_location_of_invocations_is_the_geometric_mean_of_their_medians():
    runs = [np.array([1.0, 2.0, 3.0]), np.array([4.0, 8.0, 16.0])]
    s = speedup(runs, [np.array([2.0, 4.0, 8.0])])
    assert s.estimate == pytest.approx(np.sqrt(2.0 * 8.0) / 4.0) and not s.between_runs
    assert speedup(runs, runs).between_runs


def test_compare_reads_every_invocation_of_the_newest_sweep(tmp_path):
    rng = np.random.default_rng(23)
    store = ResultsStore(tmp_path / "s")
    old = _record("vibration-cnn1d", "ort-cpu", 9e-3 * rng.lognormal(0, 0.05, 300), commit="aaaa1111")
    store.add(old)  # an earlier single run of the same commit: not part of the sweep
    for commit, ms in (("aaaa1111", 1.0), ("bbbb2222", 1.0)):
        sweep = f"sweep-{commit}"
        for i, run in enumerate(_invocations(rng, 3, factor=ms * 1e-3)):
            rec = _record("vibration-cnn1d", "ort-cpu", run, commit=commit)
            rec.provenance["sweep"] = {"id": sweep, "invocation": i, "invocations": 3}
            store.add(rec)
    js, md = tmp_path / "c.json", tmp_path / "c.md"
    r = _run("commit:aaaa", "commit:bbbb", "--results-dir", store.root, "--json", js, "--md", md)
    assert r.exit_code == 0, r.output
    cell = json.loads(js.read_text())["cells"][0]
    assert (cell["runs_base"], cell["runs_new"], cell["n_base"]) == (3, 3, 600) and cell["between_runs"]
    assert cell["verdict"] == SAME  # the 9 ms run outside the sweep is not averaged in
    assert "covers the variance between runs" in md.read_text()


def test_one_invocation_a_side_is_said_in_the_output(tmp_path):
    a, b = _stores(tmp_path)
    r = _run(a.root, b.root)
    assert "3 of 3 interval(s) come from one invocation on a side" in r.output
