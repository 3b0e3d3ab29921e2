"""Masks for the student's view. ``True`` marks a masked position everywhere in this package.

Speech and text use spans / tokens over a sequence (:func:`span_mask`; data2vec 2.0 text: random tokens,
never padding, :func:`random_token_mask`); images use blocks of patches: masked blocks
(:func:`block_mask_2d`, data2vec) or kept blocks with everything else masked (:func:`inverse_block_mask_2d`,
data2vec 2.0). The span sampler itself is fairseq's ``compute_mask_indices`` (what wav2vec 2.0 and
the paper use); this module gives it a tensor-in, tensor-out face and the options' meaning.
"""

import math
from typing import Optional

import numpy as np
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
    update: int = 0,
    sample_ids: Optional[Tensor] = None,
    device: Optional[torch.device] = None,
) -> Tensor:
    """Sample span masks, as in wav2vec 2.0 / data2vec speech.

    About ``mask_prob * length / mask_length`` span starts are drawn per row and each starts a span
    of ``mask_length`` positions; spans may overlap, so the masked fraction is below ``mask_prob``
    (paper: p=0.65, length 10 masks about half of the frames).

    Args:
        batch, length: mask shape ``(B, T)``.
        padding_mask: ``(B, T)`` bool, ``True`` = padding; padded positions are never masked.
        seed, update, sample_ids: with ``sample_ids`` (``(B,)`` ids of the batch's samples), row ``i``
            is drawn from ``(seed, update, sample_ids[i])`` alone, so samples, data-parallel ranks
            and updates get different masks and a resumed run the same ones
            (:meth:`~d2v_plugin.core.teacher_student.TeacherStudentMixin.mask_seed`). Without them
            the seed is drawn from torch's global generator (reproducible in one process, but the
            same on every rank); ``compute_mask_indices`` alone would use fresh OS entropy.

    Returns:
        ``(B, T)`` bool tensor, ``True`` = masked.
    """
    seed, update, indices = _seeding(batch, seed, update, sample_ids)
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
        epoch=update,
        indices=indices,
    )
    return torch.from_numpy(mask).to(device)


def _seeding(batch: int, seed: Optional[int], update: int, sample_ids: Optional[Tensor]):
    """``(seed, epoch, indices)`` for ``compute_mask_indices``, which seeds row i from their hash."""
    if sample_ids is None:
        return int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else seed, 0, torch.arange(batch)
    if seed is None or len(sample_ids) != batch:
        raise ValueError(f"per-sample masks need a seed and {batch} sample ids, got {seed} and {len(sample_ids)}")
    return seed, update, sample_ids


def row_generators(batch: int, seed: Optional[int], update: int, sample_ids: Optional[Tensor]) -> list:
    """One numpy generator per row for the mask samplers written here (scalar-heavy loops: numpy's generator is
    cheaper per draw than torch's). With ``sample_ids`` row ``i`` draws from ``(seed, update, sample_ids[i])``
    alone (see :func:`span_mask`); without them all rows share one generator seeded by ``seed`` or, if None,
    by torch's global generator."""
    if sample_ids is None:
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        return [np.random.default_rng(seed)] * batch
    if seed is None or len(sample_ids) != batch:
        raise ValueError(f"per-sample masks need a seed and {batch} sample ids, got {seed} and {len(sample_ids)}")
    return [np.random.default_rng([int(seed), int(update), int(i)]) for i in sample_ids]


def channel_mask(batch: int, channels: int, mask_prob: float, mask_length: int,
                 device: Optional[torch.device] = None, seed: Optional[int] = None, update: int = 0,
                 sample_ids: Optional[Tensor] = None, **kwargs) -> Tensor:
    """Spans of channels to zero out, one set per row: ``(B, C)`` bool, ``True`` = masked.

    At least one span per row: with few channels ``mask_prob * C / mask_length`` can round to zero
    spans, which ``compute_mask_indices`` rejects ("this should never happens"). Seeding as in
    :func:`span_mask` (a different stream: the seed is offset so time and channel masks differ).
    """
    seed, update, indices = _seeding(batch, None if seed is None else seed + 1, update, sample_ids)
    mask = compute_mask_indices((batch, channels), None, mask_prob, mask_length, min_masks=1,
                                seed=seed, epoch=update, indices=indices, **kwargs)
    return torch.from_numpy(mask).to(device)


