"""OpenVINO on the CPU plugin: Intel's runtime for its CPUs, GPUs and NPUs (it runs on AMD CPUs too).

It reads the same ONNX file as `ort-cpu`; int8 runs the best QDQ configuration of the int8
search (the model `ort-cpu` runs when a QDQ one wins there too; OpenVINO's low-precision
transformations turn the Q/DQ pairs into int8 kernels); bf16 runs the fp32 graph
with the inference-precision hint set to bf16, only where the CPU plugin lists BF16 among its
optimization capabilities (AMX or AVX512-BF16).

The trap this backend exists to avoid: on a CPU with bf16 support, the CPU plugin's default
`INFERENCE_PRECISION_HINT` is bf16 (OpenVINO 2026.4 on this project's AMD Zen 4 and on Intel
Xeons with AMX), so an "fp32" model run as it comes computes in bf16. Every cell here sets the
hint explicitly (f32 for fp32 and int8, bf16 for bf16) and reads back what the compiled model
executes with: the hint (`inference_precision`), and per precision the number of executed
nodes of the runtime graph (`runtime_precisions`, from each node's `runtimePrecision`).

Threads and the performance hint, read back from the compiled model (`details`): `threads`
(INFERENCE_NUM_THREADS: every core this process may use unless the cell sets --threads),
`streams` (NUM_STREAMS) and `performance_hint`. The hint is LATENCY in every scenario: the
harness issues one synchronous request at a time, offline batches included, and a THROUGHPUT
hint splits the cores into streams (on 2 cores: 2 streams of 1 thread) that one request cannot
use. `spec.options["performance_hint"]` overrides it ("LATENCY", "THROUGHPUT",
"CUMULATIVE_THROUGHPUT"), recorded as read back.

Property names and semantics: OpenVINO's CPU plugin documentation ("Inference Precision",
"Performance Hints", "Multi-stream execution") and `openvino.properties`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from chipbench.backends.base import (Arrays, Compiled, CompileSpec, ModelSource, Unsupported, converts, register,
                                     require_precision)
from chipbench.errors import one_line
from chipbench.machine import usable_cores

# the inference-precision hint each cell precision compiles with (OpenVINO element type names)
HINTS = {"fp32": "f32", "int8": "f32", "bf16": "bf16", "fp16": "f32"}
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
# runtime-graph nodes that hold or pass data without computing: left out of `runtime_precisions`
_NOT_COMPUTE = {"Const", "Input", "Output", "Parameter", "Result"}


@register("openvino-cpu")
class OpenVinoCpu:
    description = "OpenVINO, CPU plugin (inference precision set explicitly and read back)"
    precisions = ("fp32", "bf16", "int8")
    devices = ("cpu",)

    def available(self) -> tuple[bool, str]:
        """Whether the `openvino` wheel is importable here (cheap: no import of it)."""
        if importlib.util.find_spec("openvino") is None:
            return False, "openvino is not installed (pip install '.[openvino]')"
        return True, ""

    def versions(self) -> dict[str, str]:
        """The installed openvino wheel's version (from its package metadata)."""
        return {"openvino": importlib.metadata.version("openvino")}

    def compile(self, source: ModelSource, spec: CompileSpec) -> Compiled:
        """Read the ONNX file (int8: the QDQ model), compile it for the CPU plugin with the
        precision and performance hints and thread count set explicitly, and read them back.

        Raises Unsupported for a precision this backend or this CPU cannot run (bf16 without
        AMX/AVX512-BF16), for an operator OpenVINO's ONNX frontend cannot convert, and when the
        compiled model does not execute at the precision asked (a hint the plugin ignored)."""
        import openvino as ov

        require_precision(self, spec, source)
        hint = HINTS.get(spec.precision, "f32")  # a foreign fp16 graph: computed in f32, and recorded so
        core = ov.Core()
        if hint == "bf16":
            check_bf16(core)
        performance = str(spec.options.get("performance_hint", "LATENCY"))
        if performance not in PERFORMANCE_HINTS:
            raise Unsupported(f"openvino-cpu: performance hint {performance!r} (known: {', '.join(PERFORMANCE_HINTS)})")
        start = time.perf_counter()
        model_path, quantization = _model_for(source, spec)
        threads = spec.threads or usable_cores()
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": performance, "INFERENCE_NUM_THREADS": threads}
        try:
            model = core.read_model(str(model_path))
            compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # the ONNX frontend names the operator it has no conversion for
            text = one_line(exc)
            if "OpConversionFailure" in text or "No conversion rule" in text or "not supported" in text.lower():
                raise Unsupported(f"openvino-cpu {spec.precision}: {text}") from None
            raise
        compile_s = time.perf_counter() - start
        details = read_back(compiled)
        executed = details["inference_precision"]
        if executed != hint:
            raise Unsupported(f"openvino-cpu {spec.precision}: asked the CPU plugin for {hint}, it compiled {executed}")
        request = compiled.create_infer_request()
        names = output_names(compiled, source)

        def run(inputs: Arrays) -> Arrays:
            # inputs are read in place (the call is synchronous: they outlive it), but OpenVINO
            # wraps only writeable arrays (a read-only one, e.g. loaded from a file, is copied);
            # outputs are copied out of the request's tensors, which the next call overwrites
            shared = {k: v if getattr(v, "flags", None) is None or v.flags.writeable else np.array(v)
                      for k, v in inputs.items()}
            results = request.infer(shared, share_inputs=True, share_outputs=False)
            return {name: results[port] for name, port in names}

        pipeline = f"ONNX frontend, CPU plugin, inference precision {executed}, {details['performance_hint']} hint"
        if quantization:
            pipeline += f", QDQ int8 static quantization {quantization['executed']}"
        return Compiled(run=run, compile_s=compile_s, artifact_bytes=model_path.stat().st_size, target="cpu",
                        pipeline=pipeline, details=details, quantization=quantization)


