"""The harness's own cost per query, measured with the null backend (target: ≤ 10 µs)."""

import numpy as np
import pytest

from chipbench.backends.base import CompileSpec, ModelSource, get_backend
from chipbench.scenarios import MeasureSettings, measure
from chipbench.stats import LatencyStats

QUERIES = 20_000
TARGET_US = 10.0


@pytest.fixture
def null_query():
    reference = {"output": np.zeros((1, 4), np.float32)}
    inputs = {"input": np.zeros((1, 16), np.float32)}
    source = ModelSource("null", onnx_path=None, input_names=("input",), output_names=("output",))
    run = get_backend("null").compile(source, CompileSpec(reference_outputs=reference)).run
    return lambda: run(inputs)


def test_null_backend_single_stream_overhead(benchmark, null_query):
    """Wall time of a single-stream sweep of null queries, per query: clock reads, bookkeeping
    and the backend call. This is what every real measurement carries on top of its model."""
    settings = MeasureSettings(warmup_count=100, warmup_s=0.0, min_count=QUERIES, min_duration_s=0.0)
    m = benchmark.pedantic(lambda: measure(null_query, settings), rounds=5, iterations=1)
    assert len(m.samples_s) == QUERIES
    if benchmark.stats is None:  # --benchmark-disable (make test): ran once as a test
        return
    per_query_us = benchmark.stats.stats.median / len(m.samples_s) * 1e6
    recorded_us = float(np.median(m.samples_s)) * 1e6
    benchmark.extra_info.update(per_query_us=per_query_us, recorded_median_us=recorded_us,
                                queries=len(m.samples_s), target_us=TARGET_US)
    print(f"\nnull backend, single-stream: {per_query_us:.3f} µs per query of loop wall time, "
          f"{recorded_us:.3f} µs recorded median latency (target ≤ {TARGET_US} µs)")
    assert per_query_us <= TARGET_US


def test_statistics_cost_per_sample(benchmark):
    """Summary statistics (incl. a 1000-resample bootstrap of the median) after a sweep."""
    samples = np.random.default_rng(0).lognormal(-9, 0.2, QUERIES)
    stats = benchmark.pedantic(lambda: LatencyStats.from_samples(samples), rounds=3, iterations=1)
    assert stats.count == QUERIES
    if benchmark.stats is None:
        return
    per_sample_us = benchmark.stats.stats.median / QUERIES * 1e6
    benchmark.extra_info.update(per_sample_us=per_sample_us)
    print(f"\nstatistics: {per_sample_us:.3f} µs per sample, once per cell, outside the timed loop")
