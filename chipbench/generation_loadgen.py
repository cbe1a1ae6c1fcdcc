"""Issue the generation scenario's prompts with MLPerf LoadGen (SingleStream, token latencies).

LoadGen (`mlperf_loadgen`, the `mlcommons-loadgen` wheel) issues one query at a time; the
system under test runs the prompt's generation synchronously inside LoadGen's issue callback,
tells LoadGen the first token with `FirstTokenComplete` and the whole response with
`QuerySamplesComplete` (`n_tokens` = output tokens), as MLPerf's LLM benchmarks do with
`TestSettings.use_token_latencies = True`. The samples kept in the record are the SUT's own
host-clock TTFT and latency of the same queries (LoadGen's per-query timestamps stay inside
its detail log); LoadGen's settings, its result and its summary log are kept beside them.
Queries rotate through the prompts in order (LoadGen's random sample index is not used), so
every prompt length is measured as often as the others.

Only the generation scenario's issuing lives here; the general LoadGen adapter for the other
scenarios is `chipbench.loadgen`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from chipbench.generation import Generated, Prompt, Timed
from chipbench.loadgen import loadgen_version, log_folder, start_test
from chipbench.scenarios import MeasureSettings


def loadgen_settings(settings: MeasureSettings, lg) -> Any:
    """LoadGen TestSettings for SingleStream, performance only, token latencies on, with the
    cell's minimum count and duration and its maximum duration as LoadGen's (ms) limits."""
    ts = lg.TestSettings()
    ts.scenario = lg.TestScenario.SingleStream
    ts.mode = lg.TestMode.PerformanceOnly
    ts.use_token_latencies = True
    ts.min_query_count = int(settings.min_count)
    ts.max_query_count = int(settings.max_count)
    ts.min_duration_ms = int(settings.min_duration_s * 1000)
    ts.max_duration_ms = int(settings.max_duration_s * 1000)
    return ts


_RESULT = re.compile(r"^Result is\s*:\s*(\w+)", re.M)
_CHECKS = re.compile(r"^\s*(Min duration satisfied|Min queries satisfied|Early stopping satisfied)\s*:\s*(\w+)", re.M)


def parse_summary(text: str) -> dict[str, Any]:
    """LoadGen's result ("VALID"/"INVALID", None when absent) and the names of the checks that
    were not satisfied, from mlperf_log_summary.txt."""
    m = _RESULT.search(text)
    reasons = [name for name, ok in _CHECKS.findall(text) if ok.lower() != "yes"]
    return {"result": m.group(1) if m else None, "reasons": reasons}


def loadgen_issue(one: Callable[[int, Callable[[int], None] | None], Generated], prompts: list[Prompt],
                  settings: MeasureSettings) -> Timed | None:
    """Time the prompts under LoadGen's SingleStream; None when mlperf_loadgen cannot be
    imported (the caller falls back to a plain loop). `one(i, on_first_token)` generates
    prompt i, calling `on_first_token(token)` as soon as the first token is known."""
    try:
        import mlperf_loadgen as lg
    except ImportError:
        return None
    queries: list[tuple[int, Generated]] = []
    keep: list[np.ndarray] = []

    def issue(samples) -> None:
        for s in samples:
            def first(token: int, sid=s.id) -> None:
                arr = np.array([token], np.int64)
                keep.append(arr)
                lg.FirstTokenComplete([lg.QuerySampleResponse(sid, arr.ctypes.data, arr.nbytes, 1)])

            i = len(queries) % len(prompts)  # rotate in order: every length as often (not LoadGen's random index)
            g = one(i, first)
            queries.append((i, g))
            out = np.asarray(g.tokens, np.int64)
            lg.QuerySamplesComplete([lg.QuerySampleResponse(s.id, out.ctypes.data, out.nbytes, len(g.tokens))])
            keep.clear()

    ts = loadgen_settings(settings, lg)
    with log_folder() as tmp:
        summary = start_test(issue, lambda: None, len(prompts), ts, Path(tmp), trace=False)["summary"]
    parsed = parse_summary(summary)
    part = {"version": loadgen_version(), "scenario": "SingleStream",
            "settings": {k: getattr(ts, k) for k in ("use_token_latencies", "min_query_count", "max_query_count",
                                                     "min_duration_ms", "max_duration_ms")},
            **parsed, "issuer": "loadgen", "summary": summary}
    return Timed(queries, "loadgen", None, part)

