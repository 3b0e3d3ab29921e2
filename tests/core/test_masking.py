"""Mask samplers: span masking statistics (masked fraction, span lengths, padding), block masks, reproducibility."""

import numpy as np
import pytest
import torch

from d2v_plugin.core.masking import masked_count, random_token_mask, span_mask


def runs(row):
    """Lengths of the runs of True in a 1-D bool tensor."""
    out, n = [], 0
    for v in row.tolist() + [False]:
        if v:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


def test_paper_masking_covers_about_half_the_frames():
    torch.manual_seed(0)
    m = span_mask(64, 500, mask_prob=0.65, mask_length=10, require_same_masks=False)
    frac = m.float().mean().item()
    # 0.65 * 500 / 10 span starts drawn among 490 positions, spans overlapping: about
    # 1 - (1 - 32.5/490)^10 ~= 0.50 of the frames (the paper reports ~49%)
    expected = 1 - (1 - 32.5 / 490) ** 10
    assert abs(frac - expected) < 0.04, frac


def test_spans_are_at_least_mask_length():
    torch.manual_seed(1)
    m = span_mask(16, 300, mask_prob=0.3, mask_length=7, require_same_masks=False)
    for row in m:
        assert min(runs(row)) >= 7


def test_require_same_masks_equalises_counts_per_row():
    torch.manual_seed(1)
    m = span_mask(16, 300, mask_prob=0.65, mask_length=10, require_same_masks=True)
    counts = m.sum(-1)
    assert (counts == counts[0]).all() and counts[0] > 0


def test_padding_is_never_masked():
    torch.manual_seed(2)
    pad = torch.zeros(8, 120, dtype=torch.bool)
    lengths = np.linspace(40, 120, 8).astype(int)
    for i, n in enumerate(lengths):
        pad[i, n:] = True
    m = span_mask(8, 120, 0.65, 5, pad, require_same_masks=False)
    assert not (m & pad).any()
    assert (m.sum(-1) > 0).all()


def test_masks_follow_torch_seed():
    torch.manual_seed(3)
    a = span_mask(4, 100, 0.65, 10)
    torch.manual_seed(3)
    b = span_mask(4, 100, 0.65, 10)
    c = span_mask(4, 100, 0.65, 10)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# -- per-sample seeding: masks differ between samples and data-parallel ranks, and repeat on resume --------
def test_span_masks_are_a_function_of_seed_update_and_sample_id():
    ids = torch.tensor([7, 3, 11, 5])
    torch.manual_seed(0)
    a = span_mask(4, 200, 0.65, 10, require_same_masks=False, seed=1, update=5, sample_ids=ids)
    torch.manual_seed(123)  # fairseq re-seeds the global generator alike on every rank: it must not matter
    b = span_mask(4, 200, 0.65, 10, require_same_masks=False, seed=1, update=5, sample_ids=ids)
    assert torch.equal(a, b)
    # another rank's batch (other ids), another update or another seed: other masks
    assert not torch.equal(a, span_mask(4, 200, 0.65, 10, require_same_masks=False, seed=1, update=5,
                                        sample_ids=ids + 100))
    assert not torch.equal(a, span_mask(4, 200, 0.65, 10, require_same_masks=False, seed=1, update=6, sample_ids=ids))
    assert not torch.equal(a, span_mask(4, 200, 0.65, 10, require_same_masks=False, seed=2, update=5, sample_ids=ids))
    # a row depends on its own sample only: the same sample in another batch position gets the same mask
    swapped = span_mask(4, 200, 0.65, 10, require_same_masks=False, seed=1, update=5, sample_ids=ids.flip(0))
    assert torch.equal(swapped.flip(0), a)


def test_block_masks_are_a_function_of_seed_update_and_sample_id():
    from d2v_plugin.core.masking import block_mask_2d

    ids = torch.tensor([0, 1, 2])
    a = block_mask_2d(3, 8, 8, 30, min_block=4, seed=1, update=2, sample_ids=ids)
    assert torch.equal(a, block_mask_2d(3, 8, 8, 30, min_block=4, seed=1, update=2, sample_ids=ids))
    other_rank = block_mask_2d(3, 8, 8, 30, min_block=4, seed=1, update=2, sample_ids=ids + 3)
    assert all(not torch.equal(a[i], other_rank[i]) for i in range(3))
    assert torch.equal(block_mask_2d(3, 8, 8, 30, min_block=4, seed=1, update=2, sample_ids=ids.flip(0)).flip(0), a)


