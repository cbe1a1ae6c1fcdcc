"""Small Llama-style decoder: RMSNorm, rotary position embedding (RoPE), SwiGLU MLP, grouped-
query attention, untied LM head. Two graphs share the weights:

- `LlamaPrefill(input_ids [B, T]) -> logits of the last position [B, V], present K/V per layer
  [B, kv_heads, T, head_dim]` (causal attention over the prompt; time to first token);
- `LlamaDecode(input_ids [B, 1], position [B], past K/V per layer [B, kv_heads, P, head_dim])
  -> logits [B, V], present K/V [B, kv_heads, P + 1, head_dim]` (one generation step).
"""

from __future__ import annotations

import torch
from torch import nn

NEG = -1e4  # additive mask value; safe in fp16


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(max_pos: int, head_dim: int, theta: float = 10000.0):
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cos(ang).float(), torch.sin(ang).float()  # [max_pos, head_dim / 2]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]; cos/sin [B, 1, T, D/2]; rotate-half convention (as Llama in HF)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.h, self.kv, self.dh = heads, kv_heads, d // heads
        self.q = nn.Linear(d, heads * self.dh, bias=False)
        self.k = nn.Linear(d, kv_heads * self.dh, bias=False)
        self.v = nn.Linear(d, kv_heads * self.dh, bias=False)
        self.o = nn.Linear(heads * self.dh, d, bias=False)

    def forward(self, x, cos, sin, past_k=None, past_v=None, mask=None):
        b, t, _ = x.shape
        q = self.q(x).reshape(b, t, self.h, self.dh).transpose(1, 2)
        k = self.k(x).reshape(b, t, self.kv, self.dh).transpose(1, 2)
        v = self.v(x).reshape(b, t, self.kv, self.dh).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        rep = self.h // self.kv  # grouped-query attention: share each K/V head
        kk = k.repeat_interleave(rep, dim=1) if rep > 1 else k
        vv = v.repeat_interleave(rep, dim=1) if rep > 1 else v
        att = torch.matmul(q, kk.transpose(-1, -2)) * (self.dh ** -0.5)
        if mask is not None:
            att = att + mask
        y = torch.matmul(torch.softmax(att, dim=-1), vv)
        return self.o(y.transpose(1, 2).reshape(b, t, self.h * self.dh)), k, v


class Block(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int, ffn: int) -> None:
        super().__init__()
        self.attn_norm, self.mlp_norm = RMSNorm(d), RMSNorm(d)
        self.attn = Attention(d, heads, kv_heads)
        self.gate = nn.Linear(d, ffn, bias=False)
        self.up = nn.Linear(d, ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def forward(self, x, cos, sin, past_k=None, past_v=None, mask=None):
        a, k, v = self.attn(self.attn_norm(x), cos, sin, past_k, past_v, mask)
        x = x + a
        h = self.mlp_norm(x)
        return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h)), k, v


class LlamaModel(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, kv_heads: int, ffn: int,
                 max_pos: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, kv_heads, ffn) for _ in range(layers))
        self.norm = RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        cos, sin = rope_tables(max_pos, d // heads)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
        for blk in self.blocks:  # scaled residual projections (GPT-2 style) keep depth stable
            nn.init.normal_(blk.attn.o.weight, std=0.02 / (2 * layers) ** 0.5)
            nn.init.normal_(blk.down.weight, std=0.02 / (2 * layers) ** 0.5)


class LlamaPrefill(nn.Module):
    def __init__(self, model: LlamaModel) -> None:
        super().__init__()
        self.m = model

    def forward(self, input_ids: torch.Tensor):
        m = self.m
        t = input_ids.shape[1]
        x = m.embed(input_ids)
        cos, sin = m.cos[:t][None, None], m.sin[:t][None, None]
        mask = torch.triu(torch.full((t, t), NEG, dtype=x.dtype), diagonal=1)
        presents = []
        for blk in m.blocks:
            x, k, v = blk(x, cos, sin, mask=mask)
            presents += [k, v]
        logits = m.lm_head(m.norm(x[:, -1]))
        return (logits, *presents)


class LlamaDecode(nn.Module):
    def __init__(self, model: LlamaModel) -> None:
        super().__init__()
        self.m = model

    def forward(self, input_ids: torch.Tensor, position: torch.Tensor, *past: torch.Tensor):
        m = self.m
        x = m.embed(input_ids)  # [B, 1, d]
        cos = m.cos[position][:, None, None]  # [B, 1, 1, D/2]
        sin = m.sin[position][:, None, None]
        presents = []
        for i, blk in enumerate(m.blocks):
            x, k, v = blk(x, cos, sin, past[2 * i], past[2 * i + 1])
            presents += [k, v]
        logits = m.lm_head(m.norm(x[:, -1]))
        return (logits, *presents)
