"""ALiBi attention biases (Press et al. 2022) for sequences whose tokens may have been dropped.

data2vec 2.0's audio encoder adds ``-slope_h * |t_i - t_j|`` to the attention logits of head ``h``, with a
learned non-negative scale per head. The student attends over its kept tokens only, so the bias is
built from each token's *original* time index: ``(B, K)`` positions give a ``(B, H, K, K)`` bias
directly, instead of building the full ``(B*H, T, T)`` bias and gathering rows and columns out of it
(what fairseq's data2vec_multi does, caching B*H copies of it).
"""

import math
from typing import List, Optional

import torch
from torch import Tensor, nn


def alibi_slopes(heads: int) -> List[float]:
    """The ALiBi paper's head slopes: a geometric sequence starting at ``2^(-8/n)`` for n a power of 2;
    for other head counts, those of the nearest lower power of 2 followed by every other slope of the
    next one."""

    def power_of_2(n: int) -> List[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_2(heads)
    lower = 2 ** math.floor(math.log2(heads))
    return power_of_2(lower) + alibi_slopes(2 * lower)[0::2][: heads - lower]


class AlibiBias(nn.Module):
    """The scaled ALiBi bias of ``heads`` heads, with an optional learned scale per head.

    Args:
        heads: attention heads.
        scale: initial scale of every head's slopes (fairseq's ``alibi_scale``).
        learned: learn the scales (``learned_alibi_scale``); ``per_head``: one scale per head, else one.
    """

    def __init__(self, heads: int, scale: float = 1.0, learned: bool = False, per_head: bool = False):
        super().__init__()
        self.register_buffer("slopes", torch.tensor(alibi_slopes(heads)), persistent=False)
        self.scale = nn.Parameter(torch.full((heads if per_head else 1,), float(scale)), requires_grad=learned)

    def forward(self, positions: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
        """``(B, K)`` or ``(K,)`` time indices -> ``(B or 1, H, K, K)`` additive attention bias."""
        if positions.dim() == 1:
            positions = positions.unsqueeze(0)
        distance = (positions.unsqueeze(-1) - positions.unsqueeze(-2)).abs().to(torch.float32)  # (B, K, K)
        # the scale is clamped at 0: a negative scale would reward attending far away
        slopes = self.slopes * self.scale.clamp_min(0)  # (H,)
        bias = distance.unsqueeze(1) * -slopes.view(1, -1, 1, 1)
        return bias if dtype is None else bias.to(dtype)
