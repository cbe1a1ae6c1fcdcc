"""ONNX Runtime on the CPU execution provider: the vendor-runtime baseline."""

from __future__ import annotations

import importlib.util
import time

from pathlib import Path

from chipbench.backends.base import (Arrays, Compiled, CompileSpec, ModelSource, Unsupported, converts, register,
                                     require_precision)
from chipbench.backends.ort_runtime import session_options
from chipbench.errors import one_line
from chipbench.machine import usable_cores


@register("ort-cpu")
class OrtCpu:
    description = "ONNX Runtime, CPU execution provider"
    precisions = ("fp32", "fp16", "int8")
    devices = ("cpu",)

    def available(self) -> tuple[bool, str]:
        if importlib.util.find_spec("onnxruntime") is None:
            return False, "onnxruntime is not installed"
        return True, ""

    def versions(self) -> dict[str, str]:
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__}

    def compile(self, source: ModelSource, spec: CompileSpec) -> Compiled:
        import onnxruntime as ort

        require_precision(self, spec, source)
        start = time.perf_counter()
        model_path, quantization = _model_for(source, spec)
        convert_s = time.perf_counter() - start
        threads = spec.threads or usable_cores()
        opts = session_options(threads)
        start = time.perf_counter()
        try:
            session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            if "NOT_IMPLEMENTED" in str(exc):  # no CPU kernel for an op at this precision
                raise Unsupported(f"ort-cpu {spec.precision}: {one_line(exc)}") from None
            raise
        compile_s = time.perf_counter() - start + convert_s
        names = [o.name for o in session.get_outputs()]

        def run(inputs: Arrays) -> Arrays:
            return dict(zip(names, session.run(names, inputs)))

        def profile(inputs: Arrays, runs: int):
            from chipbench.backends.ort_profile import profile_ort

            return profile_ort(model_path, inputs, runs=runs, threads=threads)

        return Compiled(
            run=run,
            profile=profile,
            compile_s=compile_s,
            artifact_bytes=model_path.stat().st_size,
            target="cpu",
            pipeline="ORT_ENABLE_ALL" + (f", int8 quantization ({quantization['executed']})" if quantization
                                         else ", fp16 weights" if converts(spec, source) and spec.precision == "fp16"
                                         else ""),
            quantization=quantization,
            # read back from the session: the intra-op threads it actually runs with
            details={"threads": session.get_session_options().intra_op_num_threads or threads,
                     "providers": session.get_providers()},
            export=lambda folder: export_model(model_path, Path(folder), spec.threads),
        )


def _model_for(source: ModelSource, spec: CompileSpec) -> tuple[Path, dict | None]:
    """The ONNX file to run at the spec's precision (converted variants are cached) and, for
    int8, the record's `quantization` field: the fastest configuration passing the cell's
    accuracy gate on this machine, QDQ or QOperator (chipbench.int8_search)."""
    from chipbench import quantize

    onnx_path = source.onnx_path
    if not converts(spec, source):
        return onnx_path, None
    if spec.precision == "int8":
        from chipbench.int8_search import int8_for

        return int8_for(onnx_path, spec, "ort-cpu", qdq_only=False)
    if spec.precision == "fp16":
        return quantize.fp16_model(onnx_path), None
    return onnx_path, None


def export_model(model_path: Path, folder: Path, threads: int | None) -> dict:
    """A bundle's backend files: the ONNX file at the cell's precision as `model.onnx` (bytes
    unchanged), or, when its weights live in external data files, re-saved with them in one
    `model.onnx.data` beside it. `threads` None means every core of the machine that runs it.
    Returns the manifest's runtime entries (see ort_runtime.load)."""
    import shutil

    import onnx
    from onnx.external_data_helper import uses_external_data

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "model.onnx"
    files = ["model.onnx"]
    from chipbench.modelfile import all_tensors

    if any(uses_external_data(t) for t in all_tensors(onnx.load(str(model_path), load_external_data=False))):
        model = onnx.load(str(model_path))  # reads the data from beside the model (checked by byo.py)
        onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data")
        files.append("model.onnx.data")
    else:
        shutil.copyfile(model_path, target)
    return {"module": "chipbench.backends.ort_runtime", "device": "cpu", "model": "model.onnx", "files": files,
            "threads": threads, "optimization": "ORT_ENABLE_ALL", "providers": ["CPUExecutionProvider"]}
