"""The generation scenario: LLM text generation as users measure it (TTFT, TPOT, tokens/s).

Each query is one prompt from a seeded set (`prompt_lens` × `prompts_per_len` prompts, token
ids drawn uniformly from the vocabulary; queries rotate through them, so caching one prompt
cannot win). A query runs the prefill graph on the prompt, picks the first token (greedy:
argmax of the last position's logits), then runs `output_tokens - 1` decode steps, each on the
previous token, its position and the KV cache the step before returned. The KV cache travels
as host arrays between steps (what `Compiled.run` offers); a backend that kept it on the
device would be faster, and this scenario does not pretend otherwise.

What is timed, per query (host clock, `time.perf_counter`, seconds):
- TTFT (time to first token): from the start of the query to the first token's id, i.e. the
  prefill run plus the argmax (MLPerf's TTFT, LoadGen's `FirstTokenComplete`);
- TPOT (time per output token): (query latency - TTFT) / (output_tokens - 1), MLPerf's
  definition (LoadGen `results.cc`, token latencies);
- tokens/s: output tokens over query latency per query; overall, all output tokens over the
  summed query latencies.

Greedy decoding makes outputs checkable: every timed query's token ids must equal those of
the FP32 reference (the torch model run by this same loop); the first differing position
makes the cell INVALID. The first step's logits are also checked for fidelity against the
workload's tolerance.

Prompts are issued by MLPerf LoadGen's SingleStream scenario in token-latency mode
(`TestSettings.use_token_latencies`, the SUT calls `FirstTokenComplete` after the first
token and reports `n_tokens` with `QuerySamplesComplete`), when `mlperf_loadgen` imports;
otherwise by a plain loop with the same stopping rules (`chipbench.scenarios.stop`). The
record's `generation.issuer` says which; LoadGen's settings, its VALID/INVALID result with
its reasons and its summary log are kept in `generation.loadgen`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from chipbench.scenarios import MeasureSettings, stop
from chipbench.stats import LatencyStats

Arrays = dict[str, np.ndarray]
Run = Callable[[Arrays], Arrays]
SCENARIO = "generation"


@dataclass(frozen=True)
class Prompt:
    """One prompt of the seeded set: `ids` int64 [1, length], `index` its place in the set."""

    index: int
    ids: np.ndarray

    @property
    def length(self) -> int:
        return int(self.ids.shape[1])


def prompt_set(vocab: int, prompt_lens: Iterable[int], per_len: int, seed: int) -> list[Prompt]:
    """`per_len` prompts of each length in `prompt_lens`, interleaved by length (32, 64, ...,
    32, 64, ...), token ids uniform in [0, vocab) from numpy's PCG64 seeded with (seed, length,
    k): the same seed gives the same prompts, whatever the other lengths."""
    prompts = []
    lens = list(prompt_lens)
    for k in range(per_len):
        for length in lens:
            rng = np.random.default_rng([seed, length, k])
            prompts.append(Prompt(len(prompts), rng.integers(0, vocab, size=(1, length), dtype=np.int64)))
    return prompts


@dataclass
class Generated:
    """One query's result: the greedy token ids (output_tokens of them), the first step's
    logits [1, vocab], TTFT and whole-query latency in seconds (host clock)."""

    tokens: list[int]
    first_logits: np.ndarray
    ttft_s: float
    latency_s: float

    @property
    def tpot_s(self) -> float:
        """(latency - TTFT) / (tokens - 1): MLPerf's time per output token. 0 for one token."""
        n = len(self.tokens)
        return (self.latency_s - self.ttft_s) / (n - 1) if n > 1 else 0.0


