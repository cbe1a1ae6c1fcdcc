"""PyTorch on CUDA, GPU ceilings and GPU description.

Here (no GPU) the CUDA backends must say "no CUDA device" and skip; the GPU logic is tested
with fakes. Tests marked `gpu` run the real thing on a CUDA machine (`pytest -m gpu`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from chipbench import gpu
from chipbench.backends.base import CompileSpec, get_backend
from chipbench.gpu_probe import build_gpu_profile, datasheet, probe_gpus, summary_lines
from chipbench.probe import DeviceProfile, load_profile_for, save_profile
from chipbench.record import validate
from chipbench.roofline import Ceilings, place
from chipbench.stats import LatencyStats

HAS_GPU = gpu.torch_cuda_problem() is None
no_gpu_here = pytest.mark.skipif(gpu.cuda_present(), reason="this machine has an NVIDIA device")
CUDA_BACKENDS = ("torch-eager-cuda", "torch-compile-cuda")

H200 = {"name": "NVIDIA H200", "source": "nvml+torch", "compute_capability": "9.0", "multiprocessors": 132,
        "memory_bytes": 150_754_820_096, "sm_clock_max_mhz": 1980, "driver": "580.159.03"}


# --- here: no CUDA device ---------------------------------------------------------------------

@no_gpu_here
@pytest.mark.parametrize("name", CUDA_BACKENDS)
def test_cuda_backends_are_unavailable_without_a_device(name):
    backend = get_backend(name)
    assert backend.available() == (False, "no CUDA device")
    assert backend.devices == ("cuda",) and backend.precisions == ("fp32", "fp16", "bf16")


@no_gpu_here
def test_run_on_a_cuda_backend_without_a_device_is_a_skipped_record(tmp_path):
    res = tmp_path / "res"
    proc = subprocess.run([sys.executable, "-m", "chipbench.cli", "run", "-w", "tiny-mlp", "-b", "torch-eager-cuda",
                           "--min-duration", "0.05", "--min-count", "5", "--results-dir", str(res), "--no-report"],
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr  # skipped is not failed
    (path,) = (res / "runs").glob("*.json")
    rec = json.loads(path.read_text())
    validate(rec)
    assert rec["status"] == "skipped"
    assert rec["reason"] == "torch-eager-cuda unavailable: no CUDA device"
    assert rec["energy"] is None


def test_device_presence_is_read_from_the_driver_files(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "nvml_device_count", lambda: 0)
    proc, dev = tmp_path / "gpus", tmp_path / "dev"
    dev.mkdir()
    (dev / "nvidiactl").touch()  # the control node alone is not a GPU
    assert not gpu.cuda_present(proc, dev)
    (dev / "nvidia0").touch()
    assert gpu.cuda_present(proc, dev)
    (dev / "nvidia0").unlink()
    (proc / "0000:01:00.0").mkdir(parents=True)
    assert gpu.cuda_present(proc, dev)


def test_torch_build_is_read_without_importing_torch():
    code = ("import sys; from chipbench.gpu import torch_build; v, c = torch_build(); "
            "print(v, c, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    import torch

    assert out[0] == torch.__version__ and out[1] == str(torch.version.cuda) and out[2] == "False"


def test_cuda_problem_names_the_missing_piece(monkeypatch):
    monkeypatch.setattr(gpu, "cuda_present", lambda: False)
    assert gpu.torch_cuda_problem() == "no CUDA device"
    monkeypatch.setattr(gpu, "cuda_present", lambda: True)
    monkeypatch.setattr(gpu, "torch_build", lambda: ("2.13.0+cpu", None))
    assert "built without CUDA" in gpu.torch_cuda_problem()
    monkeypatch.setattr(gpu, "torch_build", lambda: (None, None))
    assert gpu.torch_cuda_problem() == "torch is not installed"
    monkeypatch.setattr(gpu, "torch_build", lambda: ("2.11.0+cu130", "13.0"))
    assert gpu.torch_cuda_problem() is None


class FakeNvml:
    NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2

    def __init__(self):
        self.devices = [{"name": "NVIDIA H100 PCIe", "uuid": "GPU-aaa"}, {"name": "NVIDIA H200", "uuid": "GPU-bbb"}]

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.devices[i]

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return next(d for d in self.devices if d["uuid"] == uuid)

    def nvmlDeviceGetName(self, h):
        return h["name"].encode()  # old pynvml returns bytes

    def nvmlDeviceGetUUID(self, h):
        return h["uuid"]

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=150_754_820_096)

    def nvmlSystemGetDriverVersion(self):
        return "580.159.03"

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return (9, 0)

    def nvmlDeviceGetClockInfo(self, h, kind):
        return 345 if kind == 1 else 3201

    def nvmlDeviceGetMaxClockInfo(self, h, kind):
        return 1980 if kind == 1 else 3201

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        raise RuntimeError("Not Supported")


def test_nvml_description_follows_cuda_visible_devices(monkeypatch):
    nvml = FakeNvml()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    info = gpu.describe_nvml(nvml, 0)
    assert info["name"] == "NVIDIA H100 PCIe" and info["nvml_match"] == "index"
    assert info["memory_gib"] == 140.4 and info["compute_capability"] == "9.0"
    assert info["sm_clock_max_mhz"] == 1980 and info["memory_clock_mhz"] == 3201
    assert "power_limit_w" not in info  # unsupported fields are left out, not invented
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbb")
    assert gpu.describe_nvml(nvml, 0)["name"] == "NVIDIA H200"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert gpu.describe_nvml(nvml, 1)["name"] == "NVIDIA H100 PCIe"
    with pytest.raises(IndexError):
        gpu.describe_nvml(nvml, 2)


@no_gpu_here
def test_describe_says_why_it_cannot():
    with pytest.raises(RuntimeError, match="cannot describe cuda:0"):
        gpu.describe(0, use_torch=False)


# --- GPU ceilings -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, model, bf16_tflops, gbps", [
    ("NVIDIA H200", "H200 SXM", 989.5, 4800.0),
    ("NVIDIA H200 NVL", "H200 NVL", 835.5, 4800.0),
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.5, 3350.0),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.5, 2000.0),
    ("NVIDIA H100 NVL", "H100 NVL", 835.5, 3900.0),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB", 312.0, 2039.0),
])
def test_datasheet_peaks_are_dense(name, model, bf16_tflops, gbps):
    sheet = datasheet(name)
    assert sheet.model == model and sheet.tflops["bf16"] == bf16_tflops and sheet.bandwidth_gbps == gbps
    assert sheet.tflops["fp16"] == sheet.tflops["bf16"] and sheet.tflops["tf32"] == pytest.approx(sheet.tflops["bf16"] / 2, rel=0.01)
    assert "datasheet" in sheet.source


def test_unknown_gpus_have_no_datasheet():
    assert datasheet("NVIDIA GH200 480GB") is None  # not an H200: no borrowed figures
    assert datasheet("Some Future GPU") is None


def gpu_profile(peaks=None, name="NVIDIA H200"):
    peaks = peaks or {"fp32": 51_000.0, "tf32": 370_000.0, "bf16": 760_000.0, "fp16": 750_000.0, "fp8": 1_300_000.0}
    return build_gpu_profile({**H200, "name": name}, peaks, 4_300.0, {"int8": "RuntimeError: no kernel"},
                             {"gemm_n": 8192}, quick=False)


def test_gpu_profile_structure_and_key(tmp_path):
    profile = gpu_profile()
    assert profile.machine.kind == "cuda" and profile.key == "cuda-nvidia-h200"
    assert profile.machine.cores == 132 and profile.machine.arch == "sm_90" and profile.machine.mhz == 1980
    assert profile.theoretical_gflops["bf16"] == pytest.approx(989_500.0)
    assert profile.details["theoretical_bandwidth_gbps"] == 4800.0
    assert profile.details["skipped"] == {"int8": "RuntimeError: no kernel"}
    assert "H200 SXM" in profile.assumptions
    lines = summary_lines(profile)
    assert "NVIDIA H200 peak bf16: 760.0 TFLOP/s (77 % of datasheet 990)" in lines
    assert "NVIDIA H200 copy bandwidth: 4300 GB/s (read + write) (90 % of datasheet 4800)" in lines
    # saved beside the host CPU's profile, never over it, and found by a record's device
    path = save_profile(profile, tmp_path)
    assert path.name == "cuda-nvidia-h200.json"
    assert DeviceProfile.from_dict(json.loads(path.read_text())) == profile
    assert load_profile_for(tmp_path, {"kind": "cuda", "id": "cuda:0", "name": "NVIDIA H200"}) == profile
    assert load_profile_for(tmp_path, {"kind": "cuda", "id": "cuda:0", "name": "NVIDIA H100 PCIe"}) is None
    assert load_profile_for(tmp_path, {"kind": "cpu", "id": "cpu"}) is None  # no CPU profile saved here


def test_unknown_gpu_profile_has_measurements_only():
    profile = gpu_profile(name="Some Future GPU")
    assert profile.theoretical_gflops == {} and "no theoretical peaks" in profile.assumptions
    assert profile.details["theoretical_bandwidth_gbps"] is None


def test_a_gpu_record_is_placed_on_the_gpu_roofline(tmp_path):
    from chipbench.record import RunRecord
    from chipbench.report import gather_extras

    save_profile(gpu_profile(), tmp_path)
    rec = RunRecord(workload={"name": "defect-cnn", "scenario": "", "params": {}},
                    backend={"name": "torch-eager-cuda", "versions": {}}, precision="fp32", batch=32,
                    scenario={"name": "offline", "settings": {}}, status="ok",
                    latency=LatencyStats.from_samples([2e-3] * 5), work={"flops": 400_000_000_000, "bytes": 2_000_000_000},
                    provenance={"device": {"kind": "cuda", "id": "cuda:0", "name": "NVIDIA H200"}})
    extras = gather_extras([rec], tmp_path)
    point = extras.point_of(rec)
    expected = place(Ceilings(51_000.0, 4_300.0), "x", 4e11, 2e9, 2e-3)
    assert point.pct_of_roofline == pytest.approx(expected.pct_of_roofline) and point.bound == "compute"
    assert "roofline-cuda-nvidia-h200" in extras.images and extras.images["roofline-cuda-nvidia-h200"].exists()


@no_gpu_here
def test_probe_without_a_gpu_does_nothing(tmp_path):
    said = []
    assert probe_gpus(tmp_path, quick=True, say=said.append, note=said.append) == []
    assert said == [] and not (tmp_path / "device").exists()


def test_probe_gpus_saves_one_profile_per_gpu_model(tmp_path, monkeypatch):
    import torch

    from chipbench import gpu_probe

    monkeypatch.setattr(gpu, "cuda_present", lambda: True)
    monkeypatch.setattr(gpu, "torch_cuda_problem", lambda: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "NVIDIA H200")
    measured = []
    monkeypatch.setattr(gpu_probe, "measure_gpu_ceilings", lambda i, quick: measured.append(i) or gpu_profile())
    said, noted = [], []
    paths = probe_gpus(tmp_path, quick=True, say=said.append, note=noted.append)
    assert measured == [0] and [p.name for p in paths] == ["cuda-nvidia-h200.json"]  # two H200s: one profile
    assert said[0].startswith("NVIDIA H200 peak fp32: 51.0 TFLOP/s")
    assert any(line.startswith("NVIDIA H200 int8: not measured") for line in said)
    assert probe_gpus(tmp_path, if_missing=True, say=said.append, note=noted.append) == []
    assert "already measured" in noted[-1] and measured == [0]
    monkeypatch.setattr(gpu, "torch_cuda_problem", lambda: "torch 2.13.0+cpu is built without CUDA (a CPU-only wheel)")
    assert probe_gpus(tmp_path, note=noted.append) == []
    assert noted[-1] == "GPU: not measured (torch 2.13.0+cpu is built without CUDA (a CPU-only wheel))"


# --- the CUDA backends' own logic, on the CPU with a fake torch.cuda --------------------------

class FakeCuda:
    """torch.cuda's timing surface on the CPU: events read a host clock when recorded."""

    def __init__(self):
        self.syncs = 0

    class Event:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self, stream=None):
            self.t = time.perf_counter()

        def synchronize(self):
            pass

        def elapsed_time(self, other):
            return (other.t - self.t) * 1e3

    def synchronize(self, device=None):
        self.syncs += 1

    def current_stream(self, device=None):
        return None

    def get_device_capability(self, device=None):
        return (9, 0)


