"""Lower-precision ONNX variants, made once and cached by their exact inputs.

int8: ONNX Runtime static quantization fed with the workload's calibration split, so the
activation ranges are those of real data; one of the configurations of
`chipbench.int8_configs` (the default, `OLD_RECIPE`, is QDQ with int8 activations and
per-channel int8 weights, MinMax calibration; `chipbench.int8_search` picks the one a deployer
would run). The model first goes through ORT's `quant_pre_process` (shape inference and
graph optimisation), and the calibration ranges are computed once per (model, calibration
data, method) and shared by every configuration.
fp16: weights and compute converted to float16 with float32 inputs and outputs kept.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from chipbench.backends.base import Arrays
from chipbench.int8_configs import OLD_RECIPE, Int8Config, calibrate, make_int8
from chipbench.paths import atomic_write_bytes, atomic_write_text, cache_dir, sha256_file

FP16_RECIPE = {"converter": "onnxruntime.transformers.float16", "keep_io_types": True}


def _cached(kind: str, key: dict, make: Callable[[Path], None], name: str = "model.onnx") -> Path:
    text = json.dumps(key, sort_keys=True, default=str)
    folder = cache_dir(kind, hashlib.sha256(text.encode()).hexdigest()[:24])
    path, key_file = folder / name, folder / "key.json"
    if path.exists() and key_file.exists() and key_file.read_text() == text:
        return path
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        out = Path(tmp) / name
        make(out)
        atomic_write_bytes(path, out.read_bytes())
    atomic_write_text(key_file, text)
    return path


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def pre_processed(onnx_path: Path) -> Path:
    """`onnx_path` through ORT's `quant_pre_process` (symbolic shape inference skipped: the
    models here have static shapes), cached by the model's hash and ORT's version."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    key = {"model": sha256_file(onnx_path), "tool": "quant_pre_process", "onnxruntime": _ort_version()}
    return _cached("int8-pre", key, lambda out: quant_pre_process(str(onnx_path), str(out),
                                                                   skip_symbolic_shape=True))


def calibration_ranges(onnx_path: Path, calibration: Callable[[], list[Arrays]], calibration_key: dict,
                       method: str = "MinMax") -> Path:
    """ORT's calibration-cache JSON of every tensor's range of `onnx_path` (pre-processed)
    over the `calibration()` batches, cached by the model's hash, `calibration_key`, `method`
    and ORT's version."""
    pre = pre_processed(onnx_path)
    key = {"model": sha256_file(onnx_path), "calibration": calibration_key, "method": method,
           "onnxruntime": _ort_version()}
    return _cached("int8-ranges", key, lambda out: calibrate(pre, calibration, method, out), name="ranges.json")


def int8_key(onnx_path: Path, calibration_key: dict, config: Int8Config = OLD_RECIPE) -> dict:
    """The exact cache key of `int8_model`'s result."""
    return {"model": sha256_file(onnx_path), "recipe": config.key(), "calibration": calibration_key,
            "onnxruntime": _ort_version()}


def int8_model(onnx_path: Path, calibration: Callable[[], list[Arrays]], calibration_key: dict,
               config: Int8Config = OLD_RECIPE) -> Path:
    """The int8 model of `onnx_path` made with `config` (default: QDQ s8/s8 per-channel), its
    activation ranges calibrated on `calibration()` batches (a dynamic configuration needs
    none). QDQ configurations give a model every int8-capable backend reads; QOperator and
    dynamic ones run on ONNX Runtime only."""
    def make(out: Path) -> None:
        ranges = (None if config.calibration == "none"
                  else calibration_ranges(onnx_path, calibration, calibration_key, config.calibration))
        make_int8(config, pre_processed(onnx_path), out, ranges)

    key = int8_key(onnx_path, calibration_key if config.calibration != "none" else None, config)
    return _cached("int8", key, make)


def fp16_model(onnx_path: Path) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    def make(out: Path) -> None:
        model = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
        onnx.save(model, str(out))

    return _cached("fp16", {"model": sha256_file(onnx_path), "recipe": FP16_RECIPE}, make)
