"""Tiny data2vec 2.0 (``data2vec_multi``) architectures and fixed batches shared by our models and the reference.

Keys are fairseq's ``Data2VecMultiConfig`` names: top-level options, plus ``modalities.<modality>`` (with its
``decoder``) as in ``examples/data2vec/config/v2/base_{audio,text,images}_only_task.yaml``. The paper's
per-modality choices are kept (target normalisation, teacher scope, ALiBi, decoder shape, CLS loss, inverse
block mask); only sizes shrink and every source of randomness besides the decoder's mask-token noise is off
(dropouts, drop-path, layerdrop), so a run is reproducible from ``torch.manual_seed``.

Masks are given to the reference (``precomputed_mask``), one row per clone: ``(B * clone_batch, T)`` in
``repeat_interleave`` order (row ``b * clone_batch + c`` is clone ``c`` of sample ``b``), True = masked. Every
row masks the SAME number of positions: the reference's ``make_maskinfo`` keeps ``T - mask[0].sum()``
positions of every row. Padding is never masked.

Importable without the reference (our own tests use it); only ``make_dictionary_v2`` needs fairseq.
"""

import torch

MODALITIES = ("audio", "text", "image")
CLONE_BATCH = 2
TEXT_VOCAB = 40  # ordinary symbols, after fairseq's 4 specials; "<mask>" comes last, as masked_lm adds it

# Options shared by every modality: tiny sizes, every dropout / drop-path / layerdrop at 0.
_COMMON = dict(
    embed_dim=48,
    num_heads=4,
    mlp_ratio=4.0,
    encoder_dropout=0.0,
    post_mlp_drop=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    dropout_input=0.0,
    layerdrop=0.0,
    start_drop_path_rate=0.0,
    end_drop_path_rate=0.0,
    layer_norm_first=False,
    end_of_block_targets=False,
    clone_batch=CLONE_BATCH,
    average_top_k_layers=2,
    ema_decay=0.999,
    ema_end_decay=0.9999,
    ema_anneal_end_step=10,
    max_update=10,
    seed=1,
)
_NO_DROP = dict(prenet_layerdrop=0.0, prenet_dropout=0.0, start_drop_path_rate=0.0, end_drop_path_rate=0.0,
                mask_dropout=0.0)

TINY_V2 = {
    # base_audio_only_task.yaml: whole-model teacher sharing the student's CNN output, instance-normed
    # FFN targets of the top K blocks, ALiBi with a learned per-head scale, conv positional encoder, 1d decoder
    "audio": dict(
        _COMMON,
        depth=3,
        norm_eps=1e-5,
        loss_beta=0.0,
        loss_scale=None,  # 1 / sqrt(embed_dim)
        ema_encoder_only=False,
        instance_norm_target_layer=True,
        layer_norm_target_layer=False,
        layer_norm_targets=False,
        supported_modality="AUDIO",
        modalities=dict(audio=dict(
            _NO_DROP,
            feature_encoder_spec="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2",
            extractor_mode="layer_norm",
            conv_pos_depth=2,
            conv_pos_width=10,  # kernel max(3, 10 // 2) = 5 per positional conv layer
            conv_pos_groups=4,
            prenet_depth=0,
            mask_prob=0.5,
            mask_length=5,
            mask_noise_std=0.01,
            inverse_mask=False,
            add_masks=False,
            ema_local_encoder=False,
            use_alibi_encoder=True,
            learned_alibi_scale=True,
            learned_alibi_scale_per_head=True,
            decoder=dict(input_dropout=0.0, decoder_dim=32, decoder_groups=4, decoder_kernel=5, decoder_layers=2),
        )),
    ),
    # base_text_only_task.yaml: teacher = EMA of the shared blocks only, fed the student's embeddings;
    # instance-normed targets of all blocks, loss scale 1, no residual in the decoder, 2 projection layers
    "text": dict(
        _COMMON,
        depth=2,
        norm_eps=1e-5,
        loss_beta=0.0,
        loss_scale=1.0,
        ema_encoder_only=True,
        instance_norm_target_layer=True,
        layer_norm_target_layer=False,
        layer_norm_targets=False,
        supported_modality="TEXT",
        modalities=dict(text=dict(
            _NO_DROP,
            dropout=0.0,  # the embeddings' dropout (0.1 by default)
            max_source_positions=32,
            learned_pos=True,
            no_scale_embedding=True,
            layernorm_embedding=True,
            prenet_depth=0,
            mask_prob=0.48,
            mask_length=1,
            mask_noise_std=0.01,
            decoder=dict(input_dropout=0.0, decoder_dim=32, decoder_groups=1, decoder_kernel=5, decoder_layers=2,
                         decoder_residual=False, projection_layers=2, projection_ratio=2.0),
        )),
    ),
    # base_images_only_task.yaml: whole-model teacher with its own EMA patch embedding and [CLS], inverse
    # block mask, instance-normed per-block targets then a layer norm over their mean, [CLS] loss, 2d decoder
    "image": dict(
        _COMMON,
        depth=2,
        norm_eps=1e-6,
        loss_beta=0.0,
        loss_scale=None,
        ema_encoder_only=False,
        instance_norm_target_layer=True,
        layer_norm_target_layer=False,
        layer_norm_targets=True,
        cls_loss=0.01,
        min_target_var=0.0,
        min_pred_var=0.0,
        supported_modality="IMAGE",
        modalities=dict(image=dict(
            _NO_DROP,
            input_size=32,
            patch_size=4,  # 8 x 8 = 64 patches
            in_chans=3,
            embed_dim=48,  # equal to the model's, or the reference adds a Linear after the patch embedding
            prenet_depth=1,
            inverse_mask=True,
            mask_prob=0.8,
            mask_length=3,
            mask_noise_std=0.01,
            ema_local_encoder=True,
            num_extra_tokens=1,
            init_extra_token_zero=False,
            use_alibi_encoder=False,
            decoder=dict(input_dropout=0.0, decoder_dim=32, decoder_groups=4, decoder_kernel=3, decoder_layers=2),
        )),
    ),
}