def test_cuda_event_timer_copies_inputs_once_and_times_each_query():
    import torch

    from chipbench.backends.torch_backends import cuda_event_timer

    fake = SimpleNamespace(cuda=FakeCuda(), inference_mode=torch.inference_mode, from_numpy=torch.from_numpy)
    casts, calls = [], []

    def cast(t):
        casts.append(t)
        return t

    def fn(x):
        calls.append(x)
        return x * 2

    timer = cuda_event_timer(fake, torch.device("cpu"), fn, ("x",), cast)
    inputs = {"x": np.ones((2, 3), np.float32)}
    first = timer(inputs, 5)
    second = timer(inputs, 3)
    assert len(first) == 5 and len(second) == 3 and all(s >= 0 for s in first + second)
    assert len(casts) == 1 and len(calls) == 8  # uploaded once for the same inputs, 8 queries run
    timer({"x": np.zeros((2, 3), np.float32)}, 1)
    assert len(casts) == 2  # new inputs: uploaded again


def test_cuda_backend_wiring_with_a_fake_device(monkeypatch):
    """Everything of torch-eager-cuda but the device itself: the CPU stands in for cuda:0."""
    import torch

    from chipbench.backends import torch_backends as tb
    from chipbench.device import Device
    from chipbench.prepare import prepare_workload
    from chipbench.workloads.base import get_workload

    fake = FakeCuda()
    for attr in ("synchronize", "current_stream", "get_device_capability", "Event"):
        monkeypatch.setattr(torch.cuda, attr, getattr(fake, attr))
    monkeypatch.setattr(tb._CudaPlacement, "_place",
                        lambda self, spec: (torch.device("cpu"), ", fp32 (TF32 off), cuDNN benchmark",
                                            {"device": "cuda:0", **tb.cuda_settings(torch)}))
    monkeypatch.setattr(gpu, "describe", lambda index, use_torch=None: dict(H200))
    prepared = prepare_workload(get_workload("tiny-mlp"), 4, 0)
    compiled = get_backend("torch-eager-cuda").compile(
        prepared.source, CompileSpec(batch=4, device=Device("cuda"), example_inputs=prepared.inputs))
    assert compiled.target == "cuda sm_90" and compiled.pipeline == "eager, fp32 (TF32 off), cuDNN benchmark"
    assert compiled.device["name"] == "NVIDIA H200"
    assert set(compiled.details["tf32"]) >= {"cuda.matmul.allow_tf32", "cudnn.allow_tf32", "float32_matmul_precision"}
    out = compiled.run(prepared.inputs)
    np.testing.assert_allclose(out["output"], prepared.reference["output"], rtol=1e-5, atol=1e-6)
    assert fake.syncs >= 1  # run waits for the device before handing back host arrays
    samples = compiled.timer(prepared.inputs, 4)
    assert len(samples) == 4 and all(s > 0 for s in samples)


