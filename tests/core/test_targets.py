"""make_targets against a naive loop over samples, layers and channels."""

import pytest
import torch

from d2v_plugin.core.targets import TargetConfig, make_targets

EPS = 1e-5


def naive_targets(layers, cfg):
    B, T, C = layers[0].shape
    out = torch.zeros(B, T, C, dtype=torch.float64)
    for y in layers:
        y = y.double().clone()
        if cfg.instance_norm_target_layer:
            for b in range(B):
                for c in range(C):
                    col = y[b, :, c]
                    y[b, :, c] = (col - col.mean()) / torch.sqrt(col.var(unbiased=False) + EPS)
        if cfg.layer_norm_target_layer:
            for b in range(B):
                for t in range(T):
                    row = y[b, t]
                    y[b, t] = (row - row.mean()) / torch.sqrt(row.var(unbiased=False) + EPS)
        out += y
    out /= len(layers)
    if cfg.layer_norm_targets:
        for b in range(B):
            for t in range(T):
                row = out[b, t]
                out[b, t] = (row - row.mean()) / torch.sqrt(row.var(unbiased=False) + EPS)
    if cfg.instance_norm_targets:
        for b in range(B):
            for c in range(C):
                col = out[b, :, c]
                out[b, :, c] = (col - col.mean()) / torch.sqrt(col.var(unbiased=False) + EPS)
    return out


@pytest.mark.parametrize(
    "flags",
    [
        dict(instance_norm_target_layer=True),  # speech
        dict(layer_norm_target_layer=True),  # text
        dict(layer_norm_target_layer=True, layer_norm_targets=True),  # images
        dict(instance_norm_target_layer=True, instance_norm_targets=True),
        dict(),
    ],
)
def test_make_targets_matches_naive_loop(flags):
    torch.manual_seed(0)
    layers = [torch.randn(2, 7, 5) * (i + 1) + i for i in range(3)]
    cfg = TargetConfig(average_top_k_layers=3, **flags)
    got = make_targets(layers, cfg)
    assert got.shape == (2, 7, 5) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), naive_targets(layers, cfg), rtol=1e-5, atol=1e-5)


def test_half_inputs_give_fp32_targets():
    layers = [torch.randn(2, 4, 3).half() for _ in range(2)]
    assert make_targets(layers, TargetConfig(instance_norm_target_layer=True)).dtype == torch.float32


def test_batch_and_group_norm_statistics():
    torch.manual_seed(0)
    y = torch.randn(3, 6, 4) * 5 + 2
    bn = make_targets([y], TargetConfig(batch_norm_target_layer=True))
    torch.testing.assert_close(bn.mean(dim=(0, 1)), torch.zeros(4), atol=1e-5, rtol=0)
    gn = make_targets([y], TargetConfig(group_norm_target_layer=True))
    torch.testing.assert_close(gn.mean(dim=(1, 2)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(gn.var(dim=(1, 2), unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
