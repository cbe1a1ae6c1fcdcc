"""BERT-style encoder (post-norm, GELU, learned positions, token-type embeddings, tanh pooler)
with an additive attention mask computed in the graph from the int64 attention mask."""

from __future__ import annotations

import torch
from torch import nn

from .transformer import EncoderLayer


class BertEncoder(nn.Module):
    def __init__(self, vocab: int, seq: int, d_model: int, layers: int, heads: int,
                 ff: int, type_vocab: int = 2, max_len: int = 512) -> None:
        super().__init__()
        self.seq = seq  # fixed sequence length: positions are a constant slice, no Shape ops
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.typ = nn.Embedding(type_vocab, d_model)
        self.ln = nn.LayerNorm(d_model, eps=1e-12)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, heads, ff, pre_norm=False, eps=1e-12) for _ in range(layers)
        )
        self.pooler = nn.Linear(d_model, d_model)
        for m in self.modules():  # BERT's initialisation
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        # single-segment input: token type 0 everywhere
        h = self.ln(self.tok(input_ids) + self.pos.weight[: self.seq] + self.typ.weight[0])
        mask = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * -10000.0
        for layer in self.layers:
            h = layer(h, mask)
        pooled = torch.tanh(self.pooler(h[:, 0]))
        return h, pooled
