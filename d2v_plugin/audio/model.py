"""``data2vec_audio``: data2vec pre-training for speech.

Student: wav2vec 2.0's conv feature encoder -> layer norm -> projection -> span masking (learned mask
embedding) -> transformer encoder -> linear regression head. Teacher: an EMA copy of the transformer
encoder (the feature encoder is shared, as in the paper) run on the unmasked features; its targets are
the instance-normalised average of the top-K block outputs (:mod:`d2v_plugin.core.targets`). The building
blocks are fairseq's own (``fairseq.models.wav2vec``), so parameter names equal wav2vec 2.0's and
fairseq's data2vec's, and their checkpoints load here.
"""

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from fairseq.models import BaseFairseqModel, register_model
from fairseq.models.wav2vec.wav2vec2 import TransformerEncoder, Wav2Vec2Config
from fairseq.modules import GradMultiply, LayerNorm

from d2v_plugin.core.config import Data2VecConfig, ModelMaskedConfig
from d2v_plugin.audio.conv_features import ConvFeatureExtractor, parse_conv_layers
from d2v_plugin.core.masking import channel_mask, span_mask
from d2v_plugin.core.teacher_student import TeacherStudentMixin, Views


@dataclass
class Data2VecAudioConfig(Wav2Vec2Config, Data2VecConfig, ModelMaskedConfig):
    """wav2vec 2.0's options plus the shared data2vec ones (fairseq's official names)."""

    ema_transformer_only: bool = field(
        default=True,
        metadata={"help": "true: the teacher tracks the transformer only and shares the conv feature "
                          "encoder with the student (the paper's setting); false: the teacher has its own "
                          "EMA copy of the feature encoder too and encodes the waveform itself, which keeps "
                          "a trained feature encoder from collapsing on small data (fairseq#5239)"},
    )
    ema_layers_only: bool = field(
        default=True,
        metadata={"help": "average only the transformer blocks; the positional conv is copied "
                          "from the student at every step"},
    )


def conv_output_lengths(lengths: Tensor, conv_layers: List[Tuple[int, int, int]]) -> Tensor:
    """Frames produced by the conv feature encoder for ``lengths`` input samples."""
    for _, kernel, stride in conv_layers:
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.long()


