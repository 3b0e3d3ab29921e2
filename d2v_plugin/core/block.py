"""The transformer block of data2vec 2.0 (all three modalities): fused-qkv attention and an MLP.

Parameter names follow fairseq's data2vec_multi ``AltBlock`` (``attn.qkv``, ``attn.proj``, ``mlp.fc1``,
``mlp.fc2``, ``norm1``, ``norm2``), so its checkpoints map one to one. Each block returns its output and
its *target*: the MLP output before dropout and the last residual, which the teacher's top-K blocks
contribute to the regression targets (``end_of_block_targets``: the block output instead).

One deliberate difference from the reference: with ``layer_norm_first`` (pre-LN) the reference's block
drops the residual stream (its output is ``mlp(x) + mlp(x)``); ours keeps it,
``x + mlp(norm2(x))``. The paper's models are post-LN, where both agree.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention with one qkv projection and an optional additive bias (ALiBi, padding)."""

    def __init__(self, dim: int, heads: int, attention_dropout: float = 0.0, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {heads} attention heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_dropout = attention_dropout
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        """``x``: ``(B, T, C)``; ``bias``: additive logits broadcastable to ``(B, H, T, T)``
        (``-inf`` at padded keys)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        if bias is not None:
            bias = bias.to(q.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                           dropout_p=self.attention_dropout if self.training else 0.0)
        return self.dropout(self.proj(x.transpose(1, 2).reshape(B, T, C)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, activation_dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """``(B, T, C) -> ((B, T, C) output, (B, T, C) target)``.

    Post-LN (the paper): ``x = norm1(x + attn(x)); out = norm2(x + drop(mlp(x)))``, target ``mlp(x)``.
    Pre-LN: ``x = x + attn(norm1(x)); out = x + drop(mlp(norm2(x)))``, target ``mlp(norm2(x))``.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, *, dropout: float = 0.0,
                 attention_dropout: float = 0.0, activation_dropout: float = 0.0, post_mlp_drop: float = 0.0,
                 layer_norm_first: bool = False, norm_eps: float = 1e-6, end_of_block_targets: bool = False):
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.end_of_block_targets = end_of_block_targets
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, heads, attention_dropout, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), activation_dropout)
        self.post_mlp_dropout = nn.Dropout(post_mlp_drop)

    def forward(self, x: Tensor, bias: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        if self.layer_norm_first:
            x = x + self.attn(self.norm1(x), bias)
            target = self.mlp(self.norm2(x))
            x = x + self.post_mlp_dropout(target)
        else:
            x = self.norm1(x + self.attn(x, bias))
            target = self.mlp(x)
            x = self.norm2(x + self.post_mlp_dropout(target))
        return x, (x if self.end_of_block_targets else target)


def attention_bias(padding_mask: Optional[Tensor], alibi: Optional[Tensor], dtype=torch.float32) -> Optional[Tensor]:
    """One additive bias for every block: the ALiBi bias ``(B|1, H, T, T)`` plus ``-inf`` at the padded
    keys of ``padding_mask`` ``(B, T)`` (``True`` = padding). None when there is neither."""
    if padding_mask is not None and not padding_mask.any():
        padding_mask = None
    if padding_mask is None:
        return alibi
    pad = torch.zeros(padding_mask.shape, dtype=dtype, device=padding_mask.device)
    pad = pad.masked_fill(padding_mask, float("-inf"))[:, None, None, :]  # (B, 1, 1, T)
    return pad if alibi is None else alibi + pad
