"""Export a workload to ONNX once (cached by its exact content key) and make its FP32 reference.

Models are exported with static shapes at the cell's batch: that is what an accelerator
compiler sees ahead of time, and TVM schedules static shapes far better than symbolic ones.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chipbench.backends.base import Arrays, ModelSource
from chipbench.errors import one_line
from chipbench.paths import atomic_write_bytes, atomic_write_text, cache_dir, sha256_file

OPSET = 17
EXPORTER = "torch.onnx.export (TorchScript)"


class PrepareError(Exception):
    """The model could not be exported or does not match its torch original."""


@dataclass(frozen=True)
class Prepared:
    source: ModelSource
    inputs: Arrays
    reference: Arrays  # FP32 torch eager outputs on `inputs`
    onnx_sha256: str
    exporter: str
    opset: int




def export_key(workload, batch: int) -> dict:
    """The exact key of one export: workload, batch, torch version (read from the installed
    package's metadata, so a cache hit never imports torch), exporter and opset."""
    return {"workload": workload.key(), "batch": batch, "torch": importlib.metadata.version("torch"),
            "exporter": EXPORTER, "opset": OPSET, "dynamic_axes": None}


def _cached_dir(kind: str, key: dict) -> tuple[Path, bool]:
    """A cache folder for `key`; hit only when the stored key equals it exactly."""
    text = json.dumps(key, sort_keys=True, default=str)
    folder = cache_dir(kind, hashlib.sha256(text.encode()).hexdigest()[:24])
    key_file = folder / "key.json"
    return folder, key_file.exists() and key_file.read_text() == text


def _store_key(folder: Path, key: dict) -> None:
    atomic_write_text(folder / "key.json", json.dumps(key, sort_keys=True, default=str))


def export_onnx(workload, batch: int) -> Path:
    key = export_key(workload, batch)
    folder, hit = _cached_dir("onnx", key)
    path = folder / "model.onnx"
    if hit and path.exists():
        return path
    proto = onnx_proto(workload, workload.build().eval(), batch)
    atomic_write_bytes(path, proto.SerializeToString())
    _store_key(folder, key)
    return path


def onnx_proto(workload, model, batch: int):
    """`model` (the workload's torch module, eval mode) exported as `export_onnx` exports it:
    static shapes at `batch`, opset OPSET, checked and shape-inferred. PrepareError on failure."""
    import onnx
    import torch

    example = workload.make_inputs(batch, seed=workload.seed)
    args = tuple(torch.from_numpy(example[n]) for n in workload.input_names)
    buf = io.BytesIO()
    try:
        torch.onnx.export(model, args, buf, dynamo=False, opset_version=OPSET,
                          input_names=list(workload.input_names),
                          output_names=list(workload.output_names))
        proto = onnx.load_from_string(buf.getvalue())
        onnx.checker.check_model(proto)
        return onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception as exc:
        raise PrepareError(f"ONNX export of {workload.name} failed: {one_line(exc, 300)}") from None


def reference_outputs(workload, inputs: Arrays, model=None) -> Arrays:
    """FP32 torch eager outputs of `workload` (built here unless `model` is given)."""
    import torch

    from chipbench.backends.torch_backends import named_outputs

    model = model if model is not None else workload.build().eval()
    with torch.inference_mode():
        return named_outputs(model(*(torch.from_numpy(inputs[n]) for n in workload.input_names)),
                             workload.output_names)


def check_onnx_parity(path: Path, inputs: Arrays, reference: Arrays, rtol: float = 1e-3) -> None:
    """The exported graph must compute what torch computes (checked with ONNX Runtime)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for name, got in zip(names, session.run(names, inputs)):
        ref = reference[name]
        err = float(np.linalg.norm(got.astype(np.float64) - ref) / max(np.linalg.norm(ref), 1e-12))
        if err > rtol:
            raise PrepareError(f"exported ONNX output '{name}' differs from torch (rel L2 {err:.2e})")


def prepare_workload(workload, batch: int, seed: int) -> Prepared:
    """ONNX file, inputs and FP32 reference for one (workload, batch, seed), all cached."""
    path = export_onnx(workload, batch)
    ref_key = {**export_key(workload, batch), "seed": seed, "onnx_sha256": sha256_file(path)}
    folder, hit = _cached_dir("reference", ref_key)
    data_file = folder / "data.npz"
    if hit and data_file.exists():
        with np.load(data_file) as data:
            inputs = {n: data[f"in/{n}"] for n in workload.input_names}
            reference = {n: data[f"out/{n}"] for n in workload.output_names}
    else:
        inputs = workload.make_inputs(batch, seed=seed)
        reference = reference_outputs(workload, inputs)
        check_onnx_parity(path, inputs, reference)
        buf = io.BytesIO()
        np.savez(buf, **{f"in/{k}": v for k, v in inputs.items()}, **{f"out/{k}": v for k, v in reference.items()})
        atomic_write_bytes(data_file, buf.getvalue())
        _store_key(folder, ref_key)
    source = ModelSource(name=workload.name, onnx_path=path, input_names=tuple(workload.input_names),
                         output_names=tuple(workload.output_names), build_torch=workload.build)
    return Prepared(source, inputs, reference, ref_key["onnx_sha256"], EXPORTER, OPSET)
