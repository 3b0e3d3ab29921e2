"""data2vec 2.0's light convolutional decoder: fills in the masked positions and predicts the targets.

The student's outputs at the kept positions and noise tokens at the masked ones (:func:`~d2v_plugin.core.
unmasked.fill_masked`) go through ``decoder_layers`` blocks of grouped convolution -> LayerNorm over
channels (no affine) -> GELU, each with a residual connection when its input has the decoder's width,
then a linear projection back to the model width. 1-D over time for audio and text, 2-D over the patch
grid for images. That projection is the model's regression head (``final_proj``, see
``TeacherStudentMixin``), applied only at the masked positions.
"""

from dataclasses import dataclass, field
from typing import Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from fairseq.dataclass import FairseqDataclass

from d2v_plugin.core.unmasked import KeptTokens, fill_masked


@dataclass
class DecoderConfig(FairseqDataclass):
    """The decoder's options (fairseq's data2vec_multi ``modalities.<m>.decoder.*``, flattened)."""

    decoder_dim: int = field(default=384, metadata={"help": "data2vec 2.0: channels of the conv decoder"})
    decoder_kernel: int = field(default=5, metadata={"help": "data2vec 2.0: conv decoder kernel size"})
    decoder_layers: int = field(default=5, metadata={"help": "data2vec 2.0: conv decoder blocks"})
    decoder_groups: int = field(default=16, metadata={"help": "data2vec 2.0: groups of each decoder conv"})
    decoder_residual: bool = field(
        default=True, metadata={"help": "data2vec 2.0: residual connection around each decoder block"})
    decoder_input_dropout: float = field(
        default=0.1, metadata={"help": "data2vec 2.0: dropout on the student's outputs entering the decoder"})
    projection_layers: int = field(
        default=1, metadata={"help": "data2vec 2.0: linear layers of the regression head after the decoder "
                                     "(GELU between them; the text recipe uses 2)"})
    projection_ratio: float = field(
        default=2.0, metadata={"help": "data2vec 2.0: width of the head's hidden layers, x decoder_dim"})


def build_projection(cfg: DecoderConfig, dim: int) -> nn.Module:
    """The regression head after the decoder: ``decoder_dim -> dim`` in ``projection_layers`` linear layers
    (the first hidden one ``projection_ratio`` times wider, GELU between them), as fairseq's data2vec_multi.
    ``projection_layers >= 1`` is checked with the other options (core/validation.py)."""
    if cfg.projection_layers == 1:
        return nn.Linear(cfg.decoder_dim, dim)
    layers, width = [], cfg.decoder_dim
    for i in range(cfg.projection_layers - 1):
        hidden = int(width * cfg.projection_ratio) if i == 0 else width
        layers += [nn.Linear(width, hidden), nn.GELU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, dim))


class ConvDecoder(nn.Module):
    """The student's ``(B, K, C)`` kept-token outputs -> ``(B, T, decoder_dim)`` at every position
    (1-D; 2-D with ``grid=(H, W)``, ``T = H*W`` in row-major patch order)."""

    def __init__(self, cfg: DecoderConfig, dim: int, grid: Tuple[int, ...] = ()):
        super().__init__()
        if len(grid) not in (0, 2):
            raise ValueError(f"grid must be () for a 1-D decoder or (H, W) for a 2-D one, got {grid}")
        self.grid = tuple(grid)
        conv = nn.Conv2d if self.grid else nn.Conv1d
        k = cfg.decoder_kernel
        self.convs = nn.ModuleList(
            conv(dim if i == 0 else cfg.decoder_dim, cfg.decoder_dim, kernel_size=k, padding=k // 2,
                 groups=cfg.decoder_groups)
            for i in range(cfg.decoder_layers))
        self.residual = cfg.decoder_residual
        # an even kernel with padding k // 2 makes one extra output step per dimension: it is cut off
        self.trim = 1 if k % 2 == 0 else 0
        self.input_dropout = nn.Dropout(cfg.decoder_input_dropout)

    def forward(self, x_kept: Tensor, kept: KeptTokens, noise_std: float) -> Tensor:
        # dropout on the student's outputs only, out of place (the reference's in-place dropout also
        # changed the encoder output that its CLS loss reads)
        x = fill_masked(self.input_dropout(x_kept), kept, noise_std)
        B, T, C = x.shape
        x = x.transpose(1, 2)  # (B, C, T)
        if self.grid:
            x = x.reshape(B, C, *self.grid)
        for conv in self.convs:
            y = conv(x)
            if self.trim:
                y = y[..., :-1, :-1] if self.grid else y[..., :-1]
            y = F.gelu(F.layer_norm(y.movedim(1, -1), y.shape[1:2]).movedim(-1, 1))
            x = y + x if self.residual and y.shape == x.shape else y
        return x.reshape(B, x.size(1), T).transpose(1, 2)
