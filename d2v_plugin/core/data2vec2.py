"""data2vec 2.0's student, written once: encode the kept tokens, decode every position.

:class:`Data2Vec2Mixin` extends :class:`~d2v_plugin.core.teacher_student.TeacherStudentMixin` (same EMA
teacher, targets, loss and step) with what the 2.0 mode changes:

- :meth:`~Data2Vec2Mixin.build_data2vec2`: the shared transformer (``encoder``), the conv decoder
  (``decoder``) and the regression head (``final_proj``, the decoder's output projection);
- :meth:`~Data2Vec2Mixin.student_tokens`: ``clone_batch`` copies of each sample -> their kept tokens
  (:class:`StudentTokens`, the ``student`` of :class:`~d2v_plugin.core.teacher_student.Views`);
- :meth:`~Data2Vec2Mixin.encode_student`: the transformer on the kept tokens, then the decoder over the
  whole sequence, noise tokens at the masked positions.

A modality supplies its embeddings (and positions), its masks and ``teacher_top_k_blocks``.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from fairseq.modules.transformer_sentence_encoder import init_bert_params

from d2v_plugin.compat.data2vec_multi import convert_state_dict, is_data2vec_multi
from d2v_plugin.core.alibi import AlibiBias
from d2v_plugin.core.config import Data2Vec2Config
from d2v_plugin.core.decoder import ConvDecoder, build_projection
from d2v_plugin.core.teacher_student import TeacherStudentMixin, Views
from d2v_plugin.core.transformer import Data2Vec2Transformer
from d2v_plugin.core.unmasked import KeptTokens, clone_rows, gather_kept, kept_tokens


@dataclass
class StudentTokens:
    """The student's input in data2vec 2.0: only the kept tokens of the B*M masked copies.

    Attributes:
        x: ``(B*M, K, C)`` embeddings of the kept tokens (positions already added), extra tokens excluded.
        kept: where they sit in the ``T`` positions, and the ``(B*M, T)`` mask.
        padding_mask: ``(B*M, K)`` bool, ``True`` = padding, or None.
        extra_outputs: ``(B*M, num_extra_tokens, C)``, the encoder's final outputs at the extra tokens,
            set by :meth:`Data2Vec2Mixin.encode_student` (None before, or without extra tokens): what a
            loss on them reads (images: the [CLS] loss).
    """

    x: Tensor
    kept: KeptTokens
    padding_mask: Optional[Tensor] = None
    extra_outputs: Optional[Tensor] = None


def clone_sample_ids(sample_ids: Optional[Tensor], clones: int) -> Optional[Tensor]:
    """Mask seeds for the copies: copy ``c`` of sample ``i`` draws its mask as sample ``i * clones + c``,
    so every copy, sample, update and data-parallel rank gets its own mask (unique for a given
    ``clone_batch``)."""
    if sample_ids is None or clones == 1:
        return sample_ids
    return (sample_ids.long().view(-1, 1) * clones + torch.arange(clones).view(1, -1)).view(-1)


class Data2Vec2Mixin(TeacherStudentMixin):
    """Mixed into a data2vec model whose ``cfg`` is also a :class:`Data2Vec2Config`."""

    cfg: Data2Vec2Config
    num_extra_tokens = 0  # tokens in front of the sequence that are never masked (images: [CLS])
    reference_modality = ""  # the modality's key in fairseq's data2vec_multi ("AUDIO", "TEXT", "IMAGE")

    def build_data2vec2(self, dim: int, heads: int, depth: int, mlp_ratio: float, *, dropout: float,
                        attention_dropout: float, activation_dropout: float, dropout_input: float,
                        layerdrop: float, layer_norm_first: bool, alibi: Optional[AlibiBias] = None,
                        grid: Tuple[int, ...] = (), end_of_block_targets: bool = False) -> None:
        """Build ``encoder``, ``decoder`` and ``final_proj`` (called from the model's ``__init__``)."""
        cfg = self.cfg  # its ranges were checked by the model's constructor (core/validation.py)
        self.encoder = Data2Vec2Transformer(
            dim, heads, depth, mlp_ratio, prenet_depth=cfg.prenet_depth, dropout=dropout,
            attention_dropout=attention_dropout, activation_dropout=activation_dropout,
            post_mlp_drop=cfg.post_mlp_drop, prenet_dropout=cfg.prenet_dropout, dropout_input=dropout_input,
            layerdrop=layerdrop, layer_norm_first=layer_norm_first, norm_eps=cfg.norm_eps,
            end_of_block_targets=end_of_block_targets, alibi=alibi)
        self.encoder.apply(init_bert_params)  # BERT's init, as fairseq's data2vec models
        self.decoder = ConvDecoder(cfg, dim, grid)
        self.final_proj = build_projection(cfg, dim)
        self.init_regression_head()

    def student_tokens(self, x: Tensor, padding_mask: Optional[Tensor], mask: Tensor) -> StudentTokens:
        """``x`` ``(B*M, T, C)`` (the clones, positions added) and its ``(B*M, T)`` mask -> the kept tokens."""
        kept = kept_tokens(mask)
        if padding_mask is not None:
            padding_mask = gather_kept(padding_mask, kept)
            if not padding_mask.any():
                padding_mask = None
        return StudentTokens(gather_kept(x, kept), kept, padding_mask)

    def encode_student(self, views: Views) -> Tensor:
        """Transformer on the kept tokens, decoder over all positions: ``(B*M, T, decoder_dim)``."""
        s: StudentTokens = views.student
        n = self.num_extra_tokens
        x = s.x
        padding_mask = s.padding_mask
        if n:
            x = torch.cat([self.extra_tokens.expand(x.size(0), -1, -1).to(x.dtype), x], dim=1)
            if padding_mask is not None:
                padding_mask = nn.functional.pad(padding_mask, (n, 0), value=False)
        x, _ = self.encoder(x, padding_mask, positions=s.kept.keep, extra_tokens=n)
        if n:
            s.extra_outputs = x[:, :n]
        return self.decoder(x[:, n:], s.kept, self.cfg.mask_noise_std)

    def clones(self, x: Tensor, padding_mask: Optional[Tensor], sample_ids: Optional[Tensor]):
        """``(x, padding_mask, sample_ids)`` of the ``clone_batch`` copies (repeat_interleave order)."""
        m = self.cfg.clone_batch
        return (clone_rows(x, m), None if padding_mask is None else clone_rows(padding_mask, m),
                clone_sample_ids(sample_ids, m))

    def remove_pretraining_modules(self, last_layer: Optional[int] = None) -> None:
        """Drop the teacher, the decoder and the head (and blocks above ``last_layer``) for fine-tuning."""
        self.ema_teacher = None
        self.final_proj = None
        self.decoder = None
        if last_layer is not None:
            blocks = self.encoder.blocks
            self.encoder.blocks = type(blocks)(b for i, b in enumerate(blocks) if i <= last_layer)

    def upgrade_state_dict_named(self, state_dict, name: str) -> None:
        prefix = f"{name}." if name else ""
        if is_data2vec_multi(state_dict, prefix):  # fairseq's data2vec 2.0: rename with its key map
            convert_state_dict(state_dict, self.reference_modality, prefix)
        super().upgrade_state_dict_named(state_dict, name)
        if getattr(self, "decoder", None) is None:  # fine-tuning: the decoder is not needed
            prefix = f"{name}.decoder." if name else "decoder."
            for k in [k for k in state_dict if k.startswith(prefix)]:
                del state_dict[k]
