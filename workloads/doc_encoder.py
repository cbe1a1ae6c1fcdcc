"""doc-encoder: maintenance-log understanding with a BERT-base-style encoder.

Technicians' free-text maintenance notes are embedded (search for similar past failures,
routing, failure-code suggestion) by a BERT-base-sized encoder: 12 post-norm layers,
d_model 768, 12 heads, FFN 3072, vocabulary 30522, sequence 128 (~110 M parameters, ~11 GMAC
per sequence). Inputs are int64 token ids and an int64 attention mask drawn from tokenised
synthetic maintenance notes (`workloads/data/text.py`, with padding). Weights are seeded
(BERT initialisation); this is a comparability model, fidelity only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._common import input_rng
from .base import Arrival, Workload, register


@register
@dataclass(frozen=True)
class DocEncoder(Workload):
    """BERT-base-style encoder: input_ids, attention_mask [B, 128] int64 ->
    last_hidden_state [B, 128, 768], pooled [B, 768]. Seeded weights, fidelity only."""
    arrival = Arrival(2.0, 500.0, 99.0, "technicians searching logs, about 2 notes/s; an interactive answer within 500 ms")

    name = "doc-encoder"
    scenario = ("Maintenance-log understanding: embed 128-token technician notes for search and "
                "failure-code routing (BERT-base-style encoder, fidelity only)")
    version = "1"
    input_names = ("input_ids", "attention_mask")
    output_names = ("last_hidden_state", "pooled")

    seq: int = 128
    vocab: int = 30522
    d_model: int = 768
    layers: int = 12
    heads: int = 12
    ff: int = 3072

    def build(self) -> Any:
        from .nets.bert import BertEncoder
        from .training import deterministic

        with deterministic(self.seed):
            m = BertEncoder(self.vocab, self.seq, self.d_model, self.layers,
                            self.heads, self.ff, max_len=max(512, self.seq))
        m.requires_grad_(False)
        return m.eval()

    def make_inputs(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        from .data import text

        ids, mask = text.token_ids(input_rng(seed, self.name), batch, self.seq, self.vocab,
                                   bert=True)
        return {"input_ids": ids, "attention_mask": mask}
