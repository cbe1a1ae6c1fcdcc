"""Transformer encoder pieces with explicit attention (MatMul/Softmax), which export cleanly
to ONNX opset 17 and import into TVM Relax (no fused MultiHeadAttention op)."""

from __future__ import annotations

import math

import torch
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        assert d_model % heads == 0, "d_model must divide by heads"
        self.heads = heads
        self.dh = d_model // heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, self.dh).permute(2, 0, 3, 1, 4)
        att = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.dh))
        if mask is not None:
            att = att + mask  # additive: 0 keep, large negative drop
        att = torch.softmax(att, dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).reshape(b, t, d)
        return self.out(y)


class EncoderLayer(nn.Module):
    """Pre-norm (default) or post-norm (BERT) encoder layer: attention + GELU MLP."""

    def __init__(self, d_model: int, heads: int, ff: int, pre_norm: bool = True,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.attn = SelfAttention(d_model, heads)
        self.ln1 = nn.LayerNorm(d_model, eps=eps)
        self.ln2 = nn.LayerNorm(d_model, eps=eps)
        self.ff = nn.Sequential(nn.Linear(d_model, ff), nn.GELU(), nn.Linear(ff, d_model))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.ln1(x), mask)
            return x + self.ff(self.ln2(x))
        x = self.ln1(x + self.attn(x, mask))
        return self.ln2(x + self.ff(x))


class SensorTransformer(nn.Module):
    """Token per time step: a 3-tap Conv1d over the sensor vectors (Informer-style token
    embedding: each token sees its neighbours), learned positions, pre-norm encoder, mean
    pooling over time, linear head."""

    def __init__(self, steps: int, channels: int, d_model: int, layers: int, heads: int,
                 num_classes: int, ff_mult: int = 4) -> None:
        super().__init__()
        self.embed = nn.Conv1d(channels, d_model, 3, padding=1)
        self.pos = nn.Parameter(torch.randn(1, steps, d_model) * 0.02)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, heads, ff_mult * d_model) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.transpose(1, 2)).transpose(1, 2) + self.pos
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm(h).mean(dim=1))