AUDIO_SAMPLES, AUDIO_PAD_FROM = 6400, 5000
AUDIO_FRAMES, AUDIO_VALID_FRAMES = 19, 15  # conv output lengths of 6400 and 5000 samples with the spec above
TEXT_LEN, TEXT_PAD_FROM = 12, 9
IMAGE_SIDE = 8  # patches per side


def make_dictionary_v2():
    """The text model's fairseq ``Dictionary``: 4 specials (pad index 1), TEXT_VOCAB words, then ``<mask>``."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(TEXT_VOCAB):
        d.add_symbol(f"w{i}")
    d.add_symbol("<mask>")
    return d


def _span_mask(starts_per_row, span: int, length: int) -> torch.Tensor:
    mask = torch.zeros(len(starts_per_row), length, dtype=torch.bool)
    for row, starts in enumerate(starts_per_row):
        for s in starts:
            mask[row, s:s + span] = True
    return mask


def _random_mask(valid_lengths, n_masked: int, length: int, g: torch.Generator) -> torch.Tensor:
    """One row per entry of ``valid_lengths``: exactly ``n_masked`` positions among the first ``valid``."""
    mask = torch.zeros(len(valid_lengths), length, dtype=torch.bool)
    for row, valid in enumerate(valid_lengths):
        mask[row, torch.randperm(valid, generator=g)[:n_masked]] = True
    return mask


def make_batch_v2(modality: str) -> dict:
    """Fixed inputs for ``modality``: ``source``, ``padding_mask`` (True = padding; None for images) and
    ``precomputed_mask`` ``(B * CLONE_BATCH, T)`` bool, True = masked, the same count in every row.

    audio: 2 waveforms of 6400 samples, the second zero-padded from sample 5000 (19 frames, 15 valid);
    two non-overlapping spans of 5 (mask_length) per row = 10 masked frames, never in padding.
    text: 2 rows of 12 tokens (``<s> ... </s>``), the second padded from position 9; 5 masked tokens per row
    (~mask_prob 0.48), never padding.
    image: 2 images 3x32x32 (8x8 patches of 4); as the inverse block mask, a kept 3x3 block plus 7 kept
    patches, 48 masked patches per row.
    """
    g = torch.Generator().manual_seed(1)
    if modality == "audio":
        source = torch.randn(2, AUDIO_SAMPLES, generator=g)
        padding_mask = torch.zeros(2, AUDIO_SAMPLES, dtype=torch.bool)
        padding_mask[1, AUDIO_PAD_FROM:] = True
        source[1, AUDIO_PAD_FROM:] = 0
        # rows: sample 0 clone 0, sample 0 clone 1, sample 1 clone 0, sample 1 clone 1 (sample 1: 15 valid frames)
        mask = _span_mask([(0, 9), (3, 12), (1, 8), (5, 10)], span=5, length=AUDIO_FRAMES)
        return dict(source=source, padding_mask=padding_mask, precomputed_mask=mask)
    if modality == "text":
        d = make_dictionary_v2()
        source = torch.randint(d.nspecial, d.nspecial + TEXT_VOCAB, (2, TEXT_LEN), generator=g)
        source[:, 0] = d.bos()
        source[0, -1] = d.eos()
        source[1, TEXT_PAD_FROM - 1] = d.eos()
        source[1, TEXT_PAD_FROM:] = d.pad()
        padding_mask = source.eq(d.pad())
        valid = [TEXT_LEN] * CLONE_BATCH + [TEXT_PAD_FROM] * CLONE_BATCH
        mask = _random_mask(valid, 5, TEXT_LEN, g)
        return dict(source=source, padding_mask=padding_mask, precomputed_mask=mask)
    if modality == "image":
        source = torch.randn(2, 3, 32, 32, generator=g)
        rows = 2 * CLONE_BATCH
        keep = torch.zeros(rows, IMAGE_SIDE, IMAGE_SIDE, dtype=torch.bool)
        for row in range(rows):
            i, j = torch.randint(0, IMAGE_SIDE - 2, (2,), generator=g).tolist()
            keep[row, i:i + 3, j:j + 3] = True
            others = (~keep[row]).flatten().nonzero().squeeze(1)
            keep[row].view(-1)[others[torch.randperm(len(others), generator=g)[:7]]] = True
        return dict(source=source, padding_mask=None, precomputed_mask=~keep.view(rows, -1))
    raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
