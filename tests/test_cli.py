"""The CLI end to end, in subprocesses, as a user runs it."""

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chipbench.record import validate
from onnx_models import gru, matmul_relu

FAST = ["--min-duration", "0.05", "--min-count", "5"]


def cli(*args, check=True, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "chipbench.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def records(results: Path) -> list[dict]:
    out = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    for r in out:
        validate(r)
    return out


def test_list_json_names_workloads_and_backends_with_availability():
    data = json.loads(cli("list", "--json").stdout)
    assert {"defect-cnn", "vibration-cnn1d", "sensor-transformer"} <= {w["name"] for w in data["workloads"]}
    backends = {b["name"]: b for b in data["backends"]}
    assert backends["missing-double"] == {**backends["missing-double"], "available": False,
                                          "reason": "libfoo runtime not found"}
    assert backends["ort-cpu"]["available"]


def test_run_store_report_end_to_end(tmp_path):
    res = tmp_path / "res"
    proc = cli("run", "-w", "tiny-mlp", "-b", "ort-cpu,null,noisy-double", "--scenario",
               "single-stream,offline", "--batch", "4", *FAST, "--results-dir", res)
    recs = records(res)
    assert len(recs) == 6
    by = {(r["backend"]["name"], r["scenario"]["name"]): r for r in recs}
    assert by[("ort-cpu", "offline")]["batch"] == 4 and by[("ort-cpu", "single-stream")]["batch"] == 1
    assert by[("ort-cpu", "single-stream")]["verdict"] == "VALID"
    assert by[("noisy-double", "offline")]["verdict"] == "INVALID"
    assert "rel_l2" in by[("noisy-double", "offline")]["reason"]
    lat = by[("ort-cpu", "single-stream")]["latency"]
    assert lat["count"] >= 5 and lat["min"] <= lat["median"] <= lat["p99"] <= lat["max"]
    assert by[("ort-cpu", "offline")]["throughput"]["value"] > 0
    assert by[("ort-cpu", "single-stream")]["provenance"]["onnx_sha256"]
    assert "INVALID" in proc.stderr
    md = (res / "report.md").read_text()
    assert "| tiny-mlp |" in md and "noisy-double" in md and "## offline, fp32 (batch 4)" in md
    html = (res / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html

    out = tmp_path / "again"
    cli("report", "--results-dir", res, "--md", out / "r.md", "--html", out / "r.html")
    def body(text):  # past the title and the line with the generation time; plots linked relative to each file
        return re.sub(r"\]\([^)]*\.png\)", "](plot)", text.split("\n", 3)[3])

    assert body((out / "r.md").read_text()) == body(md)


def test_crash_and_hang_cost_one_cell_each(launch, tmp_path):
    proc = cli("run", "-w", "tiny-mlp", "-b", "crash-double,hang-double,null,missing-double",
               "--timeout", "15", *FAST, "--results-dir", tmp_path, check=False)
    assert proc.returncode == 1  # failed cells make the sweep fail, after the whole sweep ran
    by = {r["backend"]["name"]: r for r in records(tmp_path)}
    assert by["crash-double"]["status"] == "failed" and "SIGABRT" in by["crash-double"]["reason"]
    assert by["hang-double"]["status"] == "failed" and "timed out after 15 s" in by["hang-double"]["reason"]
    assert by["null"]["status"] == "ok"
    assert by["missing-double"]["status"] == "skipped" and "libfoo" in by["missing-double"]["reason"]
    assert (tmp_path / "report.md").exists(), proc.stderr
    md = (tmp_path / "report.md").read_text()
    assert "SIGABRT" in md and "timed out" in md


@pytest.mark.parametrize("args, message", [
    (["-w", "nope", "-b", "null"], "unknown workload 'nope'"),
    (["-w", "tiny-mlp", "-b", "nope"], "unknown backend 'nope'"),
    (["--suite", "missing.toml"], "missing.toml: no such suite file"),
    (["--model", "missing.onnx", "-b", "ort-cpu"], "missing.onnx: no such model file"),
    (["-w", "tiny-mlp", "-b", "null", "--scenario", "server-ish"], "unknown scenario 'server-ish'"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
    proc = cli("run", *args, "--results-dir", tmp_path, check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_malformed_onnx_is_one_line_and_nonzero(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf \xff\xfe")
    proc = cli("run", "--model", bad, "-b", "ort-cpu", "--results-dir", tmp_path, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "bad.onnx" in lines[0], proc.stderr


def test_report_without_results_says_so(tmp_path):
    proc = cli("report", "--results-dir", tmp_path / "empty", check=False)
    assert proc.returncode != 0 and "no results" in proc.stderr


def test_suite_file_runs_its_cells(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text('[defaults]\nmin_duration_s = 0.05\nmin_count = 5\n\n'
                     '[[cells]]\nworkload = "tiny-mlp"\nbackends = ["null", "ort-cpu"]\n'
                     'scenarios = ["offline"]\nbatch = 2\n')
    cli("run", "--suite", suite, "--results-dir", tmp_path / "r")
    recs = records(tmp_path / "r")
    assert sorted(r["backend"]["name"] for r in recs) == ["null", "ort-cpu"]
    assert {r["batch"] for r in recs} == {2}


def test_bring_your_own_onnx_with_initializers_as_inputs(tmp_path):
    model = matmul_relu(tmp_path / "old.onnx", weights_as_inputs=True, opset=11)
    cli("run", "--model", model, "-b", "ort-cpu,tvm-llvm,torch-eager", *FAST, "--results-dir", tmp_path / "r")
    by = {r["backend"]["name"]: r for r in records(tmp_path / "r")}
    assert by["ort-cpu"]["verdict"] == "VALID" and by["tvm-llvm"]["verdict"] == "VALID"
    assert by["torch-eager"]["status"] == "unsupported" and "ONNX only" in by["torch-eager"]["reason"]
    assert by["ort-cpu"]["workload"]["name"] == "old"


def test_bring_your_own_with_expected_outputs(tmp_path):
    model = matmul_relu(tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    import onnxruntime as ort
    y = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.save(tmp_path / "good.npy", y)
    np.save(tmp_path / "wrong.npy", y + 1)
    for name, verdict in (("good", "VALID"), ("wrong", "INVALID")):
        out = tmp_path / name
        cli("run", "--model", model, "-b", "ort-cpu", "--input-data", tmp_path / "in.npz",
            "--expected", tmp_path / f"{name}.npy", *FAST, "--results-dir", out)
        (rec,) = records(out)
        assert rec["verdict"] == verdict and rec["batch"] == 3  # the data holds 3 samples: batch 3 ran


def test_dynamic_dim_needs_an_input_shape(tmp_path):
    from onnx_models import matmul_relu as make
    import onnx
    model = make(tmp_path / "m.onnx")
    m = onnx.load(model)
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "F"
    onnx.save(m, model)
    proc = cli("run", "--model", model, "-b", "ort-cpu", "--results-dir", tmp_path, check=False)
    assert proc.returncode == 2 and "dim 1 is dynamic ('F')" in proc.stderr
    cli("run", "--model", model, "-b", "ort-cpu", "--input", "x:2x8", *FAST, "--results-dir", tmp_path)


def test_unsupported_operator_is_named(tmp_path):
    model = gru(tmp_path / "gru.onnx")
    cli("run", "--model", model, "-b", "ort-cpu,tvm-llvm", *FAST, "--results-dir", tmp_path)
    by = {r["backend"]["name"]: r for r in records(tmp_path)}
    assert by["ort-cpu"]["verdict"] == "VALID"
    assert by["tvm-llvm"]["status"] == "unsupported" and "GRU" in by["tvm-llvm"]["reason"]


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    import onnx
    from onnx import external_data_helper
    model = onnx.load(matmul_relu(tmp_path / "m.onnx"))
    for t in model.graph.initializer:
        external_data_helper.set_external_data(t, location="../../etc/passwd")
        t.data_location = onnx.TensorProto.EXTERNAL
        t.ClearField("raw_data")
        t.ClearField("float_data")
    (tmp_path / "sub").mkdir()
    onnx.save(model, tmp_path / "sub" / "evil.onnx")
    proc = cli("run", "--model", tmp_path / "sub" / "evil.onnx", "-b", "ort-cpu", "--results-dir", tmp_path, check=False)
    assert proc.returncode == 2 and "outside the model's folder" in proc.stderr


def test_bring_your_own_with_constant_of_shape_weights_and_external_data(tmp_path):
    import onnx
    from onnx_models import constant_of_shape_bias
    model = onnx.load(constant_of_shape_bias(tmp_path / "cos.onnx"))
    (tmp_path / "m").mkdir()
    onnx.save(model, tmp_path / "m" / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    assert (tmp_path / "m" / "weights.bin").exists()
    cli("run", "--model", tmp_path / "m" / "ext.onnx", "-b", "ort-cpu,tvm-llvm", *FAST, "--results-dir", tmp_path / "r")
    by = {r["backend"]["name"]: r for r in records(tmp_path / "r")}
    assert by["ort-cpu"]["verdict"] == "VALID" and by["tvm-llvm"]["verdict"] == "VALID", by["tvm-llvm"]["reason"]
    assert by["tvm-llvm"]["coverage"]["status"]["ConstantOfShape"] == "ran"


def test_repeat_runs_every_cell_again_in_rounds_and_compare_reads_the_invocations(tmp_path):
    res = tmp_path / "res"
    cli("run", "-w", "tiny-mlp", "-b", "null,ort-cpu", "--repeat", "2", *FAST, "--no-report", "--results-dir", res)
    recs = sorted(records(res), key=lambda r: r["created"])
    assert [(r["backend"]["name"], r["provenance"]["sweep"]["invocation"]) for r in recs] == [
        ("null", 0), ("ort-cpu", 0), ("null", 1), ("ort-cpu", 1)]  # rounds, not one cell twice in a row
    assert len({r["provenance"]["sweep"]["id"] for r in recs}) == 1
    assert {r["provenance"]["sweep"]["invocations"] for r in recs} == {2}
    out = tmp_path / "c.json"
    cli("compare", res, res, "--json", out)
    cells = json.loads(out.read_text())["cells"]
    assert {(c["runs_base"], c["runs_new"], c["between_runs"]) for c in cells} == {(2, 2, True)}


def test_retry_noisy_measures_a_noisy_cell_again_and_keeps_both_records(tmp_path, monkeypatch):
    """A device profile whose calibration no CPU can match makes every cell NOISY (machine-speed):
    --retry-noisy 1 runs each once more, both records stay, and the newest is what `latest` shows."""
    from chipbench.probe import measure_ceilings, save_profile
    from chipbench.store import ResultsStore

    res = tmp_path / "res"
    profile = measure_ceilings(quick=True)
    profile.details["reference_loop_s"] = 1e-12
    save_profile(profile, res)
    monkeypatch.setenv("CHIPBENCH_QUIET_CORES", "1000")  # judged, and no machine is that busy
    proc = cli("run", "-w", "tiny-mlp", "-b", "ort-cpu", *FAST, "--no-report", "--retry-noisy", "1",
               "--results-dir", res)
    assert "1 NOISY cell(s) measured again" in proc.stderr
    recs = sorted(records(res), key=lambda r: r["created"])
    assert [r["verdict"] for r in recs] == ["NOISY", "NOISY"]
    assert {r["rule"] for rec in recs for r in rec["validity"] if not r["passed"]} == {"machine-speed"}
    assert [r.id for r in ResultsStore(res).latest()] == [recs[-1]["id"]]
    bad = cli("run", "-w", "tiny-mlp", "-b", "null", "--repeat", "2", "--retry-noisy", "1", "--results-dir", res,
              check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --retry-noisy goes with single invocations")


def test_a_suite_includes_another_with_its_own_defaults_and_refuses_a_cycle(tmp_path):
    from chipbench.scenarios import MeasureSettings
    from chipbench.suite import SuiteError, load_suite

    (tmp_path / "base.toml").write_text('[defaults]\nmin_count = 64\n[[cells]]\nworkload = "vibration-cnn1d"\n'
                                        'backend = "ort-cpu"\n')
    (tmp_path / "more.toml").write_text('include = ["base.toml"]\n[[cells]]\nworkload = "defect-cnn"\n'
                                        'backend = "ort-cpu"\n')
    cells = load_suite(tmp_path / "more.toml")
    assert [(c.workload, c.settings.min_count) for c in cells] == [("vibration-cnn1d", 64),
                                                                   ("defect-cnn", MeasureSettings().min_count)]
    (tmp_path / "base.toml").write_text('include = ["more.toml"]\n')
    with pytest.raises(SuiteError, match="includes itself"):
        load_suite(tmp_path / "more.toml")
    (tmp_path / "more.toml").write_text('include = ["gone.toml"]\n')
    with pytest.raises(SuiteError, match="gone.toml: no such suite file"):
        load_suite(tmp_path / "more.toml")
