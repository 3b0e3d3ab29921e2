"""data2vec regression targets from the teacher's top-K blocks (written once, used by every modality).

The paper's target for a time step / token / patch is the average of the outputs of the teacher's
top K transformer blocks, where the "output" of a block is its feed-forward output *before* the last
residual connection, and each block's output is normalised before averaging (speech: instance norm
over time; text and images: layer norm over channels). The average may be normalised once more.
"""

from dataclasses import dataclass, field
from typing import List, Sequence

import torch.nn.functional as F
from torch import Tensor

from fairseq.dataclass import FairseqDataclass


@dataclass
class TargetConfig(FairseqDataclass):
    """Target options. The names are fairseq's official data2vec ones."""

    average_top_k_layers: int = field(
        default=8, metadata={"help": "number of top teacher blocks averaged into the target (K)"}
    )
    instance_norm_target_layer: bool = field(
        default=False,
        metadata={"help": "instance-normalise each block output over time before averaging (speech)"},
    )
    layer_norm_target_layer: bool = field(
        default=False,
        metadata={"help": "layer-normalise each block output over channels before averaging (text, images)"},
    )
    batch_norm_target_layer: bool = field(
        default=False,
        metadata={"help": "normalise each block output per channel over batch and time before averaging"},
    )
    group_norm_target_layer: bool = field(
        default=False,
        metadata={"help": "normalise each block output over time and channels together before averaging"},
    )
    instance_norm_targets: bool = field(
        default=False, metadata={"help": "instance-normalise the averaged target over time"}
    )
    layer_norm_targets: bool = field(
        default=False, metadata={"help": "layer-normalise the averaged target over channels"}
    )


def make_targets(layer_outputs: Sequence[Tensor], cfg: TargetConfig) -> Tensor:
    """Average the normalised block outputs of the teacher into regression targets.

    Args:
        layer_outputs: the teacher's top-K block outputs, each ``(B, T, C)`` (batch, time/tokens/
            patches, channels), in any float dtype.
        cfg: which normalisations to apply (see :class:`TargetConfig`).

    Returns:
        ``(B, T, C)`` fp32 targets for every position; the caller picks the masked ones.

    Per-block normalisations run in this order: batch norm, instance norm, group norm, layer norm.
    Padded positions are not excluded from the instance-norm statistics (fairseq's behaviour).
    """
    normed: List[Tensor] = []
    for y in layer_outputs:
        y = y.float()
        if cfg.batch_norm_target_layer or cfg.instance_norm_target_layer:
            y = y.transpose(1, 2)  # (B, C, T): the layout F.batch_norm / F.instance_norm expect
            if cfg.batch_norm_target_layer:
                y = F.batch_norm(y, running_mean=None, running_var=None, training=True)
            if cfg.instance_norm_target_layer:
                y = F.instance_norm(y)
            y = y.transpose(1, 2)
        if cfg.group_norm_target_layer:
            y = F.layer_norm(y, y.shape[-2:])
        if cfg.layer_norm_target_layer:
            y = F.layer_norm(y, y.shape[-1:])
        normed.append(y)

    target = sum(normed) / len(normed)

    if cfg.layer_norm_targets:
        target = F.layer_norm(target, target.shape[-1:])
    if cfg.instance_norm_targets:
        target = F.instance_norm(target.transpose(1, 2)).transpose(1, 2)
    return target
