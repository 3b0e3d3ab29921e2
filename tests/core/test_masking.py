"""Span masking statistics: masked fraction, span lengths, padding, reproducibility."""

import numpy as np
import torch

from d2v_plugin.core.masking import span_mask


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