def block_mask_2d(
    batch: int,
    height: int,
    width: int,
    num_masked: int,
    min_block: int = 16,
    max_block: Optional[int] = None,
    min_aspect: float = 0.3,
    max_attempts: int = 10,
    seed: Optional[int] = None,
    update: int = 0,
    sample_ids: Optional[Tensor] = None,
    device: Optional[torch.device] = None,
) -> Tensor:
    """BEiT-style block-wise masks over a ``height x width`` grid of image patches.

    Each row is built by placing random rectangles until ``num_masked`` patches are covered. A
    rectangle's area is drawn uniformly from ``[min_block, budget]``, where the budget is what is
    still to mask (capped at ``max_block``), and its aspect ratio log-uniformly from
    ``[min_aspect, 1/min_aspect]``. A rectangle is kept only if it covers at least one new patch and
    no more new patches than the budget, so a row never exceeds ``num_masked``; when the budget falls
    below ``min_block`` the rectangles shrink to fit it, so rows nearly always mask exactly
    ``num_masked`` patches (data2vec vision: 120 of 196, about 60%; BEiT: 75). A row stops early
    only after ``max_attempts`` rectangles in a row added nothing.

    Args:
        seed, update, sample_ids: with ``sample_ids``, row ``i`` is drawn from its own generator
            seeded with ``(seed, update, sample_ids[i])`` (see :func:`span_mask`); without them all
            rows come from one generator seeded by ``seed`` or, if None, by torch's global generator.

    Returns:
        ``(B, H, W)`` bool tensor, ``True`` = masked; ``mask.flatten(1)`` is in patch order.
    """
    if not 0 < num_masked <= height * width:
        raise ValueError(f"num_masked={num_masked} must be in 1..{height * width} (the number of patches)")
    if min_block < 1 or not 0 < min_aspect <= 1:
        raise ValueError(f"need min_block >= 1 and 0 < min_aspect <= 1, got {min_block}, {min_aspect}")
    rngs = row_generators(batch, seed, update, sample_ids)
    log_aspect = math.log(min_aspect)
    masks = np.zeros((batch, height, width), dtype=bool)
    for mask, rng in zip(masks, rngs):
        count = 0
        while count < num_masked:
            budget = num_masked - count if max_block is None else min(num_masked - count, max_block)
            added = 0
            for _ in range(max_attempts):
                area = rng.uniform(min(min_block, budget), budget)
                aspect = math.exp(rng.uniform(log_aspect, -log_aspect)) if log_aspect else 1.0
                h = min(height, max(1, round(math.sqrt(area * aspect))))
                w = min(width, max(1, round(math.sqrt(area / aspect))))
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                block = mask[top:top + h, left:left + w]
                new = h * w - int(block.sum())
                if 0 < new <= budget:
                    block[...] = True
                    added = new
                    break
            if added == 0:
                break
            count += added
    return torch.from_numpy(masks).to(device)


