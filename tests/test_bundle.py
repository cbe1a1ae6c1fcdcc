"""Compile here, run there: bundles, the runtime-only runner, the runtime kit and `chipbench import`.

Everything runs as a user runs it, in subprocesses: `chipbench bundle` on the host, the runner
with the runtime side only (the full install with torch/ONNX refused, or the runtime kit with
nothing else on its path), `chipbench import` back on the host.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chipbench.record import validate

FAST = ["--min-duration", "0.05", "--min-count", "5"]

# Runs the bundle runner as `python -m` would, then reports what the process loaded.
PROBE = """
import json, runpy, sys
sys.argv = ["chipbench.bundle_runner", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("chipbench.bundle_runner", run_name="__main__")
except SystemExit as exc:
    code = exc.code
maps = open("/proc/self/maps").read()
heavy = ("torch", "onnx", "onnxscript", "tvm", "tvm_ffi", "onnxruntime")
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules} & set(heavy)),
                  "compiler": "libtvm_compiler" in maps, "tvm_runtime": "libtvm_runtime.so" in maps}))
"""


def cli(*args, check=True, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "chipbench.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=os.environ.copy())
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def runner(bundle, out, *extra, python=(sys.executable,), env=None, timeout=300):
    return subprocess.run([*python, "-m", "chipbench.bundle_runner", str(bundle), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=timeout, env=env or os.environ.copy())


def probe(bundle, out, python=(sys.executable,), env=None) -> dict:
    # run from the records' folder: `-c` puts the working folder first on sys.path, and the
    # source tree's chipbench/ must not stand in for the kit's
    proc = subprocess.run([*python, "-c", PROBE, str(bundle), "--out", str(out)], capture_output=True, text=True,
                          timeout=300, env=env or os.environ.copy(), cwd=Path(out).parent)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def error_line(proc) -> str:
    """The one `error:` line, last on stderr (progress lines may come before it); no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """tiny-mlp bundled for tvm-llvm (single-stream) and ort-cpu (offline, batch 4)."""
    root = tmp_path_factory.mktemp("bundles")
    cli("bundle", "-w", "tiny-mlp", "-b", "tvm-llvm", "--out", root / "tvm", *FAST)
    cli("bundle", "-w", "tiny-mlp", "-b", "ort-cpu", "--batch", "4", "--out", root / "ort", *FAST)
    return {"tvm-llvm": root / "tvm", "ort-cpu": root / "ort"}


