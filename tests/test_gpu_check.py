"""The GPU check rehearsed on this CPU: weights left out of a bundle and rebuilt elsewhere
(chipbench.bundle_rebuild), `scripts/gpu_bundles.py` building the carried folder and
`scripts/gpu_check.py` running it end to end with the runtime kit, as it runs on a GPU machine."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--min-duration", "0.05", "--min-count", "5"]
SMALL_RESNET = {"image_size": 32, "width": 8, "blocks": [1, 1]}  # defect-cnn's layout, seconds to build


def error_line(proc) -> str:
    """The one `error:` line, last on stderr; no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


def runner(bundle: Path, out: Path):
    return subprocess.run([sys.executable, "-m", "chipbench.bundle_runner", str(bundle), "--out", str(out), *FAST],
                          capture_output=True, text=True, timeout=300)


def rebuild(*bundles: Path, env: dict | None = None):
    return subprocess.run([sys.executable, "-m", "chipbench.bundle_rebuild", *map(str, bundles)],
                          capture_output=True, text=True, timeout=300, env=env or os.environ.copy())


@pytest.fixture(scope="module")
def left_out(tmp_path_factory):
    """A small ResNet (defect-cnn's seeded, BatchNorm-calibrated layout) bundled for tvm-llvm
    with every weight over 1 KiB left out."""
    from chipbench.bundle import make_bundle
    from chipbench.scenarios import MeasureSettings
    from chipbench.suite import Cell

    folder = tmp_path_factory.mktemp("left-out") / "bundle"
    cell = Cell("defect-cnn", "tvm-llvm", workload_params=SMALL_RESNET,
                settings=MeasureSettings(min_duration_s=0.05, min_count=5))
    made = make_bundle(cell, folder, leave_out_bytes=1024)
    return folder, made.manifest


def test_weights_over_the_limit_leave_the_bundle_with_their_digests(left_out):
    from chipbench.bundle_format import read_npz

    folder, manifest = left_out
    (params, members), = manifest["left_out"].items()
    kept = read_npz(folder / params)
    assert members and not set(members) & set(kept)
    assert len(members) + len(kept) == len(manifest["runtime"]["param_specs"])
    assert all(e["bytes"] > 1024 and len(e["sha256"]) == 64 and e["what"].startswith("weight '") for e in members.values())
    assert all(a.nbytes <= 1024 for a in kept.values())
    recipe = manifest["rebuild"]
    # what the seed does not give travels: BatchNorm's calibrated statistics and scales, nothing seeded
    assert "state.npz" in manifest["files"] and recipe["state"]["names"]
    assert all(n.endswith(("running_mean", "running_var", "num_batches_tracked")) or n.startswith("fold:")
               for n in recipe["state"]["names"])
    assert any(n.endswith("conv1.weight") for n in recipe["seeded"])


