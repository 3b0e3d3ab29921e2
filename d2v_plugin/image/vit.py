"""The Vision Transformer encoder of data2vec images (BEiT's, as in data2vec's vision experiments).

Pre-LayerNorm blocks with *layer scale* (each residual branch multiplied by a learned per-channel
vector, initialised small so that a deep model starts close to the identity) and *stochastic depth*
(a residual branch dropped for a whole sample with a probability that grows linearly with depth).
Positions are encoded only by a learned relative-position bias on the attention logits, shared by
all blocks; a [CLS] token is prepended. The attention and norms are fairseq's
:class:`~fairseq.modules.MultiheadAttention` and :class:`~fairseq.modules.LayerNorm`.

Layout: the public API is batch-first ``(B, T, C)`` with ``T = 1 + number of patches`` ([CLS] first);
blocks run time-first ``(T, B, C)``, the layout fairseq's attention expects.
"""

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from fairseq import utils
from fairseq.modules import LayerNorm, MultiheadAttention


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero the residual branch ``x (T, B, C)`` of a random subset of samples.

    Kept samples are scaled by ``1/(1-p)`` so the expected output is unchanged.
    """
    if p == 0.0 or not training:
        return x
    keep = torch.empty(1, x.size(1), 1, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


def relative_position_index(height: int, width: int) -> Tensor:
    """``(1+N, 1+N)`` index into the bias table for every (query, key) pair, [CLS] first.

    Patch pairs use their 2-D offset ``(dy, dx)``, shifted to be non-negative and flattened to
    ``(dy + H - 1) * (2W - 1) + (dx + W - 1)``. The three entries after the ``(2H-1)(2W-1)`` offsets
    are [CLS]->patch, patch->[CLS] and [CLS]->[CLS] (BEiT's table layout, so its weights load as they are).
    """
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + height - 1
    dx = xs[:, None] - xs[None, :] + width - 1
    num_offsets = (2 * height - 1) * (2 * width - 1)
    n = height * width + 1
    index = torch.empty(n, n, dtype=torch.long)
    index[1:, 1:] = dy * (2 * width - 1) + dx
    index[0, :] = num_offsets
    index[:, 0] = num_offsets + 1
    index[0, 0] = num_offsets + 2
    return index


class RelativePositionBias(nn.Module):
    """Learned attention-logit bias per head for each relative offset on the patch grid."""

    def __init__(self, grid: Tuple[int, int], num_heads: int):
        super().__init__()
        height, width = grid
        self.table = nn.Parameter(torch.zeros((2 * height - 1) * (2 * width - 1) + 3, num_heads))
        # A function of the grid alone: rebuilt, not saved.
        self.register_buffer("index", relative_position_index(height, width), persistent=False)

    def forward(self) -> Tensor:
        """Returns the ``(H, 1+N, 1+N)`` bias (heads, queries, keys)."""
        n = self.index.size(0)
        return self.table[self.index.view(-1)].view(n, n, -1).permute(2, 0, 1)


class ViTBlock(nn.Module):
    """``x + ls1 * attn(LN(x))`` then ``x + ls2 * mlp(LN(x))``, each branch under stochastic depth."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, attention_dropout: float,
                 drop_path_rate: float, layer_scale_init: float, layer_norm_eps: float):
        super().__init__()
        self.self_attn_layer_norm = LayerNorm(dim, eps=layer_norm_eps)
        self.self_attn = MultiheadAttention(dim, num_heads, dropout=attention_dropout, self_attention=True)
        self.final_layer_norm = LayerNorm(dim, eps=layer_norm_eps)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.activation_fn = utils.get_activation_fn("gelu")
        self.fc2 = nn.Linear(hidden, dim)
        if layer_scale_init > 0:
            self.attn_layer_scale = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
            self.ffn_layer_scale = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        else:
            self.attn_layer_scale = self.ffn_layer_scale = None
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor, attn_bias: Tensor) -> Tuple[Tensor, Tensor]:
        """``x``: ``(T, B, C)``; ``attn_bias``: ``(B*H, T, T)``, added to the attention logits.

        Returns the block output and the feed-forward branch before the residual sum, both ``(T, B, C)``.
        """
        h = self.self_attn_layer_norm(x)
        h, _ = self.self_attn(h, h, h, attn_mask=attn_bias, need_weights=False)
        if self.attn_layer_scale is not None:
            h = h * self.attn_layer_scale
        x = x + drop_path(h, self.drop_path_rate, self.training)

        h = self.fc2(self.activation_fn(self.fc1(self.final_layer_norm(x))))
        if self.ffn_layer_scale is not None:
            h = h * self.ffn_layer_scale
        h = drop_path(h, self.drop_path_rate, self.training)
        return x + h, h


class ViTEncoder(nn.Module):
    """The stack of blocks, the shared relative position bias and a final LayerNorm."""

    def __init__(self, grid: Tuple[int, int], embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float, attention_dropout: float, drop_path: float,
                 layer_scale_init_value: float, layer_norm_eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.rel_pos_bias = RelativePositionBias(grid, num_heads)
        rates = torch.linspace(0, drop_path, depth).tolist()  # deeper blocks are dropped more often
        self.layers = nn.ModuleList(
            ViTBlock(embed_dim, num_heads, mlp_ratio, attention_dropout, rates[i],
                     layer_scale_init_value, layer_norm_eps)
            for i in range(depth)
        )
        self.layer_norm: Optional[nn.Module] = LayerNorm(embed_dim, eps=layer_norm_eps)
        init_vit_weights(self)

    def forward(self, x: Tensor, block_outputs: Optional[str] = None, top_k: int = 0):
        """``x``: ``(B, T, C)`` [CLS] + patch embeddings.

        Returns the final-normed ``(B, T, C)`` output, or, with ``block_outputs`` set, the list of
        the last ``top_k`` blocks' ``(B, T, C)`` outputs: ``"end"`` = the block output after its
        last residual sum, ``"fc"`` = the feed-forward branch before it.
        """
        B, T, _ = x.shape
        bias = self.rel_pos_bias().to(x.dtype)  # (H, T, T)
        bias = bias.unsqueeze(0).expand(B, -1, -1, -1).reshape(B * self.num_heads, T, T)
        x = x.transpose(0, 1)
        first_kept = len(self.layers) - top_k
        outputs: List[Tensor] = []
        for i, layer in enumerate(self.layers):
            x, ffn = layer(x, bias)
            if block_outputs is not None and i >= first_kept:
                outputs.append((x if block_outputs == "end" else ffn).transpose(0, 1))
        if block_outputs is not None:
            return outputs
        x = x.transpose(0, 1)
        return self.layer_norm(x) if self.layer_norm is not None else x


def init_vit_weights(encoder: ViTEncoder, std: float = 0.02) -> None:
    """BEiT's initialisation: truncated normal linears, unit LayerNorms, and the output projections
    of block ``l`` (1-based) divided by ``sqrt(2 l)`` so deeper residual branches start smaller."""
    for m in encoder.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for depth, layer in enumerate(encoder.layers, start=1):
            layer.self_attn.out_proj.weight.div_(math.sqrt(2.0 * depth))
            layer.fc2.weight.div_(math.sqrt(2.0 * depth))
