"""The shared data2vec 2.0 pieces: kept-token bookkeeping, clones, ALiBi, the conv decoder and the block."""

import pytest
import torch

from d2v_plugin.core.alibi import AlibiBias, alibi_slopes
from d2v_plugin.core.block import Block, attention_bias
from d2v_plugin.core.data2vec2 import clone_sample_ids
from d2v_plugin.core.decoder import ConvDecoder, DecoderConfig
from d2v_plugin.core.unmasked import clone_rows, fill_masked, gather_kept, kept_tokens


def test_kept_tokens_gather_and_fill_put_everything_back():
    mask = torch.tensor([[0, 1, 1, 0, 0, 1], [1, 0, 0, 1, 0, 1]], dtype=torch.bool)
    kept = kept_tokens(mask)
    assert kept.num_kept == 3
    assert [sorted(row) for row in kept.keep.tolist()] == [[0, 3, 4], [1, 2, 4]]
    x = torch.arange(2 * 6 * 2, dtype=torch.float).view(2, 6, 2)
    x_kept = gather_kept(x, kept)
    assert torch.equal(x_kept, torch.stack([x[b, kept.keep[b]] for b in range(2)]))
    torch.manual_seed(0)
    full = fill_masked(x_kept, kept, noise_std=0.5)
    assert torch.equal(full[~mask], x[~mask])
    # the noise is one (B, T - K, C) draw; its row j lands on the masked position order[:, K + j]
    torch.manual_seed(0)
    noise = torch.empty(2, 3, 2).normal_(0, 0.5)
    for b in range(2):
        assert torch.equal(full[b, kept.order[b, 3:]], noise[b])
        assert mask[b, kept.order[b, 3:]].all()
    # padding masks gather the same way
    assert gather_kept(mask, kept).sum() == 0


def test_rows_with_different_mask_counts_are_refused():
    with pytest.raises(ValueError, match=r"same number of masked positions in every row, got \[2, 1\]"):
        kept_tokens(torch.tensor([[1, 1, 0], [0, 1, 0]], dtype=torch.bool))


def test_clones_are_interleaved_and_get_their_own_mask_seeds():
    x = torch.tensor([[1.0], [2.0]])
    assert clone_rows(x, 3).view(-1).tolist() == [1, 1, 1, 2, 2, 2]
    ids = clone_sample_ids(torch.tensor([5, 9]), 3)
    assert ids.tolist() == [15, 16, 17, 27, 28, 29]
    assert len(set(clone_sample_ids(torch.arange(50), 4).tolist())) == 200


def test_alibi_slopes_and_bias_of_kept_positions_equal_the_full_bias_gathered():
    assert alibi_slopes(8) == [2.0 ** -(i + 1) for i in range(8)]
    assert len(alibi_slopes(12)) == 12 and alibi_slopes(12)[:8] == alibi_slopes(8)
    alibi = AlibiBias(4, scale=1.0, learned=True, per_head=True)
    with torch.no_grad():
        alibi.scale.copy_(torch.tensor([1.0, 0.5, -1.0, 2.0]))  # a negative scale counts as 0
    full = alibi(torch.arange(10))[0]  # (H, T, T)
    assert full[0, 0, 3].item() == pytest.approx(-3 * 2 ** -2)
    assert torch.all(full[2] == 0)
    keep = torch.tensor([[0, 2, 7], [1, 5, 9]])
    kept = alibi(keep)
    for b in range(2):
        assert torch.allclose(kept[b], full[:, keep[b]][:, :, keep[b]])


def test_attention_bias_masks_padded_keys_only():
    pad = torch.tensor([[False, False, True]])
    bias = attention_bias(pad, None)
    assert bias.shape == (1, 1, 1, 3) and torch.isinf(bias[0, 0, 0, 2]) and bias[0, 0, 0, :2].eq(0).all()
    assert attention_bias(torch.zeros(1, 3, dtype=torch.bool), None) is None


@pytest.mark.parametrize("kernel", [3, 4])
@pytest.mark.parametrize("grid", [(), (2, 3)])
def test_conv_decoder_keeps_the_sequence_and_fills_every_masked_position(kernel, grid):
    torch.manual_seed(0)
    cfg = DecoderConfig(decoder_dim=8, decoder_kernel=kernel, decoder_layers=3, decoder_groups=2,
                        decoder_input_dropout=0.0)
    decoder = ConvDecoder(cfg, dim=6, grid=grid)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    kept = kept_tokens(mask)
    out = decoder(torch.randn(2, 3, 6), kept, noise_std=0.01)
    assert out.shape == (2, 6, 8)
    # a decoder reads its neighbours: changing one kept token changes a masked neighbour's output
    x = torch.randn(2, 3, 6)
    torch.manual_seed(1)
    a = decoder(x, kept, 0.01)
    x[0, 0] += 1.0  # sample 0's kept position 1
    torch.manual_seed(1)
    b = decoder(x, kept, 0.01)
    assert not torch.allclose(a[0, 0], b[0, 0]) and torch.equal(a[1], b[1])


def test_pre_ln_block_keeps_the_residual_stream():
    """fairseq's AltBlock with layer_norm_first returns mlp(x) + mlp(x); ours x + attn + mlp."""
    torch.manual_seed(0)
    block = Block(8, 2, layer_norm_first=True, norm_eps=1e-5)
    with torch.no_grad():
        block.mlp.fc2.weight.zero_()
        block.mlp.fc2.bias.zero_()
        block.attn.proj.weight.zero_()
        block.attn.proj.bias.zero_()
    x = torch.randn(1, 4, 8)
    out, target = block(x)
    assert torch.equal(out, x)  # both branches output 0: only the residual is left
    assert torch.equal(target, torch.zeros_like(x))
