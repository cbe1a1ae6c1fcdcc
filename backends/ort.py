"""ONNX Runtime on the CPU execution provider: the vendor-runtime baseline."""

from __future__ import annotations

import importlib.util
import os
import time

from chipbench.backends.base import Arrays, Compiled, CompileSpec, ModelSource, Unsupported, register


def default_threads() -> int:
    return len(os.sched_getaffinity(0))


@register("ort-cpu")
class OrtCpu:
    description = "ONNX Runtime, CPU execution provider"
    precisions = ("fp32",)

    def available(self) -> tuple[bool, str]:
        if importlib.util.find_spec("onnxruntime") is None:
            return False, "onnxruntime is not installed"
        return True, ""

    def versions(self) -> dict[str, str]:
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__}

    def compile(self, source: ModelSource, spec: CompileSpec) -> Compiled:
        import onnxruntime as ort

        if spec.precision not in self.precisions:
            raise Unsupported(f"ort-cpu runs {', '.join(self.precisions)}, not {spec.precision}")
        threads = spec.threads or default_threads()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        start = time.perf_counter()
        session = ort.InferenceSession(str(source.onnx_path), opts, providers=["CPUExecutionProvider"])
        compile_s = time.perf_counter() - start
        names = [o.name for o in session.get_outputs()]

        def run(inputs: Arrays) -> Arrays:
            return dict(zip(names, session.run(names, inputs)))

        return Compiled(
            run=run,
            compile_s=compile_s,
            artifact_bytes=source.onnx_bytes(),
            target="cpu",
            pipeline="ORT_ENABLE_ALL",
            details={"threads": threads, "providers": session.get_providers()},
        )
