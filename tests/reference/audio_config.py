"""A tiny data2vec audio architecture and a fixed batch shared by our model and the reference."""

import torch

TINY_AUDIO = dict(
    extractor_mode="default",
    conv_feature_layers="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2",
    encoder_layers=4,
    encoder_embed_dim=48,
    encoder_ffn_embed_dim=96,
    encoder_attention_heads=4,
    conv_pos=16,
    conv_pos_groups=4,
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    dropout_input=0.0,
    encoder_layerdrop=0.0,
    average_top_k_layers=3,
    instance_norm_target_layer=True,
    ema_decay=0.99,
    ema_end_decay=0.999,
    ema_anneal_end_step=10,
    mask_prob=0.65,
    mask_length=3,
)

# Teacher variants compared with the reference: the paper's (the teacher shares the student's feature
# encoder and averages only the transformer blocks) and a whole-encoder teacher with its own EMA feature
# encoder (the reference ties ema_transformer_only=false to ema_layers_only=false). In that mode the
# reference ignores average_top_k_layers and averages every block (it never passes min_layer to its
# teacher); ours keeps the top K, so the comparison uses K = all blocks.
VARIANTS = {
    "shared_feature_encoder": {},
    "ema_feature_encoder": dict(ema_transformer_only=False, ema_layers_only=False, average_top_k_layers=4),
}


def make_batch():
    """Two waveforms (the second padded) and a fixed (B, T) frame mask."""
    g = torch.Generator().manual_seed(1)
    source = torch.randn(2, 6400, generator=g)
    padding_mask = torch.zeros(2, 6400, dtype=torch.bool)
    padding_mask[1, 5000:] = True
    source[1, 5000:] = 0
    frames = 19  # conv output length for 6400 samples with the layers above
    mask_indices = torch.rand(2, frames, generator=g) < 0.5
    mask_indices[1, 15:] = False  # frames of padding are never masked
    return source, padding_mask, mask_indices