def test_a_bundle_holds_its_files_with_their_hashes_and_provenance(bundles):
    from chipbench.bundle_format import sha256_file

    manifest = json.loads((bundles["tvm-llvm"] / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.so", "params.npz", "inputs.npz", "reference.npz"}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(bundles["tvm-llvm"] / name)
    assert manifest["runtime"]["module"] == "chipbench.backends.tvm_runtime"
    assert manifest["runtime"]["device"] == "cpu"
    assert manifest["backend"]["name"] == "tvm-llvm" and manifest["backend"]["target"].startswith("{")
    assert manifest["backend"]["tuning_db"] is None and "untuned" in manifest["backend"]["pipeline"]
    assert len(manifest["model"]["onnx_sha256"]) == 64 and manifest["host"]["libraries"]["apache-tvm"]
    assert manifest["cell"]["workload"] == "tiny-mlp" and manifest["batch"] == 1
    ort = json.loads((bundles["ort-cpu"] / "manifest.json").read_text())
    assert set(ort["files"]) == {"model.onnx", "inputs.npz", "reference.npz"} and ort["batch"] == 4
    assert ort["model"]["onnx_sha256"] == __import__("hashlib").sha256(
        (bundles["ort-cpu"] / "model.onnx").read_bytes()).hexdigest()  # fp32: the exported file itself
    with np.load(bundles["tvm-llvm"] / "params.npz", allow_pickle=False) as params:
        assert len(params.files) == len(manifest["runtime"]["param_specs"]) > 0


@pytest.mark.parametrize("backend", ["tvm-llvm", "ort-cpu"])
def test_round_trip_bundle_runner_import_stores_a_valid_record(bundles, backend, tmp_path):
    out, res = tmp_path / "records.json", tmp_path / "res"
    proc = runner(bundles[backend], out)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    cli("import", out, "--bundle", bundles[backend], "--results-dir", res)
    stored = [json.loads(p.read_text()) for p in (res / "runs").glob("*.json")]
    assert len(stored) == 1
    rec = stored[0]
    validate(rec)
    assert rec == doc["records"][0]
    assert rec["status"] == "ok" and rec["verdict"] == "VALID" and rec["latency"]["count"] >= 5
    prov = rec["provenance"]
    assert prov["device"]["kind"] == "cpu" and prov["device"]["name"] and prov["device"]["machine"]["cores"] >= 1
    manifest = json.loads((bundles[backend] / "manifest.json").read_text())
    assert prov["bundle"]["manifest_sha256"] == doc["manifest_sha256"]
    assert prov["machine"] == manifest["host"]["machine"]  # the compiling host
    assert prov["runtime"]["tvm_compiler_loaded"] is False
    assert rec["compile"]["load_s"] > 0 and rec["compile"]["first_run_s"] > 0
    assert rec["scenario"]["name"] == manifest["cell"]["scenario"] and rec["batch"] == manifest["batch"]


@pytest.mark.parametrize("backend", ["tvm-llvm", "ort-cpu"])
def test_the_runner_loads_neither_torch_onnx_nor_the_tvm_compiler(bundles, backend, tmp_path):
    seen = probe(bundles[backend], tmp_path / "r.json")
    assert seen["code"] == 0
    assert not {"torch", "onnx", "onnxscript"} & set(seen["modules"])
    assert seen["compiler"] is False
    if backend == "tvm-llvm":
        assert seen["tvm_runtime"] and "tvm" in seen["modules"]
    else:
        assert "tvm" not in seen["modules"] and "onnxruntime" in seen["modules"]


def kit_and_numpy(root: Path):
    """The runtime kit for this Python in `root/kit`, and `root/deps`: a folder that holds numpy
    only (what a bare device brings of its own)."""
    from chipbench.runtime_kit import build_kit

    made = build_kit(root / "kit")
    deps = root / "deps"
    deps.mkdir()
    site = Path(np.__file__).resolve().parent.parent
    for name in ("numpy", "numpy.libs"):
        if (site / name).exists():
            (deps / name).symlink_to(site / name)
    return made, deps


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """The runtime kit, and an environment that sees nothing but it and numpy."""
    made, deps = kit_and_numpy(tmp_path_factory.mktemp("kit"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           "PYTHONPATH": f"{made.folder / 'python'}{os.pathsep}{deps}", "TVM_USE_RUNTIME_LIB": "1"}
    return made, env


def test_the_runtime_kit_is_small_and_carries_no_compiler(kit):
    from chipbench.runtime_kit import CARRY_LIMIT

    made, env = kit
    files = {p.relative_to(made.folder).as_posix() for p in made.folder.rglob("*") if p.is_file()}
    assert "python/tvm/lib/libtvm_runtime.so" in files and "python/tvm/lib/libtvm_runtime_cuda.so" in files
    assert not any("libtvm_compiler" in f or f.startswith("python/tvm/relax/") for f in files)
    assert made.total_bytes < CARRY_LIMIT
    assert json.loads((made.folder / "kit.json").read_text())["files"]["python/tvm/lib/libtvm_runtime.so"]["sha256"]
    # nothing but the kit and numpy on the path: torch and onnx are not there to import
    proc = subprocess.run([sys.executable, "-S", "-c", "import torch"], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr


def test_runner_on_the_runtime_kit_alone_measures_a_tvm_bundle(bundles, kit, tmp_path):
    made, env = kit
    out = tmp_path / "records.json"
    seen = probe(bundles["tvm-llvm"], out, python=(sys.executable, "-S"), env=env)
    assert seen["code"] == 0 and seen["tvm_runtime"] and not seen["compiler"]
    assert not {"torch", "onnx"} & set(seen["modules"])
    rec = json.loads(out.read_text())["records"][0]
    assert rec["verdict"] == "VALID"
    assert rec["provenance"]["runtime"]["versions"]["tvm"]
    assert Path(rec["provenance"]["runtime"]["versions"]["tvm_libraries"].split(",")[0]).name == "libtvm_runtime.so"
    # the kit's own script does the same
    proc = subprocess.run([str(made.folder / "run-bundle"), str(bundles["tvm-llvm"]), "--out", str(tmp_path / "r2.json")],
                          capture_output=True, text=True, cwd=tmp_path, env={**env, "PYTHON": f"{sys.executable} -S",
                                                                "PYTHONPATH": env["PYTHONPATH"].split(os.pathsep)[1]})
    assert proc.returncode == 0, proc.stderr
    res = tmp_path / "res"
    cli("import", out, "--bundle", bundles["tvm-llvm"], "--results-dir", res)
    assert len(list((res / "runs").glob("*.json"))) == 1


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def measured(bundles, tmp_path):
    """A private copy of the tvm-llvm bundle and the records the runner made from it."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundles["tvm-llvm"], copy)
    out = tmp_path / "records.json"
    assert runner(copy, out).returncode == 0
    return copy, out


@pytest.mark.parametrize("name", ["params.npz", "model.so", "reference.npz"])
def test_a_tampered_bundle_file_is_refused_naming_it(measured, name, tmp_path):
    bundle, records = measured
    _tamper(bundle / name)
    proc = cli("import", records, "--bundle", bundle, "--results-dir", tmp_path / "res", check=False)
    assert proc.returncode == 2
    assert f"{bundle / name}: sha256" in error_line(proc)
    assert not (tmp_path / "res" / "runs").exists() or not list((tmp_path / "res" / "runs").iterdir())
    proc = runner(bundle, tmp_path / "again.json")  # the runner refuses it too, before loading anything
    assert proc.returncode == 2 and name in error_line(proc)


def test_tampered_records_are_refused_naming_the_file(measured, tmp_path):
    bundle, records = measured
    doc = json.loads(records.read_text())
    doc["records"][0]["latency"]["median"] /= 2  # a better number than was measured
    records.write_text(json.dumps(doc))
    proc = cli("import", records, "--bundle", bundle, "--results-dir", tmp_path / "res", check=False)
    assert proc.returncode == 2
    assert f"{records}: records do not match their digest" in error_line(proc)


def test_records_of_another_bundle_or_an_edited_manifest_are_refused(measured, bundles, tmp_path):
    bundle, records = measured
    proc = cli("import", records, "--bundle", bundles["ort-cpu"], "--results-dir", tmp_path / "res", check=False)
    assert proc.returncode == 2 and "manifest.json: sha256" in error_line(proc)
    manifest = bundle / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"batch": 1', '"batch": 2', 1))
    proc = cli("import", records, "--bundle", bundle, "--results-dir", tmp_path / "res", check=False)
    assert proc.returncode == 2 and f"{manifest}: sha256" in error_line(proc)


def test_a_record_that_is_not_the_bundles_is_refused_even_with_a_fresh_digest(measured, tmp_path):
    from chipbench.bundle_format import records_document

    bundle, records = measured
    doc = json.loads(records.read_text())
    rec = doc["records"][0]
    rec["backend"]["target"] = "llvm -mcpu=cortex-a72"  # claims another compilation
    records.write_text(json.dumps(records_document(doc["manifest_sha256"], [rec])))
    proc = cli("import", records, "--bundle", bundle, "--results-dir", tmp_path / "res", check=False)
    assert proc.returncode == 2 and "record 1: backend is not the bundle's" in error_line(proc)


def test_bad_bundle_requests_fail_with_one_line(tmp_path, bundles):
    proc = cli("bundle", "-w", "tiny-mlp", "-b", "no-such-backend", "--out", tmp_path / "x", check=False)
    assert proc.returncode == 2 and "no-such-backend" in error_line(proc)
    from chipbench.bundle import BundleRefused, make_bundle
    from chipbench.suite import Cell

    with pytest.raises(BundleRefused, match="null cannot write a bundle") as refused:
        make_bundle(Cell("tiny-mlp", "null"), tmp_path / "y")
    assert refused.value.code == 1 and not (tmp_path / "y").exists()
    with pytest.raises(BundleRefused, match="not an empty folder") as refused:
        make_bundle(Cell("tiny-mlp", "tvm-llvm"), bundles["ort-cpu"])
    assert refused.value.code == 2
    proc = runner(bundles["ort-cpu"], tmp_path / "r.json", "--scenario", "single-stream")
    assert proc.returncode == 2 and "batch 4" in error_line(proc)
    proc = runner(tmp_path, tmp_path / "r.json")
    assert proc.returncode == 2 and "manifest.json: no such file" in error_line(proc)


def test_a_bundle_for_a_device_this_machine_lacks_costs_a_failed_record(bundles, tmp_path):
    """A CUDA bundle on a machine without one (here: the CPU bundle relabelled, as a GPU box's
    bundle would arrive on this CPU-only one): exit 1, a failed record with a one-line reason."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundles["tvm-llvm"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["runtime"]["device"] = manifest["device"]["kind"] = "cuda"
    manifest["device"]["id"] = "cuda:0"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    proc = runner(copy, tmp_path / "r.json")
    assert proc.returncode == 1, proc.stderr
    (rec,) = json.loads((tmp_path / "r.json").read_text())["records"]
    validate(rec)
    assert rec["status"] == "failed" and rec["reason"].startswith("load: ") and "\n" not in rec["reason"]
    assert rec["provenance"]["device"]["kind"] == "cuda"


def test_a_backend_whose_device_is_elsewhere_bundles_through_compile_for_bundle(monkeypatch, tmp_path):
    """A GPU backend on a CPU host: unavailable here, but `can_compile` and `compile_for_bundle`
    (a cross-compilation whose export works) make its bundle; the device runs it."""
    from chipbench.backends import base
    from chipbench.backends.ort import export_model
    from chipbench.bundle import make_bundle
    from chipbench.scenarios import MeasureSettings
    from chipbench.suite import Cell

    class CrossDouble:
        description = "compiles here for a device that is elsewhere"
        precisions = ("fp32",)
        devices = ("cpu",)

        def available(self):
            return False, "its device is not on this machine"

        def can_compile(self):
            return True, ""

        def versions(self):
            return {}

        def compile(self, source, spec):
            raise AssertionError("the bundle must not need the device")

        def compile_for_bundle(self, source, spec):
            def no_device(inputs):
                raise RuntimeError("no device here")

            return base.Compiled(run=no_device, compile_s=0.0, target="elsewhere", pipeline="cross",
                                 export=lambda folder: export_model(source.onnx_path, folder, None))

    base._load_all()
    monkeypatch.setitem(base._REGISTRY, "cross-double", CrossDouble)
    settings = MeasureSettings(min_duration_s=0.05, min_count=5)
    made = make_bundle(Cell("tiny-mlp", "cross-double", settings=settings), tmp_path / "b")
    assert made.manifest["backend"]["target"] == "elsewhere"
    proc = runner(tmp_path / "b", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["records"][0]["verdict"] == "VALID"


def test_arrays_and_weights_keep_their_shapes_scalars_included(tmp_path):
    """0-d arrays (a QDQ model's scales and zero points) travel as 0-d; names survive any text."""
    from chipbench.backends.tvm_export import export_relax
    from chipbench.bundle_format import load_arrays, save_arrays

    arrays = {"in:0/with slash": np.arange(6, dtype=np.float32).reshape(2, 3), "scale": np.float32(0.5) * np.ones(())}
    names = save_arrays(tmp_path / "a.npz", arrays)
    back = load_arrays(tmp_path / "a.npz", names)
    assert list(back) == list(arrays) and back["scale"].shape == () and np.array_equal(back["in:0/with slash"],
                                                                                        arrays["in:0/with slash"])

    class Exe:  # what export_relax asks of a Relax executable
        def export_library(self, path):
            Path(path).write_bytes(b"\x7fELF")

    weights = [np.ones((), np.int8), np.zeros((4, 2), np.float32).T]  # a scalar and a non-contiguous view
    entries = export_relax(Exe(), weights, tmp_path / "b", device_kind="cuda")
    assert entries["device"] == "cuda" and entries["files"] == ["model.so", "params.npz"]
    assert [s["shape"] for s in entries["param_specs"]] == [[], [2, 4]]
    with np.load(tmp_path / "b" / "params.npz", allow_pickle=False) as data:
        assert data["p0"].shape == () and data["p1"].shape == (2, 4)


def test_your_own_onnx_model_bundles_and_runs(tmp_path):
    from onnx_models import matmul_relu

    model = matmul_relu(tmp_path / "m.onnx")
    cli("bundle", "--model", model, "--input", "x:2x8", "-b", "ort-cpu", "--out", tmp_path / "b", *FAST)
    proc = runner(tmp_path / "b", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((tmp_path / "r.json").read_text())["records"][0]
    assert rec["verdict"] == "VALID" and rec["workload"]["kind"] == "model"
