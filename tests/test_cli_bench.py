"""The compiler engineer's verbs end to end: probe, kernels, profile, project, and the report."""

import json

from test_cli import cli, records


def test_probe_kernels_profile_project_report(tmp_path):
    res = tmp_path / "res"
    out = cli("probe", "--quick", "--results-dir", res).stdout
    assert "peak fp32" in out and "triad bandwidth" in out
    assert list((res / "device").glob("*.json"))

    cli("kernels", "-k", "gemm/smoke,softmax/smoke", "-b", "ort-cpu", "--min-duration", "0.05",
        "--results-dir", res)
    recs = records(res)
    assert sorted(r["workload"]["name"] for r in recs) == ["gemm/smoke", "softmax/smoke"]  # benchmarks
    assert all(r["verdict"] == "VALID" and r["work"]["flops"] > 0 for r in recs)
    assert all(r["provenance"]["device_profile"]["peak_gflops"]["fp32"] > 0 for r in recs)

    out = cli("profile", "-w", "tiny-mlp", "-b", "ort-cpu", "--runs", "3", "--results-dir", res).stdout
    assert "Per-op breakdown: tiny-mlp on ort-cpu" in out
    (prof,) = [r for r in records(res) if r["kind"] == "profile"]
    assert {op["op_type"] for op in prof["profile"]["ops"]} >= {"Gemm"}
    assert prof["provenance"]["onnx_sha256"] and prof["provenance"]["device"]["kind"] == "cpu"

    proj = cli("project", "--hw", "edge-npu", "-w", "tiny-mlp", "--calibration", "none",
               "--results-dir", res).stdout
    assert "edge" in proj.lower()

    cli("report", "--results-dir", res)
    md = (res / "report.md").read_text()
    for section in ("## Kernels", "## Roofline", "![roofline](roofline.png)", "## Per-operator breakdown: tiny-mlp"):
        assert section in md
    assert (res / "roofline.png").stat().st_size > 1000
    assert 'src="data:image/png;base64,' in (res / "report.html").read_text()

    # pytest-benchmark JSON (as `make bench-kernels` writes it) onto the same roofline
    bench = res / "kernels.json"
    bench.write_text(json.dumps({"benchmarks": [
        {"name": "test_kernel[gemm/x-tir]", "group": "gemm/x", "stats": {"median": 0.01},
         "extra_info": {"backend": "tir", "kernel": "gemm", "flops": 2e9, "bytes": 1e7}}]}))
    cli("roofline", bench, "--results-dir", res)
    assert "gemm/x" in (res / "kernels-roofline-tir.md").read_text()
    assert (res / "kernels-roofline-tir.png").stat().st_size > 1000
    (res / "broken.json").write_text("{")
    proc = cli("roofline", res / "broken.json", "--results-dir", res, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "broken.json" in lines[0], proc.stderr


def test_bad_hardware_spec_is_one_line(tmp_path):
    spec = tmp_path / "chip.toml"
    spec.write_text('name = "x"\nbandwidth_gbps = -1\n')
    proc = cli("project", "--hw", spec, "-w", "tiny-mlp", "--results-dir", tmp_path, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "chip.toml" in lines[0], proc.stderr
