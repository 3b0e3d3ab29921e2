"""``data2vec_text`` with ``model.data2vec_version=2``: data2vec 2.0 for text (Baevski et al. 2023).

Student: token embeddings (+ learned positions) -> layer norm -> dropout (:class:`TokenEmbedding`) ->
``clone_batch`` copies, each with its own random token mask (:func:`~d2v_plugin.core.masking.random_token_mask`) -> only the kept
tokens -> transformer (``encoder``, :class:`~d2v_plugin.core.transformer.Data2Vec2Transformer`, no ALiBi,
no prenet) -> conv decoder over all tokens (noise at the masked ones) -> ``final_proj`` at the masked tokens.
Teacher: an EMA copy of the transformer only (the embeddings are the student's, the paper's
``ema_encoder_only``), run once per sample on the whole unmasked sentence; targets: the instance-normed MLP
outputs of its top-K blocks, averaged (:mod:`d2v_plugin.core.targets`).

The data: fairseq's own ``masked_lm`` task with ``task.skip_masking=true``, so ``src_tokens`` are the
unmasked sentences (right-padded; ``<s>`` in front), and the model masks them itself, as fairseq's
data2vec_multi does (data2vec 2.0 masks tokens at random, without BERT's 80/10/10 replacement: the student
never sees the masked tokens at all). ``task.d2v2_multi=true`` (the reference's ``source`` input) works too.

Decisions, where fairseq's data2vec_multi (the reference) is followed and where not:

- **Teacher input without dropout.** The reference feeds its teacher the student's embeddings *after* the
  student's embedding dropout, so the targets are computed from a randomly corrupted sentence. Ours gets the
  same embeddings without that dropout: the teacher is meant to see the clean input (it is an eval-mode
  model everywhere else). With dropout 0 (the parity tests) both coincide.
- **Masks.** Per row, the same number of tokens is masked (the kept tokens form one dense batch,
  :class:`~d2v_plugin.core.unmasked.KeptTokens`), and **padding is never masked**: the reference's
  ``random_masking`` draws over the padded length, so a short sentence can lose all its real tokens to the
  mask (a row of padding only, whose attention is all ``-inf``) and padding is "predicted" in the loss.
  The count: as many as the reference masks in a row of the *shortest* sentence's length ``L``,
  ``L - int(L * (1 - mask_prob))`` (246 of 512 at the paper's 0.48), kept in ``[1, L - 1]`` so every row
  keeps a real token. Longer rows of a mixed batch are masked below ``mask_prob``, as fairseq's
  ``require_same_masks`` does for speech; ``task.sample_break_mode=none`` (the recipes') gives full-length
  blocks, where the fraction is exact. Which tokens: each row draws from its own numpy generator seeded
  with ``(model.seed, update, sample id)`` (the copies of a sample: :func:`~d2v_plugin.core.data2vec2.
  clone_sample_ids`), so ranks, samples, copies and updates differ and a resumed run draws the same masks;
  the reference seeds one torch generator per batch from a hash of the sum of its sample ids.
- **No context layer norm.** With ``prenet_depth: 0`` the reference's text "context encoder" has no layer
  norm and no dropout (unlike audio's); ours drops ``encoder.context_norm`` and ``prenet_dropout`` then too,
  so the blocks see the embeddings' own layer norm output, as there. With ``prenet_depth > 0`` our teacher
  averages the prenet blocks too (the reference's ``ema_encoder_only`` teacher runs the *student's*).
"""

import math
from typing import List, Optional, Tuple

from torch import Tensor, nn

from fairseq.models import FairseqEncoder
from fairseq.modules import PositionalEmbedding
from fairseq.modules.transformer_sentence_encoder import init_bert_params

from d2v_plugin.compat.data2vec_multi import is_data2vec_multi, shared_options
from d2v_plugin.core.data2vec2 import Data2Vec2Mixin
from d2v_plugin.core.finetune import dictionary_digest, remember_in_run_config
from d2v_plugin.core.masking import random_token_mask
from d2v_plugin.core.teacher_student import Views
from d2v_plugin.core.validation import validate
from d2v_plugin.text.model import Data2VecTextModel, encoder_config


