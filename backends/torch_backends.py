"""PyTorch on the CPU: eager mode and torch.compile (inductor), both on the torch model itself."""

from __future__ import annotations

import importlib.util
import shutil
import time

from chipbench.backends.base import Arrays, Compiled, CompileSpec, ModelSource, Unsupported, register, require_precision


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

    def compile(self, source: ModelSource, spec: CompileSpec) -> Compiled:
        import torch

        if source.build_torch is None:
            raise Unsupported(f"{self.name} needs the torch model; '{source.name}' is ONNX only")
        require_precision(self, spec, source)
        if spec.threads:
            torch.set_num_threads(spec.threads)
        dtype = getattr(torch, _DTYPES[spec.precision])
        model = source.build_torch().eval().to(dtype)
        start = time.perf_counter()
        fn = self._prepare(model)
        compile_s = time.perf_counter() - start
        names = source.input_names
        out_names = source.output_names

        def cast(t):  # weights and float inputs in the precision; ids stay integers
            return t.to(dtype) if t.is_floating_point() else t

        @torch.inference_mode()
        def run(inputs: Arrays) -> Arrays:
            return named_outputs(fn(*(cast(torch.from_numpy(inputs[n])) for n in names)), out_names)

        if self.compiled_mode:
            # inductor compiles on the first call; count that as compile time, not run time
            start = time.perf_counter()
            if spec.example_inputs is None:
                raise Unsupported("torch-compile needs example inputs to compile ahead of timing")
            run(spec.example_inputs)
            compile_s += time.perf_counter() - start
        return Compiled(
            run=run,
            compile_s=compile_s,
            target="cpu",
            pipeline=self.pipeline + ("" if spec.precision == "fp32" else f", {_DTYPES[spec.precision]} weights"),
            details={"threads": torch.get_num_threads()},
        )


def _flatten(outs):
    for o in outs:
        if isinstance(o, (tuple, list)):
            yield from _flatten(o)
        else:
            yield o


def named_outputs(outs, names) -> Arrays:
    """A torch model's output (tensor or nested tuple) as host arrays keyed by output name."""
    import torch

    if isinstance(outs, torch.Tensor):
        outs = (outs,)
    return {n: o.float().numpy() if o.is_floating_point() else o.numpy() for n, o in zip(names, _flatten(outs))}


@register("torch-eager")
class TorchEager(_TorchBase):
    description = "PyTorch eager mode, CPU"
    pipeline = "eager"

    def _prepare(self, model):
        return model


@register("torch-compile")
class TorchCompile(_TorchBase):
    description = "torch.compile with the inductor backend, CPU"
    pipeline = "inductor"
    compiled_mode = True

    def available(self) -> tuple[bool, str]:
        ok, reason = super().available()
        if ok and not (shutil.which("cc") or shutil.which("gcc") or shutil.which("g++")):
            return False, "inductor needs a C++ compiler (none on PATH)"
        return ok, reason

    def _prepare(self, model):
        import torch

        return torch.compile(model, backend="inductor", dynamic=False)
