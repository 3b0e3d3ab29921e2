"""``data2vec_audio`` with ``model.data2vec_version=2``: data2vec 2.0 for speech (Baevski et al. 2023).

Student: conv feature encoder -> layer norm -> projection (the same front end as version 1) ->
``clone_batch`` copies, each with its own span mask -> masked frames zeroed -> + a stack of
convolutions as relative positions -> only the kept frames -> transformer with ALiBi attention biases ->
conv decoder over all frames (noise at the masked ones) -> ``final_proj`` at the masked frames.
Teacher: an EMA copy of the positional convolutions and the transformer, run once per sample on the
unmasked features (the feature encoder is shared, as in the paper; ``ema_transformer_only=false``
gives the teacher its own EMA copy of it); targets: the instance-normed MLP outputs of its top-K blocks,
averaged (:mod:`d2v_plugin.core.targets`).

Deliberate differences from fairseq's data2vec_multi (documented in README):
masks are seeded per sample (the reference draws audio masks from OS entropy); the ALiBi bias is built
for the kept frames only (the reference materialises and caches B*H full-size copies); pre-LN blocks keep
their residual (:mod:`d2v_plugin.core.block`).
"""

from typing import List, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from fairseq.models import BaseFairseqModel

from d2v_plugin.audio.front_end import ConvFrontEnd
from d2v_plugin.compat.data2vec_multi import shared_options
from d2v_plugin.core.alibi import AlibiBias
from d2v_plugin.core.data2vec2 import Data2Vec2Mixin
from d2v_plugin.core.masking import channel_mask, span_mask
from d2v_plugin.core.teacher_student import Views
from d2v_plugin.core.validation import validate