class TokenEmbedding(nn.Module):
    """``(B, T)`` tokens -> ``(B, T, C)``: scaled token embeddings + positions -> layer norm -> dropout.

    Parameter names are those of fairseq data2vec_multi's ``TextLocalEncoder`` (``embed_tokens``,
    ``embed_positions``, ``layernorm_embedding``), so its checkpoints map one to one.
    """

    def __init__(self, num_tokens: int, dim: int, pad: int, max_positions: int, *, learned_pos: bool = True,
                 positions: bool = True, scale_embedding: bool = False, layernorm: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        self.embed_tokens = nn.Embedding(num_tokens, dim, pad)
        self.embed_scale = math.sqrt(dim) if scale_embedding else 1.0
        self.embed_positions = PositionalEmbedding(max_positions, dim, pad, learned=learned_pos) if positions else None
        self.layernorm_embedding = nn.LayerNorm(dim) if layernorm else None  # fairseq's LayerNorm: eps 1e-5
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: Tensor, dropout: bool = True) -> Tensor:
        x = self.embed_scale * self.embed_tokens(tokens)
        if self.embed_positions is not None:
            x = x + self.embed_positions(tokens)
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        return self.dropout(x) if dropout else x


class Data2Vec2TextEncoder(Data2Vec2Mixin, FairseqEncoder):
    """Embeddings (``local_encoder``), transformer (``encoder``), conv decoder (``decoder``), regression head
    (``final_proj``) and the EMA teacher of the transformer (``ema_teacher``)."""

    reference_modality = "TEXT"

    def __init__(self, cfg, dictionary):
        super().__init__(dictionary)
        validate(cfg, "data2vec_text", version=2)  # every option's range (d2v_plugin/core/validation.py)
        self.cfg = cfg
        tcfg = encoder_config(cfg.transformer)
        if tcfg.activation_fn != "gelu":
            raise ValueError(f"model.transformer.activation_fn={tcfg.activation_fn}: data2vec 2.0's blocks use gelu")
        dim = tcfg.encoder.embed_dim
        self.padding_idx = dictionary.pad()
        self.local_encoder = TokenEmbedding(
            len(dictionary), dim, dictionary.pad(), tcfg.max_source_positions, learned_pos=tcfg.encoder.learned_pos,
            positions=not tcfg.no_token_positional_embeddings, scale_embedding=not tcfg.no_scale_embedding,
            layernorm=tcfg.layernorm_embedding, dropout=tcfg.dropout)
        self.local_encoder.apply(init_bert_params)
        self.build_data2vec2(
            dim, tcfg.encoder.attention_heads, tcfg.encoder.layers, tcfg.encoder.ffn_embed_dim / dim,
            dropout=tcfg.dropout, attention_dropout=tcfg.attention_dropout,
            activation_dropout=tcfg.activation_dropout, dropout_input=0.0, layerdrop=tcfg.encoder.layerdrop,
            layer_norm_first=tcfg.encoder.normalize_before)
        if cfg.prenet_depth == 0:  # the reference's text context encoder: no layer norm, no dropout (see above)
            self.encoder.context_norm = None
            self.encoder.prenet_dropout = nn.Identity()
        # the teacher tracks the transformer under its model name (a view), so the reference's renamed
        # ``_ema`` (``encoder.blocks.N...``) names the teacher's parameters
        self.build_ema_teacher("teacher_tracked", student_modules=("encoder",))

    def max_positions(self) -> int:
        return self.cfg.max_positions

    def padding_mask(self, tokens: Tensor) -> Optional[Tensor]:
        padding = tokens.eq(self.padding_idx)
        return padding if padding.any() else None

    def extract_features(self, src_tokens: Tensor, return_all_hiddens: bool = False) -> Tuple[Tensor, dict]:
        """``(B, T)`` whole, unmasked tokens -> the last block's output ``(B, T, C)`` and ``{"inner_states": None}``."""
        if return_all_hiddens:
            raise ValueError("data2vec 2.0 text: return_all_hiddens is not supported")
        x, _ = self.encoder(self.local_encoder(src_tokens), self.padding_mask(src_tokens))
        return x, {"inner_states": None}

    def forward(self, src_tokens: Tensor, features_only: bool = False, return_all_hiddens: bool = False,
                mask_indices: Optional[Tensor] = None, sample_ids: Optional[Tensor] = None, **unused):
        """Args:
            src_tokens: ``(B, T)`` unmasked tokens (``masked_lm`` with ``skip_masking=true``), right-padded.
            mask_indices: optional ``(B*clone_batch, T)`` bool token masks (copies of a sample next to each
                other, the same number per row, no padding) instead of sampled ones.
            sample_ids: ``(B,)`` sample ids (fairseq's ``sample["id"]``), which seed the masks.

        Returns ``{"pred": (M, C), "target": (M, C), "ema_decay"}`` for the M masked tokens of all copies, or
        with ``features_only`` ``((B, T, C), {"inner_states": None})``.
        """
        if features_only:
            return self.extract_features(src_tokens, return_all_hiddens)
        padding_mask = self.padding_mask(src_tokens)
        clean = self.local_encoder(src_tokens, dropout=False)
        x, clone_padding, clone_ids = self.clones(self.local_encoder.dropout(clean), padding_mask, sample_ids)
        if mask_indices is None:
            mask_indices = self.sample_mask(x.size(0), x.size(1), clone_padding, clone_ids, x.device)
        student = self.student_tokens(x, clone_padding, mask_indices)
        # the teacher: the whole sentence's embeddings without the student's dropout (module docstring)
        return self.data2vec_step(Views(student, clean, mask_indices, padding_mask))

    def sample_mask(self, rows: int, length: int, padding_mask: Optional[Tensor], sample_ids: Optional[Tensor],
                    device) -> Tensor:
        if sample_ids is not None and self.cfg.seed is None:
            raise ValueError("model.seed is not set: build the model with Data2VecTextModel.build_model, which "
                             "takes the task's seed, or set it")
        return random_token_mask(rows, length, self.cfg.mask_prob, padding_mask, device=device,
                                 **(self.mask_seed(sample_ids) or {}))

    def teacher_top_k_blocks(self, teacher: nn.Module, views: Views) -> List[Tensor]:
        """The MLP outputs of the teacher's top K blocks on the unmasked sentence, ``K x (B, T, C)``."""
        depth = len(self.encoder.blocks)
        _, targets = teacher.encoder(views.teacher, views.padding_mask,
                                     min_target_layer=depth - self.cfg.average_top_k_layers)
        return targets