def check_bf16(core: Any) -> None:
    """Unsupported unless the CPU plugin lists BF16 among its OPTIMIZATION_CAPABILITIES (it does
    where the CPU has AMX or AVX512-BF16), naming the capabilities it does list."""
    capabilities = [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    if "BF16" not in capabilities:
        raise Unsupported("openvino-cpu bf16: this CPU has neither AMX nor AVX512-BF16 (the CPU plugin's "
                          f"OPTIMIZATION_CAPABILITIES: {', '.join(capabilities)})")


def read_back(compiled: Any) -> dict[str, Any]:
    """What the compiled model runs with, as it reports it: `inference_precision` (element type
    name: f32, bf16, f16), `performance_hint`, `threads` (INFERENCE_NUM_THREADS), `streams`
    (NUM_STREAMS), `cpu_pinning` (ENABLE_CPU_PINNING), `execution_devices`, and
    `runtime_precisions`: executed nodes of the runtime graph per runtimePrecision (constants,
    inputs and outputs left out), e.g. {"u8": 53, "i8": 7, "f32": 56} for an int8 CNN."""
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) not in _NOT_COMPUTE:
            counts[info["runtimePrecision"].astype(str)] += 1
    return {
        "inference_precision": precision.get_type_name() if hasattr(precision, "get_type_name") else str(precision),
        "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
        "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
        "streams": int(compiled.get_property("NUM_STREAMS")),
        "cpu_pinning": bool(compiled.get_property("ENABLE_CPU_PINNING")),
        "execution_devices": [str(d) for d in compiled.get_property("EXECUTION_DEVICES")],
        "runtime_precisions": dict(counts.most_common()),
    }


def output_names(compiled: Any, source: ModelSource) -> list[tuple[str, Any]]:
    """(ONNX output name, compiled output port) in the source's output order; a port without
    a name the source knows keeps its own first name."""
    ports = list(compiled.outputs)
    named = []
    for i, port in enumerate(ports):
        known = [n for n in source.output_names if n in port.get_names()]
        named.append((known[0] if known else port.get_any_name(), port))
    order = {n: i for i, n in enumerate(source.output_names)}
    return sorted(named, key=lambda item: order.get(item[0], len(order)))


def _model_for(source: ModelSource, spec: CompileSpec) -> tuple[Path, dict | None]:
    """The ONNX file to read and, for int8, the record's `quantization` field: the source's own
    file, or for int8 the best QDQ configuration of the int8 search (chipbench.int8_search: the
    model `ort-cpu` runs when a QDQ configuration wins there too; same calibration, same cache)."""
    if spec.precision == "int8" and converts(spec, source):
        from chipbench.int8_search import int8_for

        return int8_for(source.onnx_path, spec, "openvino-cpu", qdq_only=True)
    return source.onnx_path, None