def inverse_block_mask_2d(
    batch: int,
    height: int,
    width: int,
    mask_prob: float,
    block_size: int = 3,
    *,
    mask_prob_adjust: float = 0.0,
    mask_dropout: float = 0.0,
    seed: Optional[int] = None,
    update: int = 0,
    sample_ids: Optional[Tensor] = None,
    device: Optional[torch.device] = None,
) -> Tensor:
    """data2vec 2.0's image masks: the *kept* patches form blocks, everything else is masked.

    Every row keeps exactly ``int(H*W * (1 - mask_prob))`` patches (paper: 39 of 196 at ``mask_prob=0.8``)
    and masks the rest, so the student's kept tokens form a dense batch (data2vec 2.0 needs the same
    count in every row). A row is drawn in two steps:

    1. ``int(H*W * (1 - mask_prob + mask_prob_adjust) / block_size**2 * (1 + mask_dropout))`` centres are
       drawn uniformly over the grid (with repeats), and the ``block_size x block_size`` square around each
       (its top-left ``block_size // 2`` patches up and left of the centre, cut at the borders) is kept;
    2. the count is then made exact: random kept patches are masked again while there are too many, or
       random masked ones kept while there are too few.

    ``mask_prob_adjust`` (paper: 0.07) draws more centres than step 1 alone would need, because squares
    overlap; the excess is trimmed at random in step 2, which scatters a few kept patches at the block edges.
    These are the semantics of fairseq's ``compute_block_mask_2d`` with ``inverse_mask=True`` and
    ``require_same_masks=True``; the random draws are our own (below), so masks are not bitwise the same.

    Args:
        batch, height, width: mask shape ``(B, H, W)``.
        mask_prob: the fraction of patches masked, in (0, 1).
        block_size: the side of a kept square, in patches (``mask_length``); 1: kept patches at random.
        mask_dropout: draws ``(1 + mask_dropout)`` times as many centres (the count is still exact).
        seed, update, sample_ids: with ``sample_ids``, row ``i`` is drawn from its own generator seeded with
            ``(seed, update, sample_ids[i])`` (see :func:`span_mask`); without them all rows come from one
            generator seeded by ``seed`` or, if None, by torch's global generator.

    Returns:
        ``(B, H, W)`` bool tensor, ``True`` = masked; ``mask.flatten(1)`` is in patch order.
    """
    patches = height * width
    if not 0 < mask_prob < 1:
        raise ValueError(f"mask_prob={mask_prob} must be in (0, 1)")
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be >= 1")
    keep_prob = 1 - mask_prob
    num_kept = int(patches * keep_prob)
    if not 0 < num_kept < patches:
        raise ValueError(f"mask_prob={mask_prob} keeps {num_kept} of {patches} patches: a row needs at least "
                         f"one kept and one masked patch")
    num_centers = int(patches * ((keep_prob + mask_prob_adjust) / block_size**2) * (1 + mask_dropout))
    rngs = row_generators(batch, seed, update, sample_ids)
    before = block_size // 2  # rows/columns of a square above/left of its centre
    kept = np.zeros((batch, height, width), dtype=bool)
    for row, rng in zip(kept, rngs):
        for center in rng.integers(0, patches, size=max(num_centers, 0)):
            top, left = divmod(int(center), width)
            top, left = top - before, left - before
            row[max(top, 0):top + block_size, max(left, 0):left + block_size] = True
        flat = row.reshape(-1)
        surplus = int(flat.sum()) - num_kept
        if surplus > 0:
            flat[rng.choice(np.flatnonzero(flat), surplus, replace=False)] = False
        elif surplus < 0:
            flat[rng.choice(np.flatnonzero(~flat), -surplus, replace=False)] = True
    return torch.from_numpy(~kept).to(device)


def masked_count(valid_lengths: Tensor, mask_prob: float) -> int:
    """How many tokens every row masks: what the reference masks in a row of the shortest length ``L``,
    ``L - int(L * (1 - mask_prob))``, within ``[1, L - 1]`` (at least one masked and one kept real token)."""
    shortest = int(valid_lengths.min())
    if shortest < 2:
        raise ValueError(f"data2vec 2.0 text needs at least 2 tokens per sentence to mask one and keep one; "
                         f"the batch has a sentence of {shortest}")
    return min(max(shortest - int(shortest * (1 - mask_prob)), 1), shortest - 1)


def random_token_mask(rows: int, length: int, mask_prob: float, padding_mask: Optional[Tensor] = None, *,
                      seed: Optional[int] = None, update: int = 0, sample_ids: Optional[Tensor] = None,
                      device=None) -> Tensor:
    """``(rows, length)`` bool, ``True`` = masked: the same number of tokens per row (:func:`masked_count`),
    chosen uniformly among the row's non-padding positions, never padding.

    data2vec 2.0's text masks (random tokens, no BERT 80/10/10 replacement). Seeding: :func:`row_generators`.
    """
    valid = torch.full((rows,), length) if padding_mask is None else (~padding_mask).sum(1).cpu()
    count = masked_count(valid, mask_prob)
    pad = None if padding_mask is None else padding_mask.cpu().numpy()
    mask = np.zeros((rows, length), dtype=bool)
    for row, rng in enumerate(row_generators(rows, seed, update, sample_ids)):
        positions = np.arange(length) if pad is None else np.flatnonzero(~pad[row])
        chosen = rng.choice(len(positions), size=count, replace=False)
        mask[row, positions[chosen]] = True
    return torch.from_numpy(mask).to(device)