class Data2Vec2TextModel(Data2VecTextModel):
    """The fairseq model around :class:`Data2Vec2TextEncoder` (``encoder.*``), built by
    ``Data2VecTextModel.build_model`` when ``cfg.data2vec_version == 2``. Loads fairseq data2vec_multi text
    state dicts (``modality_encoders.TEXT.*``, ``blocks.*``, ``_ema``) through the ``TEXT`` key map."""

    @classmethod
    def build_v2(cls, cfg, task):
        if getattr(getattr(task, "cfg", None), "skip_masking", True) is False:
            raise ValueError("data2vec_text with data2vec_version=2 masks the tokens itself: set "
                             "task.skip_masking=true (masked_lm), or src_tokens arrive BERT-masked")
        remember_in_run_config(cfg, "dictionary_digest", dictionary_digest(task.source_dictionary))
        if cfg.seed is None:  # the masks' seed: the task's (common.seed), remembered in the checkpoint
            remember_in_run_config(cfg, "seed", int(getattr(getattr(task, "cfg", None), "seed", 1)))
        return cls(cfg, Data2Vec2TextEncoder(cfg, task.source_dictionary))

    def forward(self, src_tokens: Optional[Tensor] = None, features_only: bool = False,
                return_all_hiddens: bool = False, mask_indices: Optional[Tensor] = None,
                sample_ids: Optional[Tensor] = None, source: Optional[Tensor] = None, **unused):
        """See :meth:`Data2Vec2TextEncoder.forward`; ``source`` is ``src_tokens`` under masked_lm's ``d2v2_multi``."""
        return self.encoder(src_tokens if src_tokens is not None else source, features_only, return_all_hiddens,
                            mask_indices=mask_indices, sample_ids=sample_ids)

    def upgrade_state_dict_named(self, state_dict, name: str) -> None:
        # a data2vec_multi state dict has the encoder's parameters at its top level: move them under encoder.
        prefix = f"{name}." if name else ""
        if is_data2vec_multi(state_dict, prefix):
            for k in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "encoder.")]:
                state_dict[f"{prefix}encoder.{k[len(prefix):]}"] = state_dict.pop(k)
        super().upgrade_state_dict_named(state_dict, name)


