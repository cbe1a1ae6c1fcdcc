"""Every available backend on every workload, at small size, matches the FP32 torch reference."""

import pytest

from chipbench.backends.base import get_backend
from chipbench.cell import execute
from chipbench.scenarios import MeasureSettings
from chipbench.suite import Cell
from tests.doubles import accurate

SMALL = {
    "defect-cnn": {"image_size": 32, "width": 8},
    "vibration-cnn1d": {"window": 256, "train": False},
    "sensor-transformer": {"steps": 16, "channels": 8, "d_model": 16, "layers": 1, "heads": 2, "train": False},
}
BACKENDS = ["ort-cpu", "openvino-cpu", "tvm-llvm", "torch-eager", "torch-compile", "null"]
QUICK = MeasureSettings(warmup_count=1, warmup_s=0.0, min_count=3, min_duration_s=0.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("workload", sorted(SMALL))
def test_backend_matches_reference(workload, backend):
    ok, why = get_backend(backend).available()
    if not ok:
        pytest.skip(f"{backend}: {why}")
    rec = execute(Cell(workload=workload, backend=backend, workload_params=SMALL[workload], settings=QUICK))
    assert rec.status == "ok", rec.reason
    assert accurate(rec), rec.validity
    assert rec.latency.count >= 3
    assert rec.compile.seconds >= 0
    if backend == "tvm-llvm":
        assert rec.backend["pipeline"].endswith("(untuned)") and rec.backend["tuning_db"] is None
        assert "mcpu" in rec.backend["target"]
