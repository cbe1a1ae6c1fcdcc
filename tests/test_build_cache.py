"""TVM libraries kept by their exact build inputs: a second compile of the same model for the
same target loads the library, computes the same outputs, and says it was cached."""

import numpy as np
import pytest

from chipbench.backends.base import CompileSpec, ModelSource, get_backend
from onnx_models import matmul_relu

pytest.importorskip("tvm")


def compile_once(path, cache, monkeypatch, threads=1, **env):
    monkeypatch.setenv("CHIPBENCH_CACHE", str(cache))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return get_backend("tvm-llvm").compile(ModelSource("mm", path, ("x",), ("y",)), CompileSpec(threads=threads))


def test_the_second_build_of_the_same_inputs_is_loaded_and_says_so(tmp_path, monkeypatch):
    model = matmul_relu(tmp_path / "mm.onnx", dynamic_batch=False)
    x = {"x": np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)}
    first = compile_once(model, tmp_path / "cache", monkeypatch)
    second = compile_once(model, tmp_path / "cache", monkeypatch)
    a, b = first.details["build_cache"], second.details["build_cache"]
    assert not a["hit"] and b["hit"] and a["key"] == b["key"] and b["build_s"] == a["build_s"] > 0
    np.testing.assert_array_equal(first.run(x)["y"], second.run(x)["y"])
    assert second.pipeline == first.pipeline and second.artifact_bytes == first.artifact_bytes
    # another target (two cores instead of one) is another build, never a near match
    other = compile_once(model, tmp_path / "cache", monkeypatch, threads=2)
    assert not other.details["build_cache"]["hit"] and other.details["build_cache"]["key"] != a["key"]


def test_a_cached_build_still_exports_a_bundle_and_the_cache_can_be_turned_off(tmp_path, monkeypatch):
    model = matmul_relu(tmp_path / "mm.onnx", dynamic_batch=False)
    compile_once(model, tmp_path / "cache", monkeypatch)
    cached = compile_once(model, tmp_path / "cache", monkeypatch)
    entries = cached.export(tmp_path / "bundle")  # builds the executable the cached library came from
    assert (tmp_path / "bundle" / entries["library"]).stat().st_size > 0
    off = compile_once(model, tmp_path / "cache", monkeypatch, CHIPBENCH_BUILD_CACHE="0")
    assert off.details["build_cache"] is None and off.artifact_bytes == cached.artifact_bytes
