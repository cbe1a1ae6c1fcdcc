"""factory-llm: an industrial assistant LLM (small Llama-style decoder), prefill and decode.

An on-premises assistant answers operators' questions over manuals and maintenance logs.
Serving cost splits into the prefill of the prompt (time to first token) and one decode
step per generated token with a KV cache (tokens per second). The model is Llama-style
(RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention, untied head) and small by
default: 4 layers, d_model 256, 8 query heads / 4 KV heads, FFN 704, vocabulary 32000.
Weights are seeded; fidelity only.

Two registered graphs share the weights:
- `factory-llm` (graph="prefill"): input_ids [B, prompt_len] -> logits of the last position
  [B, vocab] and present.{i}.key/value [B, kv_heads, prompt_len, head_dim] per layer;
- `factory-llm-decode` (graph="decode"): input_ids [B, 1], position [B] (int64, the index of
  the new token), past.{i}.key/value [B, kv_heads, P, head_dim] -> logits [B, vocab] and
  present.{i}.key/value [B, kv_heads, P + 1, head_dim]. Its inputs hold a real KV cache: the
  seeded model's prefill of a prompt of `past_len` tokens (P is a dynamic axis).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ._common import input_rng
from .base import Arrival, Workload, register


@dataclass(frozen=True)
class GenerationGraphs:
    """What a workload that generates text offers the generation scenario.

    - `prefill`: a workload whose graph maps input_ids [1, T] (int64, T dynamic) to logits of
      the last position [1, vocab] and the present K/V outputs;
    - `decode`: a workload whose graph maps input_ids [1, 1], position [1] (int64: the new
      token's index) and the past K/V inputs [1, kv_heads, P, head_dim] (P dynamic) to logits
      [1, vocab] and present K/V [1, kv_heads, P + 1, head_dim];
    - `vocab`: token ids are in [0, vocab); `max_positions`: prompt plus output tokens may not
      exceed it (the rotary table's length);
    - `cache`: decode input name -> the output name (of prefill and of decode) that feeds it.
    """

    prefill: Workload
    decode: Workload
    vocab: int
    max_positions: int
    cache: dict[str, str]


@register
@dataclass(frozen=True)
class FactoryLLM(Workload):
    """Small Llama-style decoder, prefill graph (time to first token). Seeded, fidelity only."""
    arrival = Arrival(1.0, 2000.0, 99.0, "one operator prompt a second; first token within 2 s (an interactive assistant)")

    name = "factory-llm"
    scenario = ("On-prem industrial assistant LLM: prefill of a 128-token operator prompt "
                "(time to first token); small Llama-style decoder, fidelity only")
    version = "1"
    # class-level names are those of the default (4-layer) graph; instances set their own
    input_names = ("input_ids",)
    output_names = ("logits", *(f"present.{i}.{k}" for i in range(4) for k in ("key", "value")))
    serving_metric: ClassVar[str] = "time_to_first_token"

    graph: str = "prefill"
    vocab: int = 32000
    d_model: int = 256
    layers: int = 4
    heads: int = 8
    kv_heads: int = 4
    ffn: int = 704
    prompt_len: int = 128  # prefill: tokens in the prompt
    past_len: int = 128  # decode: tokens already in the KV cache
    max_pos: int = 2048

    def __post_init__(self) -> None:
        if self.graph not in ("prefill", "decode"):
            raise ValueError("graph must be 'prefill' or 'decode'")
        kv = [f"{d}.{i}.{kind}" for d in ("past",) for i in range(self.layers)
              for kind in ("key", "value")]
        present = [n.replace("past", "present") for n in kv]
        ins = ("input_ids",) if self.graph == "prefill" else ("input_ids", "position", *kv)
        # instance attributes shadow the class defaults (the names depend on `layers`)
        object.__setattr__(self, "input_names", ins)
        object.__setattr__(self, "output_names", ("logits", *present))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    def _core(self) -> Any:
        from .nets.llama import LlamaModel
        from .training import deterministic

        with deterministic(self.seed):
            m = LlamaModel(self.vocab, self.d_model, self.layers, self.heads, self.kv_heads,
                           self.ffn, self.max_pos)
        m.requires_grad_(False)
        return m.eval()

    def build(self) -> Any:
        from .nets.llama import LlamaDecode, LlamaPrefill

        core = self._core()
        return (LlamaPrefill if self.graph == "prefill" else LlamaDecode)(core).eval()

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Batch is dynamic everywhere; the prompt length in prefill (input_ids and the present
        K/V it returns), the past length in decode (past K/V in, present K/V of past + 1 out)."""
        axes = {n: {0: "batch"} for n in (*self.input_names, *self.output_names)}
        if self.graph == "prefill":
            axes["input_ids"] = {0: "batch", 1: "prompt"}
            for n in self.output_names[1:]:
                axes[n] = {0: "batch", 2: "prompt"}
        else:
            for n in self.input_names[2:]:
                axes[n] = {0: "batch", 2: "past"}
            for n in self.output_names[1:]:
                axes[n] = {0: "batch", 2: "past_plus_1"}
        return axes

    def generation(self) -> GenerationGraphs:
        """The generation capability (chipbench.generation): this model's prefill and decode
        graphs, sharing the seeded weights, and how decode's past K/V inputs take prefill's (and
        its own previous step's) present K/V outputs."""
        prefill = dataclasses.replace(self, graph="prefill")
        decode = dataclasses.replace(self, graph="decode")
        cache = {p: p.replace("past.", "present.", 1) for p in decode.input_names[2:]}
        return GenerationGraphs(prefill, decode, self.vocab, self.max_pos, cache)

    def make_inputs(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        from .data import text

        rng = input_rng(seed, self.name)
        if self.graph == "prefill":
            ids, _ = text.token_ids(rng, batch, self.prompt_len, self.vocab, bert=False)
            return {"input_ids": ids}
        import torch

        from .nets.llama import LlamaPrefill

        ids, _ = text.token_ids(rng, batch, self.past_len + 1, self.vocab, bert=False)
        with torch.no_grad():
            out = LlamaPrefill(self._core())(torch.from_numpy(ids[:, :-1]))
        inputs = {"input_ids": ids[:, -1:].copy(),
                  "position": np.full(batch, self.past_len, np.int64)}
        for name, t in zip(self.input_names[2:], out[1:]):
            inputs[name] = t.numpy()
        return inputs


@register
@dataclass(frozen=True)
class FactoryLLMDecode(FactoryLLM):
    """Small Llama-style decoder, one decode step with a KV cache of `past_len` tokens
    (tokens per second = batch / step latency). Seeded, fidelity only."""

    name = "factory-llm-decode"
    scenario = ("On-prem industrial assistant LLM: one generation step with a 128-token KV cache "
                "(tokens per second); small Llama-style decoder, fidelity only")
    serving_metric: ClassVar[str] = "tokens_per_s"
    input_names = ("input_ids", "position",
                   *(f"past.{i}.{k}" for i in range(4) for k in ("key", "value")))

    graph: str = "decode"
