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

from d2v_plugin.core.config import Data2Vec2Config, Data2VecConfig, ModelMaskedConfig
from d2v_plugin.audio.front_end import ConvFrontEnd
from d2v_plugin.core.masking import channel_mask, span_mask
from d2v_plugin.core.teacher_student import TeacherStudentMixin, Views
from d2v_plugin.core.validation import validate


@dataclass
class Data2VecAudioConfig(Wav2Vec2Config, Data2VecConfig, Data2Vec2Config, ModelMaskedConfig):
    """wav2vec 2.0's options plus the shared data2vec ones (fairseq's official names).

    data2vec 2.0 (``data2vec_version: 2``) reads wav2vec 2.0's names for what both have: its positional
    convolutions are ``conv_pos`` wide (data2vec_multi: ``conv_pos_width``) in ``pos_conv_depth`` layers
    (``conv_pos_depth``) of ``conv_pos_groups`` groups, and its blocks are ``encoder_layers`` deep (``depth``).
    """

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
    # -- data2vec 2.0 only ------------------------------------------------------------------------
    use_alibi_encoder: bool = field(
        default=True, metadata={"help": "data2vec 2.0: ALiBi attention biases (-slope * frame distance)"})
    alibi_scale: float = field(default=1.0, metadata={"help": "data2vec 2.0: initial scale of the ALiBi slopes"})
    learned_alibi_scale: bool = field(default=True, metadata={"help": "data2vec 2.0: learn the ALiBi scale"})
    learned_alibi_scale_per_head: bool = field(
        default=True, metadata={"help": "data2vec 2.0: one learned ALiBi scale per attention head"})


@register_model("data2vec_audio", dataclass=Data2VecAudioConfig)
class Data2VecAudioModel(ConvFrontEnd, TeacherStudentMixin, BaseFairseqModel):
    def __init__(self, cfg: Data2VecAudioConfig):
        super().__init__()
        validate(cfg, "data2vec_audio", version=1)  # every option's range (d2v_plugin/core/validation.py)
        self.cfg = cfg
        self.build_front_end(cfg)
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
        if cfg.data2vec_version == 2:
            from d2v_plugin.audio.model_v2 import Data2Vec2AudioModel

            return Data2Vec2AudioModel(cfg)
        if cfg.data2vec_version != 1:
            raise ValueError(f"model.data2vec_version={cfg.data2vec_version} must be 1 or 2")
        return cls(cfg)

    # -- student pieces ------------------------------------------------------------------------
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
