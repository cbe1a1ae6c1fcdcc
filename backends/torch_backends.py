"""PyTorch eager mode and torch.compile (inductor), on the torch model itself: on the CPU
(`torch-eager`, `torch-compile`) and on a CUDA GPU (`torch-eager-cuda`, `torch-compile-cuda`).

On a GPU the model and its inputs live on `cuda:N`; `run` copies the inputs up, runs, waits for
the device and hands back host arrays. The device timer (`Compiled.timer`) copies the inputs up
once and times each query with CUDA events, so transfers stay outside the timing.

TF32 is off for fp32 on the GPU: fp32 cells compute in IEEE fp32, as the FP32 reference does
(TF32 rounds matmul and convolution inputs to a 10-bit mantissa and can change speed by 2x and
more). The settings are made with the legacy switches (`allow_tf32`), which keep torch's
legacy and new (`fp32_precision`) TF32 states consistent, and recorded in `details`.
cuDNN's autotuner (`cudnn.benchmark`) is on: every cell has fixed shapes and the untimed
accuracy run before timing is where it chooses its algorithms.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
import warnings
from typing import Any

from chipbench.backends.base import Arrays, Compiled, CompileSpec, ModelSource, Unsupported, register, require_precision
from chipbench.errors import first_line
from chipbench.machine import usable_cores


_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class _TorchBase:
    precisions = ("fp32", "fp16", "bf16")
    devices = ("cpu",)
    runs_onnx = False  # the torch model itself: no ONNX operators to cover
    compiled_mode = False

    def available(self) -> tuple[bool, str]:
        if importlib.util.find_spec("torch") is None:
            return False, "torch is not installed"
        return True, ""

    def versions(self) -> dict[str, str]:
        import torch

        return {"torch": torch.__version__}

    # Where the model runs: the CPU here, a CUDA device in _CudaPlacement.
    def _place(self, spec: CompileSpec) -> tuple[Any, str, dict[str, Any]]:
        """(torch device, pipeline suffix, details) for the device the spec names."""
        import torch

        suffix = "" if spec.precision == "fp32" else f", {_DTYPES[spec.precision]} weights"
        return torch.device("cpu"), suffix, {}

    def _sync(self, device) -> None:
        """Wait until the device has finished the work queued so far (nothing to do on the CPU)."""

    def _extras(self, device, fn, names, cast) -> dict[str, Any]:
        """Optional Compiled capabilities (timer, device description) for this device."""
        return {}

    def compile(self, source: ModelSource, spec: CompileSpec) -> Compiled:
        import torch

        if source.build_torch is None:
            raise Unsupported(f"{self.name} needs the torch model; '{source.name}' is ONNX only")
        require_precision(self, spec, source)
        if spec.threads:
            torch.set_num_threads(spec.threads)
        elif torch.get_num_threads() > usable_cores():
            # torch starts a thread per physical core of the machine, whatever CPUs this process
            # may use: pinned to fewer (--pin), its threads would fight over them
            torch.set_num_threads(usable_cores())
        device, suffix, details = self._place(spec)
        dtype = getattr(torch, _DTYPES[spec.precision])
        model = source.build_torch().eval().to(device=device, dtype=dtype)
        start = time.perf_counter()
        dynamic = bool(spec.options.get("dynamic_shapes"))
        fn = self._prepare(model, dynamic)
        compile_s = time.perf_counter() - start
        names = source.input_names
        out_names = source.output_names

        def cast(t):  # weights and float inputs in the precision; ids stay integers
            return t.to(dtype) if t.is_floating_point() else t

        @torch.inference_mode()
        def run(inputs: Arrays) -> Arrays:
            outs = fn(*(cast(torch.from_numpy(inputs[n]).to(device)) for n in names))
            self._sync(device)
            return named_outputs(outs, out_names)

        if self.compiled_mode:
            # inductor compiles on the first call; count that as compile time, not run time
            start = time.perf_counter()
            if spec.example_inputs is None:
                raise Unsupported(f"{self.name} needs example inputs to compile ahead of timing")
            run(spec.example_inputs)
            compile_s += time.perf_counter() - start
        extras = self._extras(device, fn, names, cast)
        return Compiled(
            run=run,
            compile_s=compile_s,
            target=extras.pop("target", "cpu"),
            pipeline=self.pipeline + suffix + (", dynamic shapes" if dynamic and self.compiled_mode else ""),
            details={"threads": torch.get_num_threads(), **details},
            **extras,
        )


def _flatten(outs):
    for o in outs:
        if isinstance(o, (tuple, list)):
            yield from _flatten(o)
        else:
            yield o


def named_outputs(outs, names) -> Arrays:
    """A torch model's output (tensor or nested tuple, on any device) as host arrays keyed by
    output name; floating outputs come back as float32."""
    import torch

    if isinstance(outs, torch.Tensor):
        outs = (outs,)
    return {n: (o.float() if o.is_floating_point() else o).cpu().numpy() for n, o in zip(names, _flatten(outs))}


def set_tf32(torch, enabled: bool) -> None:
    """TF32 for fp32 matmuls (cuBLAS) and convolutions/RNNs (cuDNN), through the legacy
    switches: each sets torch's legacy and new TF32 states together, so neither API's getter
    later finds them mixed (torch >= 2.9 raises RuntimeError on a mix)."""
    with warnings.catch_warnings():  # torch >= 2.9 warns that these switches will be deprecated
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def cuda_settings(torch) -> dict[str, Any]:
    """The torch settings that change what a CUDA cell computes and how fast: TF32 (both APIs),
    cuDNN (enabled, benchmark, deterministic, version) and the CUDA runtime torch was built for.
    A setting torch refuses to read is recorded as the error it raised."""

    def read(getter):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return getter()
        except (RuntimeError, AttributeError) as exc:
            return f"unreadable: {first_line(exc, 120)}"

    return {
        "tf32": {
            "cuda.matmul.allow_tf32": read(lambda: torch.backends.cuda.matmul.allow_tf32),
            "cudnn.allow_tf32": read(lambda: torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": read(torch.get_float32_matmul_precision),
            "cuda.matmul.fp32_precision": read(lambda: torch.backends.cuda.matmul.fp32_precision),
            "cudnn.conv.fp32_precision": read(lambda: torch.backends.cudnn.conv.fp32_precision),
        },
        "cudnn": {
            "enabled": read(lambda: torch.backends.cudnn.enabled),
            "benchmark": read(lambda: torch.backends.cudnn.benchmark),
            "deterministic": read(lambda: torch.backends.cudnn.deterministic),
            "version": read(torch.backends.cudnn.version),
        },
        "cuda_runtime": torch.version.cuda,
    }


def cuda_event_timer(torch, device, fn, names, cast):
    """A `Compiled.timer` for a CUDA device: `timer(inputs, n)` copies `inputs` to the device
    (once for the same inputs object, outside the timing), then runs `n` queries one at a time,
    each between two CUDA events on the device's current stream and waited for before the
    next, and returns each query's seconds as the device measured them (list of n floats).
    Outputs stay on the device."""
    held: dict[str, Any] = {}

    @torch.inference_mode()
    def timer(inputs: Arrays, n: int) -> list[float]:
        if held.get("inputs") is not inputs:
            held["inputs"] = inputs
            held["args"] = [cast(torch.from_numpy(inputs[k]).to(device)) for k in names]
            torch.cuda.synchronize(device)
        args = held["args"]
        stream = torch.cuda.current_stream(device)
        seconds = []
        for _ in range(n):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            fn(*args)
            end.record(stream)
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3)  # elapsed_time is in milliseconds
        return seconds

    return timer


class _CudaPlacement:
    """The CUDA side of a torch backend: where the model goes, how the host waits for it,
    how queries are timed and how the device is described."""

    devices = ("cuda",)

    def available(self) -> tuple[bool, str]:
        from chipbench.gpu import torch_cuda_problem

        problem = torch_cuda_problem()
        return (False, problem) if problem else (True, "")

    def versions(self) -> dict[str, str]:
        import torch

        out = {"torch": torch.__version__, "cuda": str(torch.version.cuda)}
        try:
            out["cudnn"] = str(torch.backends.cudnn.version())
        except RuntimeError:
            pass
        return out

    def _place(self, spec: CompileSpec):
        import torch

        if spec.device.kind != "cuda":
            raise Unsupported(f"{self.name} runs on cuda, not {spec.device}")
        if not torch.cuda.is_available():
            raise Unsupported(f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot reach a CUDA device")
        count = torch.cuda.device_count()
        if spec.device.index >= count:
            raise Unsupported(f"cuda:{spec.device.index} does not exist ({count} CUDA device(s) visible)")
        device = torch.device("cuda", spec.device.index)
        torch.cuda.set_device(device)
        set_tf32(torch, False)
        torch.backends.cudnn.benchmark = True
        suffix = ", fp32 (TF32 off)" if spec.precision == "fp32" else f", {_DTYPES[spec.precision]} weights"
        details = {"device": str(device), **cuda_settings(torch)}
        return device, suffix + ", cuDNN benchmark", details

    def _sync(self, device) -> None:
        import torch

        torch.cuda.synchronize(device)

    def _extras(self, device, fn, names, cast) -> dict[str, Any]:
        import torch

        from chipbench.gpu import describe

        major, minor = torch.cuda.get_device_capability(device)
        return {"target": f"cuda sm_{major}{minor}", "device": describe(device.index, use_torch=True),
                "timer": cuda_event_timer(torch, device, fn, names, cast)}


def _has_c_compiler() -> bool:
    return bool(shutil.which("cc") or shutil.which("gcc") or shutil.which("g++"))


@register("torch-eager")
class TorchEager(_TorchBase):
    description = "PyTorch eager mode, CPU"
    pipeline = "eager"

    def _prepare(self, model, dynamic: bool = False):
        return model


@register("torch-compile")
class TorchCompile(_TorchBase):
    description = "torch.compile with the inductor backend, CPU"
    pipeline = "inductor"
    compiled_mode = True

    def available(self) -> tuple[bool, str]:
        ok, reason = super().available()
        if ok and not _has_c_compiler():
            return False, "inductor needs a C++ compiler (none on PATH)"
        return ok, reason

    def _prepare(self, model, dynamic: bool = False):
        """Static shapes (one graph per shape), or with `dynamic` (CompileSpec option
        "dynamic_shapes": sizes vary between calls, as a growing KV cache does) symbolic sizes,
        so one compiled graph serves every length instead of recompiling per length."""
        import torch

        return torch.compile(model, backend="inductor", dynamic=dynamic)


@register("torch-eager-cuda")
class TorchEagerCuda(_CudaPlacement, TorchEager):
    description = "PyTorch eager mode on a CUDA GPU (CUDA-event timing, fp32 without TF32)"


@register("torch-compile-cuda")
class TorchCompileCuda(_CudaPlacement, TorchCompile):
    description = "torch.compile (inductor, Triton kernels) on a CUDA GPU (CUDA-event timing, fp32 without TF32)"

    def available(self) -> tuple[bool, str]:
        ok, reason = _CudaPlacement.available(self)
        if not ok:
            return ok, reason
        if importlib.util.find_spec("triton") is None:
            return False, "inductor on CUDA needs Triton, which is not installed"
        if not _has_c_compiler():
            return False, "inductor needs a C compiler (none on PATH)"
        return True, ""

    def versions(self) -> dict[str, str]:
        out = super().versions()
        try:
            from importlib.metadata import version

            out["triton"] = version("triton")
        except Exception:
            pass
        return out
