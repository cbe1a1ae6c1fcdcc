"""Old opsets lifted, saying so: retry a refused compile once on the model converted by
`onnx.version_converter`.

ONNX Runtime only guarantees ai.onnx opset 7 and above (its own load-time warning) and has no
kernels for some opset-1/6 operators ("Could not find an implementation for AveragePool(1)"),
although the version converter lifts them. So when a backend refuses a model whose opset is
below `OLDEST_GUARANTEED`, or whose refusal names an opset or a missing implementation, the
model is converted to the backend's newest declared opset (an optional `opsets = (oldest,
newest)` attribute on the backend) or `LIFT_TO`, and compiled once more; the result carries a
note "converted from opset N to M". A conversion that fails leaves the first refusal standing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from typing import Any

from chipbench.backends.base import Backend, Compiled, CompileSpec, ModelSource
from chipbench.paths import atomic_write_bytes, cache_dir

OLDEST_GUARANTEED = 7  # ONNX Runtime: "only *guarantees* support for models stamped with opset version 7 or above"
LIFT_TO = 13  # a widely implemented opset (ONNX 1.8); a backend's `opsets` overrides it
_OPSET_TROUBLE = re.compile(r"opset|Could not find an implementation|not implemented for version|version \d+ of",
                            re.IGNORECASE)


def model_opset(model: Any) -> int:
    """The model's ai.onnx opset (0 when it imports none)."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def lift_target(backend: Backend, opset: int, error: str) -> int | None:
    """The opset to convert to after `backend` refused a model of `opset` with `error`, or None
    when a conversion is not worth a try (the refusal is not about the opset)."""
    oldest, newest = getattr(backend, "opsets", (OLDEST_GUARANTEED, LIFT_TO))
    if opset < oldest or (_OPSET_TROUBLE.search(error) and opset < newest):
        return max(newest, oldest)
    if opset > newest and _OPSET_TROUBLE.search(error):
        return newest
    return None


def convert(source: ModelSource, target: int) -> ModelSource:
    """`source` with its model converted to ai.onnx opset `target`, cached by the converted
    bytes (`cache_dir("onnx-lifted", sha256)`). Raises whatever the converter raises."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(source.onnx_path))
    # The converter resolves every node input among the graph's inputs: weights that are only
    # initializers (IR 4 on) are listed as inputs for it, and taken off again afterwards.
    listed = {i.name for i in model.graph.input}
    weights = [t for t in model.graph.initializer if t.name not in listed]
    model.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in weights)
    converted = version_converter.convert_version(model, target)
    added = {t.name for t in weights}
    kept = [i for i in converted.graph.input if i.name not in added]
    del converted.graph.input[:]
    converted.graph.input.extend(kept)
    if weights:
        converted.ir_version = max(converted.ir_version, 4)  # initializers need not be inputs from IR 4 on
    data = converted.SerializeToString()
    digest = hashlib.sha256(data).hexdigest()
    path = cache_dir("onnx-lifted", digest[:24]) / "model.onnx"
    if not path.exists() or path.read_bytes() != data:  # exact bytes, not the hash alone
        atomic_write_bytes(path, data)
    return replace(source, onnx_path=path)


def compile_lifting(backend: Backend, source: ModelSource, spec: CompileSpec,
                    opset: int) -> tuple[Compiled, ModelSource, str | None]:
    """`backend.compile(source, spec)`; when it raises and `lift_target` says the opset may be
    why, one more try on the converted model. Returns (compiled, the source that compiled, the
    note "converted from opset N to M" or None). Re-raises the first error when the conversion
    or the second compile fails too."""
    try:
        return backend.compile(source, spec), source, None
    except Exception as first:
        target = lift_target(backend, opset, str(first))
        if target is None or target == opset:
            raise
        try:
            lifted = convert(source, target)
            compiled = backend.compile(lifted, spec)
        except Exception:
            raise first from None
        return compiled, lifted, f"converted from opset {opset} to {target} (onnx.version_converter)"