def test_a_bundle_runs_only_once_its_weights_are_rebuilt_and_verified(left_out, tmp_path):
    import shutil

    folder = tmp_path / "bundle"
    shutil.copytree(left_out[0], folder)
    proc = runner(folder, tmp_path / "r.json")  # before the rebuild: refused, naming a weight
    assert proc.returncode == 2
    line = error_line(proc)
    assert "rebuilt/params.npz: array p" in line and "weight '" in line and "not rebuilt here" in line
    proc = rebuild(folder)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith(f"rebuilt {folder}: {len(left_out[1]['left_out']['params.npz'])} array(s)")
    proc = runner(folder, tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((tmp_path / "r.json").read_text())["records"][0]
    assert rec["verdict"] == "VALID"
    assert any("rebuilt on this machine (seeded-weights) and checked by sha256" in n for n in rec["notes"])


def test_the_rebuilt_model_is_the_hosts_and_stands_in_for_its_weights(left_out, tmp_path, monkeypatch):
    """`--weights-dir`: the rebuilt model's weights (seeded + carried state) go beside the
    host's cache key, and the torch backends load them instead of calibrating or training."""
    import shutil

    import torch

    from chipbench.workloads.base import get_workload
    from chipbench.workloads.training import cache_entries, carried_weights

    workload = get_workload("defect-cnn", **SMALL_RESNET)
    (kpath, key), = cache_entries(workload)
    carried = tmp_path / "weights" / "defect-cnn"
    carried.mkdir(parents=True)
    shutil.copy(kpath, carried / kpath.name)
    folder = tmp_path / "bundle"
    shutil.copytree(left_out[0], folder)
    proc = subprocess.run([sys.executable, "-m", "chipbench.bundle_rebuild", str(folder), "--weights-dir",
                           str(tmp_path / "weights")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and f"weights {carried / kpath.name.replace('.key.json', '.pt')}" in proc.stderr
    built = workload.build().state_dict()
    model = workload.seeded_model()
    monkeypatch.setenv("CHIPBENCH_CARRIED_WEIGHTS", str(tmp_path / "weights"))
    info = carried_weights("defect-cnn", {**key["key"], "torch": "another"}, model)
    other = carried_weights("defect-cnn", {**key["key"], "recipe": "another", "torch": "another"}, workload.seeded_model())
    assert info["carried"] == str(carried) and info["made_with_torch"] == key["key"]["torch"] and other is None
    assert all(torch.equal(model.state_dict()[k], v) for k, v in built.items())


def test_a_weight_that_is_not_reproduced_exactly_is_refused_naming_it(left_out, tmp_path):
    import shutil

    from chipbench.bundle_format import read_npz

    folder = tmp_path / "bundle"
    shutil.copytree(left_out[0], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    member, entry = next(iter(manifest["left_out"]["params.npz"].items()))
    # another machine's weights (here: one value changed after the rebuild) never run
    assert rebuild(folder).returncode == 0
    rebuilt = read_npz(folder / "rebuilt" / "params.npz")
    rebuilt[member].flat[0] += 1
    with open(folder / "rebuilt" / "params.npz", "wb") as f:
        np.savez(f, **rebuilt)
    proc = runner(folder, tmp_path / "r.json")
    assert proc.returncode == 2
    assert f"array {member} ({entry['what']}, float32 {entry['shape']}) has sha256" in error_line(proc)
    # the rebuild itself refuses an array its seeded model does not give, naming it
    manifest["left_out"]["params.npz"][member]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    proc = rebuild(folder)
    assert proc.returncode == 1
    assert f"array {member} ({entry['what']}" in proc.stderr and "is not reproduced here" in proc.stderr


def test_folded_weights_are_rebuilt_exactly_where_the_exporter_rounds_otherwise(left_out, tmp_path, monkeypatch):
    """Another torch or CPU folds BatchNorm into the convolutions with other bits (its sqrt is not
    correctly rounded): here every folded initializer the export gives is moved by one ulp, and the rebuild
    still gives the host's exact weights, folded in numpy from the carried scales."""
    import shutil

    from chipbench import bundle_rebuild, prepare

    manifest = left_out[1]
    assert manifest["rebuild"]["folds"] and any(n.startswith(bundle_rebuild.FOLD) for n in manifest["rebuild"]["state"]["names"])
    export = prepare.onnx_proto

    def other_rounding(*args, **kwargs):
        from onnx import numpy_helper

        proto = export(*args, **kwargs)
        for t in proto.graph.initializer:
            a = numpy_helper.to_array(t)
            if t.name.startswith("onnx::Conv"):  # what the exporter computed (the others keep their module names)
                t.CopyFrom(numpy_helper.from_array(np.nextafter(a, np.float32(np.inf)), t.name))
        return proto

    monkeypatch.setattr(prepare, "onnx_proto", other_rounding)
    folder = tmp_path / "bundle"
    shutil.copytree(left_out[0], folder)
    made = bundle_rebuild.rebuild(folder)
    assert made.arrays == len(manifest["left_out"]["params.npz"])
    assert runner(folder, tmp_path / "r.json").returncode == 0  # every digest checked again by the runner


def test_seeded_weights_drawn_differently_refuse_the_rebuild(left_out, tmp_path):
    """torch's no-SIMD kernels draw seeded weights differently from its AVX2/AVX-512 ones, as
    another torch or CPU might: the rebuild names the weight, torch and CPU, and writes nothing."""
    import shutil

    import torch

    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("this CPU already runs torch's no-SIMD kernels")
    folder = tmp_path / "bundle"
    shutil.copytree(left_out[0], folder)
    proc = rebuild(folder, env={**os.environ, "ATEN_CPU_CAPABILITY": "default"})
    assert proc.returncode == 1
    assert "seeded weight '" in proc.stderr and "differs from the compiling host's" in proc.stderr
    assert "CPU capability DEFAULT here" in proc.stderr
    assert not (folder / "rebuilt").exists()


def test_weights_without_a_seeded_model_travel_and_say_why(tmp_path):
    from chipbench.bundle import make_bundle
    from chipbench.suite import Cell

    made = make_bundle(Cell("tiny-mlp", "tvm-llvm"), tmp_path / "b", leave_out_bytes=0)
    assert "left_out" not in made.manifest and "state.npz" not in made.manifest["files"]
    assert len(made.remarks) == 1 and "travel: tiny-mlp offers no seeded model" in made.remarks[0]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def script(name: str, *args, env=None, timeout=600):
    env = {k: v for k, v in (env or os.environ).items() if k != "CHIPBENCH_PLUGINS"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def carried(tmp_path_factory):
    """The rehearsal's carried folder: vibration-cnn1d at batch 1 for tvm-llvm, the kit for
    this Python, its trained weights."""
    out = tmp_path_factory.mktemp("gpu-check") / "carry"
    proc = script("gpu_bundles.py", "--device", "cpu", "--out", out, "--workloads", "vibration-cnn1d", "--batches", "1",
                  "--no-wheels")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_gpu_bundles_writes_one_folder_with_its_plan_and_sizes(carried):
    out, proc = carried
    plan = json.loads((out / "plan.json").read_text())
    assert plan["device"] == "cpu" and plan["backend"] == "tvm-llvm" and plan["workloads"] == ["vibration-cnn1d"]
    assert [b["name"] for b in plan["bundles"]] == ["vibration-cnn1d-b1"] and plan["bundles"][0]["status"] == "ok"
    assert (out / "bundles" / "vibration-cnn1d-b1" / "manifest.json").is_file()
    assert plan["kit"]["status"] == "ok" and (out / "kit" / "python" / "tvm" / "lib" / "libtvm_runtime.so").is_file()
    assert [w["weights"] for w in plan["weights"]] == ["carried"]
    sizes = plan["sizes_mib"]
    assert sizes["total"] == pytest.approx(sum(v for k, v in sizes.items() if k != "total"), abs=0.05)
    assert 0 < sizes["kit"] < sizes["total"] < 64
    assert re.search(rf"^total +{sizes['total']:.2f}$", proc.stdout, re.M), proc.stdout
    again = script("gpu_bundles.py", "--device", "cpu", "--out", out.parent)  # not a folder it built: left alone
    assert again.returncode == 1 or again.returncode == 2
    assert "is not a folder this script built" in again.stderr and out.is_dir()


def test_gpu_check_rehearsal_runs_the_bundles_and_torch_on_the_carried_weights(carried, tmp_path):
    """As on a GPU machine: a fresh cache (nothing trained there), the runner on the kit alone,
    the records imported, the torch part on the carried weights, the report and five files."""
    out, _ = carried
    env = {**os.environ, "CHIPBENCH_CACHE": str(tmp_path / "device-cache")}
    proc = script("gpu_check.py", "--device", "cpu", "--dir", out, "--results-dir", tmp_path / "res",
                  "--export", tmp_path / "out", "--min-duration", "0.05", "--min-count", "5",
                  # 64 queries: single-stream's p90 needs them (chipbench.tails), however slow a busy machine is
                  "--torch-args", "--skip-probe --backends torch-eager --min-duration 0.05 --min-count 64 --task-samples 0",
                  env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "gpu-check-records.json", "gpu-check-summary.md", "gpu-check.log", "report.html", "report.md"]
    doc = json.loads((tmp_path / "out" / "gpu-check-records.json").read_text())
    by_backend = {r["backend"]["name"]: r for r in doc["records"]}
    assert set(by_backend) == {"tvm-llvm", "torch-eager"} and not doc["problems"] and not doc["not_run"]
    assert all(r["status"] == "ok" and r["verdict"] == "VALID" for r in doc["records"])
    tvm = by_backend["tvm-llvm"]
    assert tvm["provenance"]["runtime"]["tvm_compiler_loaded"] is False and tvm["provenance"]["bundle"]
    # the bundle and the torch backend measured the same model: the carried weights, not retrained
    log = (tmp_path / "out" / "gpu-check.log").read_text()
    assert "'carried'" in log and "preparing vibration-cnn1d weights" not in log
    assert tvm["provenance"]["onnx_sha256"] == by_backend["torch-eager"]["provenance"]["onnx_sha256"]
    assert "python -S with the kit" in log
    summary = (tmp_path / "out" / "gpu-check-summary.md").read_text()
    assert "2 records, 2 ok and VALID" in summary and "| vibration-cnn1d | tvm-llvm | fp32 | 1 | ok | VALID |" in summary
    assert "tvm-llvm" in (tmp_path / "out" / "report.md").read_text()


def test_gpu_check_names_what_the_budget_cut(carried, tmp_path):
    out, _ = carried
    proc = script("gpu_check.py", "--device", "cpu", "--dir", out, "--results-dir", tmp_path / "res",
                  "--budget-s", "1", "--reserve-s", "0", "--min-torch-s", "60")
    assert proc.returncode == 3, proc.stderr
    assert "- tvm-llvm b1: vibration-cnn1d" in proc.stdout and "- torch part: probe and torch backends" in proc.stdout


def test_gpu_check_refuses_a_folder_for_another_device_or_python(carried, tmp_path):
    out, _ = carried
    proc = script("gpu_check.py", "--dir", tmp_path, "--results-dir", tmp_path / "res")
    assert proc.returncode == 2 and "plan.json: no such file" in error_line(proc)
    proc = script("gpu_check.py", "--device", "cuda:0", "--dir", out, "--results-dir", tmp_path / "res")
    assert proc.returncode == 2 and "built for cpu devices, not --device cuda:0" in error_line(proc)
    plan = json.loads((out / "plan.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "plan.json").write_text(json.dumps({**plan, "kit": {**plan["kit"], "python": "3.99"}}))
    proc = script("gpu_check.py", "--device", "cpu", "--dir", other, "--results-dir", tmp_path / "res")
    assert proc.returncode == 2 and "its runtime kit is for Python 3.99" in error_line(proc)


def test_carried_wheels_install_offline_into_a_folder_of_their_own(gpu_check, tmp_path):
    wheel = tmp_path / "carried_probe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("carried_probe/__init__.py", "VALUE = 42\n")
        zf.writestr("carried_probe-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: carried-probe\nVersion: 1.0\n")
        zf.writestr("carried_probe-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("carried_probe-1.0.dist-info/RECORD", "")
    log = gpu_check.Log(tmp_path / "log")
    assert gpu_check.install_wheels([wheel], tmp_path / "site", log) is None
    assert gpu_check.unpack_wheels([wheel], tmp_path / "unpacked", log) is None  # where there is no pip
    for site in ("site", "unpacked"):
        proc = subprocess.run([sys.executable, "-c", "import carried_probe; print(carried_probe.VALUE)"],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path / site)})
        assert proc.stdout.strip() == "42", proc.stderr
    failed = gpu_check.install_wheels([tmp_path / "missing-1.0-py3-none-any.whl"], tmp_path / "site2", log)
    assert failed.startswith("pip install exit ") and "\n" not in failed
    # only what this Python lacks is installed: a carried wheel never shadows the machine's own
    here = tmp_path / "numpy-0.1-py3-none-any.whl"
    assert gpu_check.not_installed([wheel, here]) == [wheel]
    linked = gpu_check.runner_deps(tmp_path / "deps")
    assert "numpy" in linked and (tmp_path / "deps" / "numpy" / "__init__.py").is_file()