def test_probe_measurements_run_their_operators(monkeypatch):
    """The probe's matmuls and copy on the CPU, timed by the fake events: every precision's
    operator is called as the GPU probe calls it, and TF32 is off again afterwards."""
    import torch

    from chipbench.backends.torch_backends import cuda_settings
    from chipbench.gpu_probe import PRECISIONS, measure_copy, measure_matmul

    fake = FakeCuda()
    for attr in ("synchronize", "get_device_capability", "Event"):
        monkeypatch.setattr(torch.cuda, attr, getattr(fake, attr))
    cpu = torch.device("cpu")
    for precision in PRECISIONS:
        gflops, source = measure_matmul(torch, precision, 64, cpu, inner=1, repeats=1)
        assert gflops > 0 and source
    assert cuda_settings(torch)["tf32"]["cuda.matmul.allow_tf32"] is False
    assert measure_copy(torch, 1 << 20, cpu, inner=1, repeats=1) > 0
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(ValueError, match="8.9"):
        measure_matmul(torch, "fp8", 64, cpu, inner=1, repeats=1)


# --- on a CUDA GPU ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA device and torch with CUDA")
def test_cuda_cells_are_valid(backend, precision):
    from chipbench.cell import execute
    from chipbench.scenarios import MeasureSettings
    from chipbench.suite import Cell

    settings = MeasureSettings(warmup_count=3, min_count=20, min_duration_s=0.5, max_duration_s=20)
    rec = execute(Cell(workload="tiny-mlp", backend=backend, precision=precision, scenario="offline", batch=8,
                       settings=settings))
    if importlib.util.find_spec("jsonschema"):  # GPU images may lack it; the schema is checked on every CPU run
        validate(json.loads(rec.to_json()))
    assert rec.status == "ok" and rec.verdict == "VALID", rec.reason
    assert rec.provenance["device"]["kind"] == "cuda" and rec.provenance["device"]["name"]
    assert rec.backend["target"].startswith("cuda sm_")
    if precision == "fp32":
        assert "TF32 off" in rec.backend["pipeline"]
        assert rec.backend["details"]["tf32"]["cuda.matmul.allow_tf32"] is False
    assert rec.latency.count >= 20 and rec.latency.median > 0
    energy = rec.energy
    if energy is None:  # only where the GPU has neither NVML reading: the record says why
        assert any(n.startswith("energy not measured") for n in rec.notes)
    else:
        assert energy["joules"] > 0 and energy["avg_watts"] > 0 and energy["inferences"] == energy["queries"] * 8
        assert energy["joules_per_inference"] == pytest.approx(energy["joules"] / energy["inferences"])


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA device and torch with CUDA")
def test_cuda_timer_returns_n_positive_samples():
    from chipbench.device import Device
    from chipbench.prepare import prepare_workload
    from chipbench.workloads.base import get_workload

    prepared = prepare_workload(get_workload("tiny-mlp"), 4, 0)
    compiled = get_backend("torch-eager-cuda").compile(
        prepared.source, CompileSpec(batch=4, device=Device("cuda"), example_inputs=prepared.inputs))
    samples = compiled.timer(prepared.inputs, 25)
    assert len(samples) == 25 and all(s > 0 for s in samples)
    assert compiled.device["name"] and compiled.device["memory_bytes"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA device and torch with CUDA")
def test_gpu_probe_measures_plausible_ceilings(tmp_path):
    from chipbench.gpu_probe import measure_gpu_ceilings

    profile = measure_gpu_ceilings(0, quick=True)
    assert profile.machine.kind == "cuda" and profile.peak("fp32") > 0 and profile.bandwidth_gbps > 0
    assert profile.peak("bf16") > profile.peak("fp32")  # tensor cores beat plain fp32 on any CUDA GPU with bf16
    for precision, gflops in profile.peak_gflops.items():
        theory = profile.theoretical_gflops.get(precision)
        if theory:  # measured above the datasheet would mean a wrong FLOP count or timing
            assert gflops < 1.1 * theory, precision
    sheet = profile.details["theoretical_bandwidth_gbps"]
    if sheet:
        assert profile.bandwidth_gbps < 1.1 * sheet
    save_profile(profile, tmp_path)
    assert load_profile_for(tmp_path, {"kind": "cuda", "name": profile.machine.cpu}) == profile


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA device and torch with CUDA")
def test_energy_is_measured_on_the_gpu():
    import torch

    from chipbench.energy import meter_for

    meter = meter_for({"kind": "cuda", "id": "cuda:0"})
    a = torch.randn(4096, 4096, device="cuda")

    def timer(n):
        out = []
        for _ in range(n):
            t = time.perf_counter()
            a @ a
            torch.cuda.synchronize()
            out.append(time.perf_counter() - t)
        return out

    with meter:
        counted = meter.timer(timer)
        end = time.perf_counter() + 1.0
        while time.perf_counter() < end:
            counted(10)
    energy = meter.result(batch=1)
    assert energy is not None, meter.note
    assert energy["joules"] > 0 and energy["avg_watts"] > 0 and energy["samples"] >= 2
    assert energy["method"].startswith("nvml")