@register_model("data2vec_audio", dataclass=Data2VecAudioConfig)
class Data2VecAudioModel(TeacherStudentMixin, BaseFairseqModel):
    def __init__(self, cfg: Data2VecAudioConfig):
        super().__init__()
        if not 0 < cfg.average_top_k_layers <= cfg.encoder_layers:
            raise ValueError(f"model.average_top_k_layers={cfg.average_top_k_layers} must be in "
                             f"1..encoder_layers ({cfg.encoder_layers})")
        self.cfg = cfg
        self.conv_layers = parse_conv_layers(cfg.conv_feature_layers)  # never eval: it comes from checkpoints too
        extractor_dim = self.conv_layers[-1][0]

        # fairseq's conv feature encoder (same modules and weights) with a faster forward on CPU
        self.feature_extractor = ConvFeatureExtractor(
            conv_layers=self.conv_layers, dropout=0.0, mode=cfg.extractor_mode, conv_bias=cfg.conv_bias
        )
        if cfg.feature_grad_mult == 0:
            # A frozen feature encoder: no gradients, no optimizer state, nothing for DDP to wait for.
            self.feature_extractor.requires_grad_(False)
        self.layer_norm = LayerNorm(extractor_dim)
        self.post_extract_proj = nn.Linear(extractor_dim, cfg.encoder_embed_dim)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.mask_emb = nn.Parameter(torch.empty(cfg.encoder_embed_dim).uniform_())
        self.encoder = TransformerEncoder(cfg)
        self.final_proj = nn.Linear(cfg.encoder_embed_dim, cfg.encoder_embed_dim)
        self.init_regression_head()
        if cfg.ema_transformer_only:
            self.build_ema_teacher("encoder", copy_prefixes=("pos_conv.",) if cfg.ema_layers_only else ())
        else:
            # Why: with a shared feature encoder the student can make the teacher's input (and so the
            # targets) trivial by flattening the conv features; an EMA copy moves too slowly for that.
            self.build_ema_teacher(
                "teacher_tracked", copy_prefixes=("encoder.pos_conv.",) if cfg.ema_layers_only else (),
                student_modules=("feature_extractor", "layer_norm", "post_extract_proj", "encoder"))

    @classmethod
    def build_model(cls, cfg: Data2VecAudioConfig, task=None):
        return cls(cfg)

    # -- student pieces ------------------------------------------------------------------------
    def encode_features(self, source: Tensor, padding_mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """Waveform ``(B, S)`` -> projected conv features ``(B, T, D)`` and frame padding ``(B, T)``."""
        if self.cfg.feature_grad_mult > 0:
            features = self.feature_extractor(source)
            if self.cfg.feature_grad_mult != 1.0:
                features = GradMultiply.apply(features, self.cfg.feature_grad_mult)
        else:
            with torch.no_grad():
                features = self.feature_extractor(source)
        features = self.layer_norm(features.transpose(1, 2))
        frame_padding = self.frame_padding(features, padding_mask)
        if self.training:
            self._feature_var = self.feature_variation(features.detach(), frame_padding)
        return self.post_extract_proj(features), frame_padding

    def frame_padding(self, features: Tensor, padding_mask: Optional[Tensor]) -> Optional[Tensor]:
        """``(B, T)`` bool padding of the conv frames from the ``(B, S)`` sample padding (None: none)."""
        if padding_mask is None or not padding_mask.any():
            return None
        frames = conv_output_lengths((~padding_mask).long().sum(-1), self.conv_layers)
        positions = torch.arange(features.size(1), device=features.device)
        return positions.unsqueeze(0) >= frames.unsqueeze(1)

    @staticmethod
    def feature_variation(features: Tensor, frame_padding: Optional[Tensor]) -> float:
        """How much the (layer-normed) conv features change over time: per-channel std over the frames
        of each utterance, averaged. Near 0 means the feature encoder collapsed to a constant, which the
        target_var/pred_var checks cannot see because the targets are instance-normalised (fairseq#5239).
        """
        if frame_padding is not None:
            keep = (~frame_padding).unsqueeze(-1).float()
            n = keep.sum(1).clamp(min=2)
            mean = (features * keep).sum(1) / n
            var = (((features - mean.unsqueeze(1)) ** 2) * keep).sum(1) / (n - 1)
        else:
            var = features.var(dim=1)
        return var.clamp(min=0).sqrt().mean().item()

    def apply_mask(self, x: Tensor, padding_mask: Optional[Tensor], mask_indices: Optional[Tensor] = None,
                   mask_channel_indices: Optional[Tensor] = None,
                   sample_ids: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """Replace masked frames of ``x (B, T, D)`` with the mask embedding; zero masked channels.

        Masks not given are sampled per sample from ``sample_ids`` (:meth:`mask_seed`). Returns the
        masked ``x`` (a new tensor: the unmasked one is still the teacher's input) and the ``(B, T)``
        bool time mask (``None`` when ``mask_prob == 0``).
        """
        cfg = self.cfg
        B, T, C = x.shape
        seeding = self.mask_seed(sample_ids) or {}
        if cfg.mask_prob > 0:
            if mask_indices is None:
                mask_indices = span_mask(
                    B, T, cfg.mask_prob, cfg.mask_length, padding_mask,
                    mask_selection=cfg.mask_selection, mask_other=cfg.mask_other, min_masks=1,
                    no_overlap=cfg.no_mask_overlap, min_space=cfg.mask_min_space,
                    require_same_masks=cfg.require_same_masks, mask_dropout=cfg.mask_dropout,
                    device=x.device, **seeding,
                )
            x = torch.where(mask_indices.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        else:
            mask_indices = None
        if cfg.mask_channel_prob > 0:
            if mask_channel_indices is None:
                mask_channel_indices = channel_mask(
                    B, C, cfg.mask_channel_prob, cfg.mask_channel_length, device=x.device,
                    mask_type=cfg.mask_channel_selection, mask_other=cfg.mask_channel_other,
                    no_overlap=cfg.no_mask_channel_overlap, min_space=cfg.mask_channel_min_space,
                    **seeding,
                )
            x = x.masked_fill(mask_channel_indices.unsqueeze(1), 0.0)
        return x, mask_indices

    # -- forward -------------------------------------------------------------------------------
    def forward(self, source: Tensor, padding_mask: Optional[Tensor] = None, mask: bool = True,
                features_only: bool = False, layer: Optional[int] = None,
                mask_indices: Optional[Tensor] = None, mask_channel_indices: Optional[Tensor] = None,
                padding_count=None, sample_ids: Optional[Tensor] = None):
        """Args:
            source: ``(B, S)`` waveforms; padding_mask: ``(B, S)`` bool, ``True`` = padding.
            mask_indices: optional ``(B, T)`` bool frame mask to use instead of sampling one.
            sample_ids: ``(B,)`` ids of the samples (fairseq's ``sample["id"]``), which seed their masks.

        Returns ``{"pred": (M, D), "target": (M, D), "ema_decay": float, "feature_var": float}`` for the M
        masked frames, or with ``features_only`` ``{"x": (B, T, D), "padding_mask": (B, T), "layer_results"}``.
        """
        features, padding_mask = self.encode_features(source, padding_mask)
        x = self.dropout_input(features)
        if mask:
            x, mask_indices = self.apply_mask(x, padding_mask, mask_indices, mask_channel_indices, sample_ids)
        if features_only:
            x, layer_results = self.encoder(x, padding_mask=padding_mask, layer=layer)
            return {"x": x, "padding_mask": padding_mask, "layer_results": layer_results}
        if mask_indices is None:
            raise ValueError("data2vec pre-training needs masked frames: set model.mask_prob > 0")
        # The teacher sees unmasked features: the shared ones, or the waveforms for its own feature encoder.
        teacher_input = features if self.cfg.ema_transformer_only else source
        out = self.data2vec_step(Views(x, teacher_input, mask_indices, padding_mask))
        if self.training:
            out["feature_var"] = self._feature_var
        return out

    def encode_student(self, views: Views) -> Tensor:
        return self.encoder(views.student, padding_mask=views.padding_mask)[0]

    def teacher_top_k_blocks(self, teacher: nn.Module, views: Views) -> List[Tensor]:
        """The FFN outputs before the last residual of the teacher's top K blocks, ``K x (B, T, D)``."""
        if self.cfg.ema_transformer_only:
            encoder, features = teacher, views.teacher
        else:  # the teacher's own EMA feature encoder on the waveforms
            conv = teacher.feature_extractor(views.teacher.to(teacher.post_extract_proj.weight.dtype))
            encoder, features = teacher.encoder, teacher.post_extract_proj(teacher.layer_norm(conv.transpose(1, 2)))
        # each block result is (output, attention, FFN output before the last residual), time first
        _, blocks = encoder.extract_features(features, padding_mask=views.padding_mask,
                                             min_layer=self.cfg.encoder_layers - self.cfg.average_top_k_layers)
        return [ffn.transpose(0, 1) for _, _, ffn in blocks]

    def extract_features(self, source: Tensor, padding_mask: Optional[Tensor], mask: bool = False,
                         layer: Optional[int] = None):
        return self.forward(source, padding_mask, mask=mask, features_only=True, layer=layer)
