"""Masks for the student's view. ``True`` marks a masked position everywhere in this package.

Speech and text use spans / tokens over a sequence; images use blocks of patches (added with the
image model). The span sampler itself is fairseq's ``compute_mask_indices`` (what wav2vec 2.0 and
the paper use); this module gives it a tensor-in, tensor-out face and the options' meaning.
"""

from typing import Optional

import torch
from torch import Tensor

from fairseq.data.data_utils import compute_mask_indices


def span_mask(
    batch: int,
    length: int,
    mask_prob: float,
    mask_length: int,
    padding_mask: Optional[Tensor] = None,
    *,
    mask_selection: str = "static",
    mask_other: float = 0.0,
    min_masks: int = 0,
    no_overlap: bool = False,
    min_space: int = 0,
    require_same_masks: bool = True,
    mask_dropout: float = 0.0,
    seed: Optional[int] = None,
    device: Optional[torch.device] = None,
) -> Tensor:
    """Sample span masks, as in wav2vec 2.0 / data2vec speech.

    About ``mask_prob * length / mask_length`` span starts are drawn per row and each starts a span
    of ``mask_length`` positions; spans may overlap, so the masked fraction is below ``mask_prob``
    (paper: p=0.65, length 10 masks about half of the frames).

    Args:
        batch, length: mask shape ``(B, T)``.
        padding_mask: ``(B, T)`` bool, ``True`` = padding; padded positions are never masked.
        seed: seeds the sampler; by default drawn from torch's global generator. fairseq re-seeds
            that generator at every update (``common.seed + num_updates``), so masks are
            reproducible and a resumed run draws the masks an uninterrupted one would have
            (``compute_mask_indices`` alone draws from fresh OS entropy on every call).

    Returns:
        ``(B, T)`` bool tensor, ``True`` = masked.
    """
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    mask = compute_mask_indices(
        (batch, length),
        padding_mask,
        mask_prob,
        mask_length,
        mask_selection,
        mask_other,
        min_masks=min_masks,
        no_overlap=no_overlap,
        min_space=min_space,
        require_same_masks=require_same_masks,
        mask_dropout=mask_dropout,
        seed=seed,
        epoch=0,
        indices=torch.arange(batch),
    )
    return torch.from_numpy(mask).to(device)


def channel_mask(batch: int, channels: int, mask_prob: float, mask_length: int,
                 device: Optional[torch.device] = None, **kwargs) -> Tensor:
    """Spans of channels to zero out, one set per row: ``(B, C)`` bool, ``True`` = masked.

    At least one span per row: with few channels ``mask_prob * C / mask_length`` can round to zero
    spans, which ``compute_mask_indices`` rejects ("this should never happens").
    """
    seed = int(torch.randint(0, 2**31 - 1, ()).item())  # reproducible, as in span_mask
    mask = compute_mask_indices((batch, channels), None, mask_prob, mask_length, min_masks=1,
                                seed=seed, epoch=0, indices=torch.arange(batch), **kwargs)
    return torch.from_numpy(mask).to(device)