def _two_ranks_masks(build, ids_rank0, ids_rank1):
    """What two data-parallel ranks draw at the same update: fairseq seeds torch alike on both."""
    masks = []
    for ids in (ids_rank0, ids_rank1):
        torch.manual_seed(1 + 7)  # common.seed + num_updates, as fairseq's trainer does on every rank
        masks.append(build(ids))
    return masks


def test_models_draw_different_masks_on_each_rank():
    from d2v_plugin.audio.model import Data2VecAudioConfig, Data2VecAudioModel
    from d2v_plugin.image.model import Data2VecImageConfig, Data2VecImageModel
    from tests.reference import audio_config, image_config

    audio = Data2VecAudioModel(Data2VecAudioConfig(**audio_config.TINY_AUDIO, seed=1))
    audio.set_num_updates(7)
    x = torch.zeros(2, 50, audio.cfg.encoder_embed_dim)
    r0, r1 = _two_ranks_masks(lambda ids: audio.apply_mask(x, None, sample_ids=ids)[1],
                              torch.tensor([0, 1]), torch.tensor([2, 3]))
    assert not torch.equal(r0, r1)
    again, _ = _two_ranks_masks(lambda ids: audio.apply_mask(x, None, sample_ids=ids)[1],
                                torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert torch.equal(again, r0)  # and a resumed run (same seed, update, ids) draws the same

    image = Data2VecImageModel(Data2VecImageConfig(**image_config.TINY_IMAGE, seed=1))
    image.set_num_updates(7)
    r0, r1 = _two_ranks_masks(lambda ids: image.sample_mask(2, sample_ids=ids), torch.tensor([0, 1]),
                              torch.tensor([2, 3]))
    assert not torch.equal(r0, r1)


# -- data2vec 2.0 images: inverse block masks -------------------------------------------------------
def _kept_neighbour_pairs(mask):
    """Mean number of horizontally or vertically adjacent kept patch pairs per row of a ``(B, H, W)`` mask."""
    kept = ~mask
    pairs = (kept[:, 1:, :] & kept[:, :-1, :]).sum((1, 2)) + (kept[:, :, 1:] & kept[:, :, :-1]).sum((1, 2))
    return pairs.float().mean().item()


def test_inverse_block_masks_keep_the_same_count_in_every_row():
    from d2v_plugin.core.masking import inverse_block_mask_2d

    # the paper: 14x14 patches, mask_prob 0.8 -> int(196 * 0.2) = 39 kept, 157 masked
    paper = inverse_block_mask_2d(300, 14, 14, 0.8, 3, mask_prob_adjust=0.07, seed=3)
    assert paper.shape == (300, 14, 14) and paper.dtype == torch.bool
    assert (paper.sum((1, 2)) == 157).all()
    for side, prob, block, adjust, dropout in ((8, 0.8, 3, 0.0, 0.0), (8, 0.5, 2, 0.1, 0.2), (5, 0.3, 1, 0.0, 0.0),
                                               (6, 0.9, 4, 0.0, 0.0)):
        mask = inverse_block_mask_2d(64, side, side, prob, block, mask_prob_adjust=adjust, mask_dropout=dropout,
                                     seed=1)
        kept = int(side * side * (1 - prob))
        assert (mask.flatten(1).sum(1) == side * side - kept).all(), (side, prob, block)


def test_inverse_block_masks_have_the_reference_block_structure():
    """Kept patches form 3x3 blocks as in fairseq's compute_block_mask_2d(inverse_mask=True) (the paper's
    sampler): as many adjacent kept pairs on average, far more than kept patches at random would have."""
    from fairseq.data.data_utils import compute_block_mask_2d

    from d2v_plugin.core.masking import inverse_block_mask_2d

    n = 1000
    ours = inverse_block_mask_2d(n, 14, 14, 0.8, 3, mask_prob_adjust=0.07, seed=0, sample_ids=torch.arange(n))
    torch.manual_seed(0)
    theirs = compute_block_mask_2d((n, 196), 0.8, 3, mask_prob_adjust=0.07, inverse_mask=True).bool().view(n, 14, 14)
    assert (theirs.sum((1, 2)) == 157).all()
    a, b = _kept_neighbour_pairs(ours), _kept_neighbour_pairs(theirs)
    assert abs(a - b) < 0.05 * b, (a, b)  # ~49 pairs per image
    random_kept = 2 * 14 * 13 * (39 / 196) * (38 / 195)  # ~14 for 39 patches kept at random
    assert a > 3 * random_kept
    # every patch is kept about equally often (borders a bit less: blocks are cut there), as in the reference
    freq_ours, freq_theirs = (~ours).float().mean(0), (~theirs).float().mean(0)
    assert (freq_ours - freq_theirs).abs().max() < 0.06


def test_inverse_block_masks_are_a_function_of_seed_update_and_sample_id():
    from d2v_plugin.core.masking import inverse_block_mask_2d

    ids = torch.tensor([0, 1, 2])

    def draw(sample_ids, seed=1, update=2):
        return inverse_block_mask_2d(3, 8, 8, 0.8, 3, seed=seed, update=update, sample_ids=sample_ids)

    a = draw(ids)
    assert torch.equal(a, draw(ids))
    assert all(not torch.equal(a[i], draw(ids + 3)[i]) for i in range(3))  # another rank's samples
    assert all(not torch.equal(a[i], draw(ids, update=3)[i]) for i in range(3))  # the next update
    assert torch.equal(draw(ids.flip(0)).flip(0), a)  # a row depends on its own id only
    # without ids: from torch's generator, reproducible under its seed
    torch.manual_seed(5)
    b = inverse_block_mask_2d(4, 8, 8, 0.8, 3)
    torch.manual_seed(5)
    assert torch.equal(b, inverse_block_mask_2d(4, 8, 8, 0.8, 3))


def test_inverse_block_mask_options_are_checked():
    from d2v_plugin.core.masking import inverse_block_mask_2d

    with pytest.raises(ValueError, match=r"mask_prob=1\.0 must be in \(0, 1\)"):
        inverse_block_mask_2d(1, 8, 8, 1.0, 3, seed=1)
    with pytest.raises(ValueError, match=r"mask_prob=0\.99 keeps 0 of 64 patches"):
        inverse_block_mask_2d(1, 8, 8, 0.99, 3, seed=1)
    with pytest.raises(ValueError, match=r"per-sample masks need a seed and 2 sample ids"):
        inverse_block_mask_2d(2, 8, 8, 0.8, 3, sample_ids=torch.tensor([1, 2]))


def test_random_token_masks_have_equal_counts_never_cover_padding_and_follow_the_sample():
    padding = torch.zeros(4, 20, dtype=torch.bool)
    padding[2, 12:] = True
    padding[3, 15:] = True
    mask = random_token_mask(4, 20, 0.48, padding, seed=1, update=3, sample_ids=torch.tensor([5, 6, 7, 8]))
    count = 12 - int(12 * 0.52)  # what the reference masks in a row of the shortest length, 12
    assert mask.sum(1).tolist() == [count] * 4
    assert not (mask & padding).any()
    # a row depends on (seed, update, sample id) and the count alone, not on its neighbours
    again = random_token_mask(2, 20, 0.48, padding[[1, 2]], seed=1, update=3, sample_ids=torch.tensor([6, 7]))
    assert torch.equal(again, mask[[1, 2]])
    assert not torch.equal(random_token_mask(4, 20, 0.48, padding, seed=1, update=4,
                                             sample_ids=torch.tensor([5, 6, 7, 8])), mask)
    assert masked_count(torch.tensor([512]), 0.48) == 246  # the paper's 48% of a 512-token block
    assert masked_count(torch.tensor([2]), 0.99) == 1  # always one real token kept
    with pytest.raises(ValueError, match="at least 2 tokens"):
        masked_count(torch.tensor([1, 30]), 0.5)