class ConvPositions(nn.Module):
    """Relative positions from ``depth`` grouped convolutions (each followed by a channel layer norm
    without affine parameters and GELU), ``(B, T, C) -> (B, T, C)``; kernel ``max(3, width // depth)``."""

    def __init__(self, dim: int, width: int, depth: int, groups: int):
        super().__init__()
        k = max(3, width // depth)
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, k, padding=k // 2, groups=groups) for _ in range(depth))
        self.trim = 1 if k % 2 == 0 else 0  # an even kernel makes one frame too many

    def forward(self, x: Tensor) -> Tensor:
        x = x.transpose(1, 2)
        for conv in self.convs:
            x = conv(x)
            if self.trim:
                x = x[..., :-1]
            x = F.gelu(F.layer_norm(x.transpose(1, 2), x.shape[1:2]).transpose(1, 2))
        return x.transpose(1, 2)


class Data2Vec2AudioModel(ConvFrontEnd, Data2Vec2Mixin, BaseFairseqModel):
    """Built by ``Data2VecAudioModel.build_model`` when ``cfg.data2vec_version == 2``."""

    reference_modality = "AUDIO"

    def __init__(self, cfg):
        super().__init__()
        validate(cfg, "data2vec_audio", version=2)  # every option's range (d2v_plugin/core/validation.py)
        self.cfg = cfg
        self.build_front_end(cfg)
        dim = cfg.encoder_embed_dim
        self.pos_conv = ConvPositions(dim, cfg.conv_pos, cfg.pos_conv_depth, cfg.conv_pos_groups)
        alibi = (AlibiBias(cfg.encoder_attention_heads, cfg.alibi_scale, learned=cfg.learned_alibi_scale,
                           per_head=cfg.learned_alibi_scale_per_head) if cfg.use_alibi_encoder else None)
        self.build_data2vec2(
            dim, cfg.encoder_attention_heads, cfg.encoder_layers, cfg.encoder_ffn_embed_dim / dim,
            dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
            activation_dropout=cfg.activation_dropout, dropout_input=cfg.dropout_input,
            layerdrop=cfg.encoder_layerdrop, layer_norm_first=cfg.layer_norm_first, alibi=alibi)
        tracked = ("pos_conv", "encoder")
        if not cfg.ema_transformer_only:  # the teacher's own EMA feature encoder
            tracked = ("feature_extractor", "layer_norm", "post_extract_proj") + tracked
        self.build_ema_teacher("teacher_tracked", copy_prefixes=("pos_conv.",) if cfg.ema_layers_only else (),
                               student_modules=tracked)

    def forward(self, source: Tensor, padding_mask: Optional[Tensor] = None, mask: bool = True,
                features_only: bool = False, layer: Optional[int] = None, mask_indices: Optional[Tensor] = None,
                sample_ids: Optional[Tensor] = None, **unused):
        """Args:
            source: ``(B, S)`` waveforms; padding_mask: ``(B, S)`` bool, ``True`` = padding.
            mask_indices: optional ``(B*clone_batch, T)`` bool frame masks (copies of a sample next to
                each other, the same number of masked frames per row) instead of sampled ones.
            sample_ids: ``(B,)`` sample ids (fairseq's ``sample["id"]``), which seed the masks.

        Returns ``{"pred": (M, D), "target": (M, D), "ema_decay", "feature_var"}`` for the M masked frames of
        all copies, or with ``features_only`` (no masking) ``{"x": (B, T, D), "padding_mask", "layer_results"}``.
        """
        features, frame_padding = self.encode_features(source, padding_mask)
        if features_only:
            return self.encode_all_frames(features, frame_padding, mask, layer)
        if not mask or not 0 < self.cfg.mask_prob < 1:
            raise ValueError(f"data2vec 2.0 pre-training needs masked frames: model.mask_prob="
                             f"{self.cfg.mask_prob} must be in (0, 1)")

        x, clone_padding, clone_ids = self.clones(features, frame_padding, sample_ids)
        if mask_indices is None:
            mask_indices = self.sample_mask(x.size(0), x.size(1), clone_padding, clone_ids, x.device)
        # masked frames are zeroed before the positional convolutions, which see every frame
        x = x.masked_fill(mask_indices.unsqueeze(-1), 0.0)
        student = self.student_tokens(x + self.pos_conv(x), clone_padding, mask_indices)
        teacher_input = features if self.cfg.ema_transformer_only else source
        out = self.data2vec_step(Views(student, teacher_input, mask_indices, frame_padding))
        if self.training:
            out["feature_var"] = self._feature_var
        return out

    def encode_all_frames(self, features: Tensor, frame_padding: Optional[Tensor], mask: bool,
                          layer: Optional[int]) -> dict:
        """Every frame through the transformer (feature extraction, fine-tuning). With ``mask`` (fine-tuning's
        ``mask_prob`` / ``mask_channel_prob``) masked frames and channels are zeroed first, as the student's
        are in pre-training; nothing is removed.

        Padded frames are zeroed before the positional convolutions (as wav2vec 2.0 does), so an utterance's
        features do not depend on how much padding its batch has; data2vec_multi leaves them as they are,
        and so does pre-training here (parity)."""
        x = features
        if mask and self.cfg.mask_prob > 0:
            frames = self.sample_mask(x.size(0), x.size(1), frame_padding, None, x.device)
            x = x.masked_fill(frames.unsqueeze(-1), 0.0)
        if mask and self.cfg.mask_channel_prob > 0:
            channels = channel_mask(x.size(0), x.size(2), self.cfg.mask_channel_prob, self.cfg.mask_channel_length,
                                    device=x.device)
            x = x.masked_fill(channels.unsqueeze(1), 0.0)
        if frame_padding is not None:
            x = x.masked_fill(frame_padding.unsqueeze(-1), 0.0)
        x, block_outputs = self.encoder(x + self.pos_conv(x), frame_padding, min_target_layer=0)
        if layer is not None:
            raise ValueError("data2vec 2.0 audio: extract_features(layer=...) is not supported; read "
                             "layer_results (each block's MLP output) instead")
        return {"x": x, "padding_mask": frame_padding, "layer_results": block_outputs}

    def sample_mask(self, rows: int, frames: int, padding_mask: Optional[Tensor], sample_ids: Optional[Tensor],
                    device) -> Tensor:
        """``(rows, frames)`` span masks with the same number of masked frames per row, padding never masked."""
        cfg = self.cfg
        return span_mask(rows, frames, cfg.mask_prob, cfg.mask_length, padding_mask, min_masks=1,
                         require_same_masks=True, mask_dropout=cfg.mask_dropout, device=device,
                         **(self.mask_seed(sample_ids) or {}))

    def teacher_top_k_blocks(self, teacher: nn.Module, views: Views) -> List[Tensor]:
        """The MLP outputs of the teacher's top K blocks on the unmasked input, ``K x (B, T, D)``."""
        if self.cfg.ema_transformer_only:
            features = views.teacher
        else:  # its own EMA feature encoder on the waveforms
            conv = teacher.feature_extractor(views.teacher.to(teacher.post_extract_proj.weight.dtype))
            features = teacher.post_extract_proj(teacher.layer_norm(conv.transpose(1, 2)))
        x = features + teacher.pos_conv(features)
        _, targets = teacher.encoder(x, views.padding_mask,
                                     min_target_layer=self.cfg.encoder_layers - self.cfg.average_top_k_layers)
        return targets

    def extract_features(self, source: Tensor, padding_mask: Optional[Tensor], mask: bool = False,
                         layer: Optional[int] = None):
        return self.forward(source, padding_mask, mask=mask, features_only=True, layer=layer)


def config_from_data2vec_multi(cfg: dict) -> dict:
    """Our ``data2vec_audio`` options for a fairseq ``data2vec_multi`` audio model config (a plain dict).

    Raises a ValueError naming any option we do not implement (see :mod:`d2v_plugin.compat.data2vec_multi`).
    """
    options, audio = shared_options(cfg, "AUDIO")
    if cfg.get("ema_encoder_only", True):
        raise ValueError("data2vec_multi option model.ema_encoder_only=true (a teacher of the blocks only, fed "
                         "the student's positional convolutions) is not supported for audio")
    for name, value in (("inverse_mask", audio.get("inverse_mask", False)),
                        ("conv_pos_pre_ln", audio.get("conv_pos_pre_ln", False)),
                        ("num_extra_tokens", audio.get("num_extra_tokens", 0)), ("cls_loss", cfg.get("cls_loss", 0)),
                        ("mask_channel_prob", audio.get("mask_channel_prob", 0))):
        if value:
            raise ValueError(f"data2vec_multi audio option {name}={value!r} is not supported")
    mlp_ratio = cfg.get("mlp_ratio", 4.0)
    options.update(
        encoder_layers=cfg["depth"], encoder_embed_dim=cfg["embed_dim"], encoder_attention_heads=cfg["num_heads"],
        encoder_ffn_embed_dim=int(cfg["embed_dim"] * mlp_ratio), dropout=cfg.get("encoder_dropout", 0.1),
        attention_dropout=cfg.get("attention_dropout", 0.1), activation_dropout=cfg.get("activation_dropout", 0.0),
        dropout_input=cfg.get("dropout_input", 0.0), encoder_layerdrop=cfg.get("layerdrop", 0.0),
        layer_norm_first=cfg.get("layer_norm_first", False),
        conv_feature_layers=audio["feature_encoder_spec"], extractor_mode=audio.get("extractor_mode", "layer_norm"),
        conv_bias=False, feature_grad_mult=audio.get("local_grad_mult", 1.0), conv_pos=audio.get("conv_pos_width", 95), pos_conv_depth=audio.get("conv_pos_depth", 5),
        conv_pos_groups=audio.get("conv_pos_groups", 16), use_alibi_encoder=audio.get("use_alibi_encoder", False),
        alibi_scale=audio.get("alibi_scale", 1.0), learned_alibi_scale=audio.get("learned_alibi_scale", False),
        learned_alibi_scale_per_head=audio.get("learned_alibi_scale_per_head", False),
        # the reference's teacher tracks its own positional convolutions; ema_local_encoder: the feature encoder too
        ema_transformer_only=not audio.get("ema_local_encoder", False), ema_layers_only=False,
        require_same_masks=True,
    )
    return options