def generate(prefill: Run, decode: Run, cache: dict[str, str], prompt: Prompt, output_tokens: int,
             clock: Callable[[], float] = time.perf_counter,
             on_first_token: Callable[[int], None] | None = None) -> Generated:
    """Greedy generation of `output_tokens` tokens for `prompt`: prefill, argmax, then decode
    steps feeding each step's outputs named by `cache` (decode input -> output name) back in.
    `on_first_token(token_id)` is called as soon as the first token is known (LoadGen's
    FirstTokenComplete), inside TTFT. Raises KeyError when an output the cache needs is missing."""
    t0 = clock()
    out = prefill({"input_ids": prompt.ids})
    logits = out["logits"]
    token = int(np.argmax(logits[0]))
    ttft = clock() - t0
    if on_first_token is not None:
        on_first_token(token)
    tokens = [token]
    position = prompt.length
    for _ in range(output_tokens - 1):
        feed = {"input_ids": np.array([[token]], np.int64), "position": np.array([position], np.int64)}
        for name, source in cache.items():
            feed[name] = out[source]
        out = decode(feed)
        token = int(np.argmax(out["logits"][0]))
        tokens.append(token)
        position += 1
    return Generated(tokens, np.asarray(logits), ttft, clock() - t0)


def first_mismatch(got: list[int], expected: list[int]) -> int | None:
    """The first position (0-based, in output tokens) where `got` differs from `expected`, or
    None when they are equal (a shorter list differs where it ends)."""
    for i, (a, b) in enumerate(zip(got, expected)):
        if a != b:
            return i
    return None if len(got) == len(expected) else min(len(got), len(expected))


@dataclass(frozen=True)
class GenerationSettings:
    """How the generation scenario runs: prompts of `prompt_lens` tokens (`prompts_per_len`
    distinct prompts each), `output_tokens` generated per query; `measure` as the harness's
    MeasureSettings (warm-up queries, then until `min_count` queries and `min_duration_s`)."""

    prompt_lens: tuple[int, ...]
    output_tokens: int
    prompts_per_len: int
    measure: MeasureSettings

    @classmethod
    def from_measure(cls, settings: MeasureSettings) -> GenerationSettings:
        return cls(tuple(settings.prompt_lens), settings.output_tokens, settings.prompts_per_len, settings)


@dataclass
class Timed:
    """What the issuer measured: every timed query in order (`prompt_index`, `Generated`), the
    issuer's name ("loadgen" or "loop"), a note when it stopped short, and LoadGen's part."""

    queries: list[tuple[int, Generated]]
    issuer: str
    note: str | None = None
    loadgen: dict[str, Any] | None = None


def loop_issue(one: Callable[[int, Callable[[int], None] | None], Generated], prompts: list[Prompt],
               settings: MeasureSettings, clock: Callable[[], float] = time.perf_counter) -> Timed:
    """A plain loop: queries rotate over `prompts` until `chipbench.scenarios.stop` says so."""
    queries: list[tuple[int, Generated]] = []
    begin = clock()
    measured = 0.0
    while True:
        i = len(queries) % len(prompts)
        g = one(i, None)
        queries.append((i, g))
        measured += g.latency_s
        done, note = stop(settings, len(queries), measured, clock() - begin)
        if done:
            return Timed(queries, "loop", note)


def summarize(queries: list[tuple[int, Generated]], prompts: list[Prompt], seed: int = 0) -> dict[str, Any]:
    """TTFT and TPOT statistics (LatencyStats, ms) overall and per prompt length, and tokens/s
    (overall: all output tokens / summed query seconds; per query: median, min, max)."""

    def part(items: list[Generated]) -> dict[str, Any]:
        tokens = sum(len(g.tokens) for g in items)
        per_query = [len(g.tokens) / g.latency_s for g in items]
        return {
            "count": len(items),
            "ttft": LatencyStats.from_samples([g.ttft_s for g in items], seed=seed).to_dict(),
            "tpot": LatencyStats.from_samples([g.tpot_s for g in items], seed=seed).to_dict(),
            "tokens_per_s": {"value": tokens / sum(g.latency_s for g in items), "unit": "tokens/s",
                             "median_per_query": float(np.median(per_query)),
                             "min_per_query": float(np.min(per_query)), "max_per_query": float(np.max(per_query))},
        }

    overall = part([g for _, g in queries])
    by_len: dict[int, list[Generated]] = {}
    for i, g in queries:
        by_len.setdefault(prompts[i].length, []).append(g)
    overall["per_prompt_len"] = {str(n): part(gs) for n, gs in sorted(by_len.items())}
    return overall


def settings_dict(settings: GenerationSettings) -> dict[str, Any]:
    d = asdict(settings)
    d.pop("measure")
    d["prompt_lens"] = list(settings.prompt_lens)
    return d
