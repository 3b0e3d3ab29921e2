"""data2vec 2.0's transformer, shared by the three modalities and by student and teacher.

``(B, T, C)`` embeddings (the student's kept tokens, or the teacher's full sequence) -> layer norm (post-LN
models) -> dropout -> ``prenet_depth`` modality blocks -> ``dropout_input`` -> ``depth`` blocks (-> final
layer norm for pre-LN models). Every block gets the same additive attention bias: ALiBi from the tokens'
original positions, when the modality uses it, and ``-inf`` at padded keys. The teacher's targets are the
per-block targets of the ``depth`` blocks (:class:`~d2v_plugin.core.block.Block`), not the prenet's.

Where fairseq's data2vec_multi splits this between a modality's "context encoder" and the model's blocks,
it is one module here so that an EMA teacher tracks it as one piece.
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from d2v_plugin.core.alibi import AlibiBias
from d2v_plugin.core.block import Block, attention_bias


class Data2Vec2Transformer(nn.Module):
    """Args: ``dim``, ``heads``, ``depth`` and ``mlp_ratio``; ``prenet_depth`` modality blocks in front;
    dropouts; ``layer_norm_first`` (pre-LN); ``alibi``: an :class:`AlibiBias` or None."""

    def __init__(self, dim: int, heads: int, depth: int, mlp_ratio: float = 4.0, *, prenet_depth: int = 0,
                 dropout: float = 0.0, attention_dropout: float = 0.0, activation_dropout: float = 0.0,
                 post_mlp_drop: float = 0.0, prenet_dropout: float = 0.0, dropout_input: float = 0.0,
                 layerdrop: float = 0.0, layer_norm_first: bool = False, norm_eps: float = 1e-6,
                 end_of_block_targets: bool = False, alibi: Optional[AlibiBias] = None):
        super().__init__()

        def block() -> Block:
            return Block(dim, heads, mlp_ratio, dropout=dropout, attention_dropout=attention_dropout,
                         activation_dropout=activation_dropout, post_mlp_drop=post_mlp_drop,
                         layer_norm_first=layer_norm_first, norm_eps=norm_eps,
                         end_of_block_targets=end_of_block_targets)

        self.layer_norm_first = layer_norm_first
        self.context_norm = None if layer_norm_first else nn.LayerNorm(dim, eps=norm_eps)
        self.prenet_dropout = nn.Dropout(prenet_dropout)
        self.prenet = nn.ModuleList(block() for _ in range(prenet_depth))
        self.dropout_input = nn.Dropout(dropout_input)
        self.blocks = nn.ModuleList(block() for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if layer_norm_first else None
        self.layerdrop = layerdrop
        self.alibi = alibi

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None, positions: Optional[Tensor] = None,
                extra_tokens: int = 0, min_target_layer: Optional[int] = None) -> Tuple[Tensor, List[Tensor]]:
        """Args:
            x: ``(B, T, C)``, ``extra_tokens`` of them (e.g. [CLS]) first.
            padding_mask: ``(B, T)`` bool, ``True`` = padding, or None.
            positions: ``(B, T - extra_tokens)`` or ``(T - extra_tokens,)`` original time index of each
                (non-extra) token, for ALiBi.
            min_target_layer: collect the block targets of blocks ``>= min_target_layer`` (None: none).

        Returns the output ``(B, T, C)`` and the collected targets, each ``(B, T - extra_tokens, C)``.
        """
        bias = None
        if self.alibi is not None:
            if positions is None:
                positions = torch.arange(x.size(1) - extra_tokens, device=x.device)
            bias = self.alibi(positions)
            if extra_tokens:  # extra tokens attend and are attended to without a distance penalty
                bias = nn.functional.pad(bias, (extra_tokens, 0, extra_tokens, 0))
        bias = attention_bias(padding_mask, bias)

        if self.context_norm is not None:
            x = self.context_norm(x)
        x = self.prenet_dropout(x)
        for blk in self.prenet:
            x, _ = blk(x, bias)
        x = self.dropout_input(x)
        targets = []
        for i, blk in enumerate(self.blocks):
            if self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop:
                continue
            x, target = blk(x, bias)
            if min_target_layer is not None and i >= min_target_layer:
                targets.append(target[:, extra_tokens:])
        if self.norm is not None:
            x = self.norm(x)
        return x, targets