def config_from_data2vec_multi(cfg: dict) -> dict:
    """Our ``data2vec_text`` options (a plain dict, nested ``transformer``) for a fairseq ``data2vec_multi``
    text model config (a plain dict): ``OmegaConf.merge(OmegaConf.structured(Data2VecTextConfig), options)``.

    Raises a ValueError naming any option we do not implement (see :mod:`d2v_plugin.compat.data2vec_multi`).
    """
    options, text = shared_options(cfg, "TEXT")
    prenet = text.get("prenet_depth", 0)
    unsupported = [
        ("model.modalities.text.ema_local_encoder", text.get("ema_local_encoder", False), False),
        ("model.modalities.text.mask_length", text.get("mask_length", 1), 1),
        ("model.modalities.text.inverse_mask", text.get("inverse_mask", False), False),
        ("model.modalities.text.num_extra_tokens", text.get("num_extra_tokens", 0), 0),
        ("model.modalities.text.use_alibi_encoder", text.get("use_alibi_encoder", False), False),
        ("model.modalities.text.mask_channel_prob", text.get("mask_channel_prob", 0), 0),
        ("model.modalities.text.local_grad_mult", text.get("local_grad_mult", 1.0), 1.0),
        ("model.modalities.text.dropout", text.get("dropout", 0.1), cfg.get("encoder_dropout", 0.1)),
        ("model.cls_loss", cfg.get("cls_loss", 0), 0),
        ("model.end_of_block_targets", cfg.get("end_of_block_targets", False), False),
        ("model.dropout_input", cfg.get("dropout_input", 0.0), 0.0),
    ]
    for name, value, supported in unsupported:
        if value != supported:
            why = " (ours ties it to model.encoder_dropout)" if name.endswith(".dropout") else ""
            raise ValueError(f"data2vec_multi option {name}={value!r} is not supported by d2v_plugin's data2vec "
                             f"2.0 text (only {supported!r}){why}")
    if cfg.get("ema_encoder_only", True) and prenet > 0:
        raise ValueError(f"data2vec_multi options model.ema_encoder_only=true with model.modalities.text."
                         f"prenet_depth={prenet} (a teacher fed through the student's prenet blocks) are not "
                         f"supported")
    options.pop("mask_length", None)
    options.pop("mask_dropout", None)  # unused by the reference's token masking
    if prenet == 0:
        options["prenet_dropout"] = 0.0  # not applied without a prenet, there or here
    dim = cfg["embed_dim"]
    options.update(
        seed=cfg.get("seed", 1),
        max_positions=text.get("max_source_positions", 512),
        transformer=dict(
            dropout=cfg.get("encoder_dropout", 0.1), attention_dropout=cfg.get("attention_dropout", 0.1),
            activation_dropout=cfg.get("activation_dropout", 0.0), activation_fn="gelu",
            layernorm_embedding=text.get("layernorm_embedding", True),
            no_scale_embedding=text.get("no_scale_embedding", True),
            no_token_positional_embeddings=text.get("no_token_positional_embeddings", False),
            max_source_positions=text.get("max_source_positions", 512),
            encoder=dict(embed_dim=dim, ffn_embed_dim=int(dim * cfg.get("mlp_ratio", 4.0)), layers=cfg["depth"],
                         attention_heads=cfg["num_heads"], normalize_before=cfg.get("layer_norm_first", False),
                         learned_pos=text.get("learned_pos", True), layerdrop=cfg.get("layerdrop", 0.0)),
        ),
    )
    return options

