"""A tiny data2vec image architecture, target variants and a fixed batch shared by our model and the reference.

Keys are fairseq data2vec_vision's option names, which ``Data2VecImageConfig`` shares.
"""

import torch

TINY_IMAGE = dict(
    image_size=32,
    patch_size=4,
    in_channels=3,
    embed_dim=48,
    depth=4,
    num_heads=4,
    mlp_ratio=4,
    layer_scale_init_value=1.0,  # large enough that every block changes the output visibly
    drop_path=0.0,
    attention_dropout=0.0,
    num_mask_patches=38,
    min_mask_patches_per_block=4,
    max_mask_patches_per_block=64,
    average_top_k_layers=3,
    ema_decay=0.99,
    ema_end_decay=0.999,
    ema_anneal_end_step=10,
)

# Target/loss variants compared: the data2vec_vision recipe, and per-block norms on FFN outputs with L2.
VARIANTS = {
    "recipe": dict(end_of_block_targets=True, layer_norm_targets=True, loss_beta=2.0),
    "ffn_l2": dict(end_of_block_targets=False, layer_norm_target_layer=True, instance_norm_targets=True,
                   loss_beta=0.0),
}


def make_batch():
    """Two 32x32 RGB images and a fixed ``(B, 8, 8)`` patch mask (different counts per image)."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 32, 32, generator=g)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[0, 1:6, 2:7] = True  # a 5x5 block
    mask[0, 7, :3] = True
    mask[1] = torch.rand(8, 8, generator=g) < 0.6
    return images, mask
