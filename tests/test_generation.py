"""The generation scenario (TTFT, TPOT, tokens/s) on a tiny factory-llm: the loop's arithmetic
with a fake clock, greedy tokens against the FP32 reference on ort-cpu, a backend that returns a
wrong token made INVALID with its position, and the suite's checks of the settings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chipbench.backends import base as backends
from chipbench.cell import execute
from chipbench.generation import Generated, first_mismatch, generate, loop_issue, prompt_set, summarize
from chipbench.generation_loadgen import parse_summary
from chipbench.record import validate
from chipbench.scenarios import MeasureSettings
from chipbench.suite import Cell, SuiteError, check_cell

TINY = {"layers": 1, "d_model": 64, "vocab": 512, "heads": 4, "kv_heads": 2, "ffn": 128}
SHORT = MeasureSettings(warmup_count=1, min_count=6, min_duration_s=0.0, max_duration_s=30,
                        prompt_lens=(8, 16), prompts_per_len=1, output_tokens=5)


def cell(backend: str, **kw) -> Cell:
    return Cell(**{"workload": "factory-llm", "backend": backend, "scenario": "generation",
                   "workload_params": TINY, "settings": SHORT, **kw})


def test_prompt_set_is_seeded_and_rotates_lengths():
    a = prompt_set(100, (4, 8), 2, seed=3)
    assert [p.length for p in a] == [4, 8, 4, 8]
    assert all(p.ids.dtype == np.int64 and p.ids.shape == (1, p.length) for p in a)
    assert all(np.array_equal(x.ids, y.ids) for x, y in zip(a, prompt_set(100, (4, 8), 2, seed=3)))
    assert not np.array_equal(a[0].ids, a[2].ids)  # two distinct prompts of one length
    assert not np.array_equal(a[0].ids, prompt_set(100, (4, 8), 2, seed=4)[0].ids)


def test_first_mismatch():
    assert first_mismatch([1, 2, 3], [1, 2, 3]) is None
    assert first_mismatch([1, 5, 3], [1, 2, 4]) == 1
    assert first_mismatch([1, 2], [1, 2, 3]) == 2


class FakeClock:
    """A clock that stands still when read; the fake graphs below move it on."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_generate_feeds_the_cache_back_and_times_ttft_and_tpot_with_a_fake_clock():
    clock = FakeClock()
    vocab = 10
    seen = []

    def prefill(inputs):
        clock.t += 0.5  # prefill: 0.5 s
        logits = np.zeros((1, vocab), np.float32)
        logits[0, 7] = 1
        return {"logits": logits, "present.0.key": np.ones((1, 1, inputs["input_ids"].shape[1], 2), np.float32)}

    def decode(inputs):
        clock.t += 0.1  # each decode step: 0.1 s
        past = inputs["past.0.key"]
        seen.append((int(inputs["input_ids"][0, 0]), int(inputs["position"][0]), past.shape[2]))
        logits = np.zeros((1, vocab), np.float32)
        logits[0, (int(inputs["input_ids"][0, 0]) + 1) % vocab] = 1
        grown = np.concatenate([past, past[:, :, :1]], axis=2)
        return {"logits": logits, "present.0.key": grown}

    firsts = []
    prompt = prompt_set(vocab, (4,), 1, 0)[0]
    g = generate(prefill, decode, {"past.0.key": "present.0.key"}, prompt, 4, clock=clock,
                 on_first_token=firsts.append)
    assert g.tokens == [7, 8, 9, 0] and firsts == [7]
    assert seen == [(7, 4, 4), (8, 5, 5), (9, 6, 6)]  # previous token, its position, the cache so far
    assert g.ttft_s == pytest.approx(0.5) and g.latency_s == pytest.approx(0.8)
    assert g.tpot_s == pytest.approx(0.1)


def test_loop_issue_rotates_prompts_and_stops_on_count_and_summarizes_per_length():
    prompts = prompt_set(50, (4, 8), 1, 0)
    calls = []

    def one(i, _first):
        calls.append(i)
        n = prompts[i].length
        return Generated([1, 2, 3], np.zeros((1, 50)), ttft_s=n * 1e-3, latency_s=n * 1e-3 + 2 * 1e-3)

    timed = loop_issue(one, prompts, MeasureSettings(min_count=5, min_duration_s=0.0))
    assert calls == [0, 1, 0, 1, 0] and timed.issuer == "loop"
    s = summarize(timed.queries, prompts)
    assert s["ttft"]["count"] == 5 and set(s["per_prompt_len"]) == {"4", "8"}
    assert s["per_prompt_len"]["4"]["ttft"]["median"] == pytest.approx(4.0)  # ms
    assert s["per_prompt_len"]["8"]["tpot"]["median"] == pytest.approx(1.0)
    assert s["tokens_per_s"]["value"] == pytest.approx(15 / sum(g.latency_s for _, g in timed.queries))


def test_parse_summary_reads_the_result_and_unmet_checks():
    text = "Result is : INVALID\n  Min duration satisfied : Yes\n  Min queries satisfied : Yes\n" \
           "  Early stopping satisfied: NO\n"
    assert parse_summary(text) == {"result": "INVALID", "reasons": ["Early stopping satisfied"]}
    assert parse_summary("")["result"] is None


