"""Lower-precision ONNX variants, made once and cached by their exact inputs.

int8: ONNX Runtime static quantization (QDQ, per-channel weights, MinMax calibration) fed with
the workload's calibration split, so the activation ranges are those of real data.
fp16: weights and compute converted to float16 with float32 inputs and outputs kept.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from chipbench.backends.base import Arrays
from chipbench.paths import atomic_write_bytes, atomic_write_text, cache_dir, sha256_file

INT8_RECIPE = {"format": "QDQ", "per_channel": True, "activations": "QInt8", "weights": "QInt8",
               "calibration": "MinMax", "preprocess": "quant_pre_process"}
FP16_RECIPE = {"converter": "onnxruntime.transformers.float16", "keep_io_types": True}


def _cached(kind: str, key: dict, make: Callable[[Path], None]) -> Path:
    text = json.dumps(key, sort_keys=True, default=str)
    folder = cache_dir(kind, hashlib.sha256(text.encode()).hexdigest()[:24])
    path, key_file = folder / "model.onnx", folder / "key.json"
    if path.exists() and key_file.exists() and key_file.read_text() == text:
        return path
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        out = Path(tmp) / "model.onnx"
        make(out)
        atomic_write_bytes(path, out.read_bytes())
    atomic_write_text(key_file, text)
    return path


def int8_model(onnx_path: Path, calibration: Callable[[], list[Arrays]], calibration_key: dict) -> Path:
    """The QDQ int8 model calibrated on `calibration()` batches."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[Arrays] = iter(calibration())

        def get_next(self):
            return next(self._it, None)

    def make(out: Path) -> None:
        pre = out.with_name("pre.onnx")
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)

    key = {"model": sha256_file(onnx_path), "recipe": INT8_RECIPE, "calibration": calibration_key}
    return _cached("int8", key, make)


def fp16_model(onnx_path: Path) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    def make(out: Path) -> None:
        model = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
        onnx.save(model, str(out))

    return _cached("fp16", {"model": sha256_file(onnx_path), "recipe": FP16_RECIPE}, make)
