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