@pytest.mark.filterwarnings("ignore")
def test_ort_generates_the_reference_tokens_with_ttft_and_tpot():
    rec = execute(cell("ort-cpu"))
    assert rec.status == "ok", rec.reason
    assert rec.verdict == "VALID", rec.reason
    g = rec.generation
    assert g["tokens_checked"]["mismatched_queries"] == 0 and g["tokens_checked"]["queries"] >= 6
    assert g["ttft"]["median"] > 0 and g["tpot"]["median"] > 0 and g["tokens_per_s"]["value"] > 0
    assert set(g["per_prompt_len"]) == {"8", "16"}
    assert g["issuer"] in ("loadgen", "loop")
    if g["issuer"] == "loadgen":
        assert g["loadgen"]["settings"]["use_token_latencies"] is True
        assert g["loadgen"]["result"] in ("VALID", "INVALID") and "Result is" in g["loadgen"]["summary"]
    assert rec.latency.to_dict() == g["ttft"] and rec.throughput.unit == "tokens/s"
    assert rec.scenario["name"] == "generation" and rec.batch == 1
    validate(json.loads(rec.to_json()))


def test_without_loadgen_a_plain_loop_issues_the_prompts(monkeypatch):
    import sys

    from chipbench.generation_loadgen import loadgen_issue

    monkeypatch.setitem(sys.modules, "mlperf_loadgen", None)  # import fails as if not installed
    prompts = prompt_set(50, (4,), 1, 0)
    assert loadgen_issue(lambda i, f: Generated([1], np.zeros((1, 50)), 1e-3, 1e-3), prompts, SHORT) is None
    rec = execute(cell("ort-cpu"))
    assert rec.verdict == "VALID", rec.reason
    assert rec.generation["issuer"] == "loop" and rec.generation["loadgen"] is None


@pytest.mark.filterwarnings("ignore")
def test_tvm_compiles_both_dynamic_graphs_and_generates_the_reference_tokens():
    from chipbench.backends.base import get_backend

    ok, why = get_backend("tvm-llvm").available()
    if not ok:
        pytest.skip(f"tvm-llvm unavailable: {why}")
    rec = execute(cell("tvm-llvm"))
    assert rec.status == "ok", rec.reason
    assert rec.verdict == "VALID", rec.reason
    assert rec.generation["prefill_graphs"].startswith("dynamic")


class _WrongTokenAt2:
    """ort-cpu, except the decode step at the third output token picks another token."""

    name = "wrong-token-double"
    description = "ort-cpu whose decode step at output token 2 returns another token"
    precisions = ("fp32",)
    devices = ("cpu",)

    def available(self):
        return True, ""

    def versions(self):
        return {}

    def compile(self, source, spec):
        compiled = backends.get_backend("ort-cpu").compile(source, spec)
        run = compiled.run

        def wrong(inputs):
            out = run(inputs)
            # decode step j of a prompt of P tokens is at position P + j and yields output token
            # j + 1: positions 9 and 17 are the 2nd steps of the 8- and 16-token prompts
            if "position" in inputs and int(inputs["position"][0]) in (9, 17):
                logits = out["logits"].copy()
                top = int(np.argmax(logits[0]))
                logits[0, (top + 1) % logits.shape[1]] = logits[0, top] + 1
                out = {**out, "logits": logits}
            return out

        compiled.run = wrong
        return compiled


@pytest.fixture
def wrong_token_backend():
    backends._load_all()
    backends._REGISTRY["wrong-token-double"] = _WrongTokenAt2
    yield "wrong-token-double"
    backends._REGISTRY.pop("wrong-token-double", None)


@pytest.mark.filterwarnings("ignore")
def test_a_backend_that_returns_a_wrong_token_is_invalid_naming_the_position(wrong_token_backend):
    rec = execute(cell(wrong_token_backend))
    assert rec.status == "ok", rec.reason
    assert rec.verdict == "INVALID"
    assert "first at output token 2 " in rec.reason
    assert rec.generation["tokens_checked"]["mismatched_queries"] == rec.generation["tokens_checked"]["queries"]


def test_a_workload_without_generation_graphs_is_unsupported():
    rec = execute(Cell(workload="tiny-mlp", backend="ort-cpu", scenario="generation", settings=SHORT))
    assert rec.status == "unsupported" and "does not generate text" in rec.reason


def test_prompt_longer_than_the_model_is_refused_with_the_numbers():
    rec = execute(cell("ort-cpu", workload_params={**TINY, "max_pos": 16}))
    assert rec.status == "failed" and "exceed the model's 16 positions" in rec.reason


@pytest.mark.parametrize("lens", [(), (0,), ("32",), "32"])
def test_suite_refuses_bad_prompt_lens(lens):
    settings = MeasureSettings(prompt_lens=lens)
    with pytest.raises(SuiteError, match="prompt_lens"):
        check_cell(Cell(workload="factory-llm", backend="ort-cpu", scenario="generation", settings=settings))
