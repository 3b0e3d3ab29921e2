"""``data2vec_text``: data2vec pre-training for text (a RoBERTa-style encoder).

Student: token + learned position embeddings -> layer norm -> post-LN transformer blocks (fairseq's
``TransformerEncoder``, RoBERTa's architecture) -> regression head at the masked positions.
Teacher: an EMA copy of the whole encoder run on the *unmasked* tokens; its targets are the average
of the layer-normed FFN outputs of the top-K blocks (:mod:`d2v_plugin.core.targets`). With
``ema_transformer_layers_only`` the embeddings are copied from the student instead of averaged.

Masking is fairseq's ``masked_lm`` task (BERT: select 15% of tokens, 80% ``<mask>``, 10% random,
10% unchanged) with ``task.include_target_tokens=true``, which adds ``target_tokens`` to the input:
the original token at every selected position and padding elsewhere. From it we rebuild the
unmasked sentence for the teacher. (fairseq's own data2vec text model feeds ``target_tokens`` to its
teacher as is, so its teacher sees little more than padding: fairseq issue #4881.)

``model.data2vec_version=2`` builds data2vec 2.0 instead (:mod:`d2v_plugin.text.model_v2`: the model masks
the tokens itself, with ``task.skip_masking=true``).

Module and parameter names are fairseq's data2vec/RoBERTa ones (``encoder.sentence_encoder.*``,
``encoder.regression_head.*``), so fairseq's data2vec text checkpoints load here (their teacher,
saved as ``encoder._ema``, becomes ``encoder.ema_teacher``), and unlike theirs ours resume.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from omegaconf import II, OmegaConf
from torch import Tensor, nn

from fairseq.dataclass import ChoiceEnum
from fairseq.models import FairseqEncoder, FairseqEncoderModel, register_model
from fairseq.models.transformer import TransformerConfig, TransformerEncoderBase
from fairseq.models.transformer.transformer_config import DecoderConfig, EncDecBaseConfig, QuantNoiseConfig
from fairseq.modules.transformer_sentence_encoder import init_bert_params

from d2v_plugin.core.config import Data2Vec2Config, Data2VecConfig
from d2v_plugin.core.finetune import dictionary_digest, remember_in_run_config
from d2v_plugin.core.teacher_student import TeacherStudentMixin, Views
from d2v_plugin.core.validation import validate

LOSS_POSITIONS = ChoiceEnum(["selected", "mask_token"])


def default_transformer_config() -> TransformerConfig:
    """fairseq's TransformerConfig defaults, with concrete sub-configs.

    ``TransformerConfig()`` keeps its ``decoder`` default as an interpolation of
    ``${model.decoder.embed_dim}``, which does not exist in this model's config and would fail when
    fairseq resolves the config to save a checkpoint. A ``DecoderConfig()`` instance resolves it.
    """
    return TransformerConfig(encoder=EncDecBaseConfig(), decoder=DecoderConfig(), quant_noise=QuantNoiseConfig())


@dataclass
class Data2VecTextConfig(Data2VecConfig, Data2Vec2Config):
    """fairseq's data2vec text options (same names) plus the shared data2vec ones.

    data2vec 2.0 (``data2vec_version: 2``, :mod:`d2v_plugin.text.model_v2`) reads the same ``transformer``
    options for its blocks and embeddings (``transformer.dropout`` is also the embeddings' dropout, as in
    fairseq's data2vec text), masks the tokens itself (``mask_prob``, seeded by ``seed``) and ignores
    ``head_layers`` (its head is ``projection_layers``), ``ema_transformer_layers_only`` and ``loss_positions``.
    """

    max_positions: int = field(
        default=II("task.tokens_per_sample"), metadata={"help": "longest input the model accepts, in tokens"}
    )
    head_layers: int = field(
        default=1,
        metadata={"help": "layers of the regression head: head_layers - 1 hidden layers of width "
                          "2 * embed_dim with GELU, then a linear layer (the official base recipe uses 2)"},
    )
    transformer: TransformerConfig = field(
        default_factory=default_transformer_config,
        metadata={"help": "the encoder (fairseq's TransformerConfig: transformer.encoder.embed_dim, "
                          "transformer.encoder.layers, transformer.dropout, ...)"},
    )
    ema_transformer_layers_only: bool = field(
        default=True,
        metadata={"help": "average only the transformer blocks; token/position embeddings and their layer "
                          "norm are copied from the student at every step"},
    )
    loss_positions: LOSS_POSITIONS = field(
        default="selected",
        metadata={"help": "where the loss is taken. selected: every position masked_lm selected (BERT's "
                          "rule, as in the paper); mask_token: only those replaced by <mask> (fairseq's "
                          "data2vec implementation, fairseq issue #4229). Equal when masked_lm's "
                          "random_token_prob and leave_unmasked_prob are 0, as in the official recipe"},
    )
    dictionary_digest: Optional[str] = field(
        default=None,
        metadata={"help": "set by build_model: sha256 of the dictionary's symbols in order "
                          "(d2v_plugin.core.finetune.dictionary_digest); fine-tuning checks its data against it"},
    )
    load_checkpoint_heads: bool = field(
        default=False,
        metadata={"help": "accepted so that fairseq's data2vec text configs load; this model has no "
                          "classification heads (fine-tune with data2vec_text_classification)"},
    )
    mask_prob: float = field(
        default=0.48,
        metadata={"help": "data2vec 2.0 only: fraction of each sentence's tokens the model masks at random (the "
                          "task's masking is skipped: task.skip_masking=true); version 1 masks in masked_lm "
                          "(task.mask_prob)"},
    )
    seed: Optional[int] = field(
        default=None,
        metadata={"help": "data2vec 2.0 only: seeds the masks, with the update number and each sample's id; "
                          "None: the task's seed (common.seed), filled in when the model is built. (Not "
                          "${common.seed}: version 1 configs stay free of interpolations to other groups)"},
    )


def encoder_config(transformer) -> TransformerConfig:
    """fairseq's ``TransformerConfig`` for the encoder from our ``transformer`` option.

    The option is a dataclass, or under hydra an OmegaConf node. The node's ``decoder`` part is left
    out: an encoder never reads it, and in configs that started from ``TransformerConfig()`` (fairseq's
    data2vec text) it interpolates ``${model.decoder.embed_dim}``, which does not resolve there.
    """
    if isinstance(transformer, TransformerConfig):
        return transformer
    keys = [k for k in transformer if k != "decoder"]
    values = OmegaConf.to_container(OmegaConf.masked_copy(transformer, keys), resolve=True, enum_to_str=True)
    values["encoder"] = EncDecBaseConfig(**values.get("encoder", {}))
    values["quant_noise"] = QuantNoiseConfig(**values.get("quant_noise", {}))
    return TransformerConfig(**values)


def build_regression_head(dim: int, num_layers: int) -> nn.Sequential:
    """``(M, dim) -> (M, dim)``: ``num_layers - 1`` GELU layers of width ``2 * dim``, then a linear map.

    Laid out as fairseq's data2vec head (``0``: Linear, ``1``: GELU, ``2``: Linear, ...), so its
    checkpoints' ``regression_head.*`` weights load.
    """
    layers, width = [], dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(width, 2 * dim), nn.GELU()]
        width = 2 * dim
    layers.append(nn.Linear(width, dim))
    return nn.Sequential(*layers)


class Data2VecTextEncoder(TeacherStudentMixin, FairseqEncoder):
    """Student encoder, regression head and EMA teacher (``sentence_encoder``, ``regression_head``,
    ``ema_teacher``)."""

    regression_head_name = "regression_head"

    def __init__(self, cfg: Data2VecTextConfig, dictionary):
        super().__init__(dictionary)
        validate(cfg, "data2vec_text", version=1)  # every option's range (d2v_plugin/core/validation.py)
        self.cfg = cfg
        tcfg = encoder_config(cfg.transformer)
        self.mask_idx = dictionary.index("<mask>")
        if self.mask_idx == dictionary.unk():
            raise ValueError("the dictionary has no <mask> symbol: use the masked_lm task, which adds it")
        dim = tcfg.encoder.embed_dim
        embed_tokens = nn.Embedding(len(dictionary), dim, dictionary.pad())
        # return_fc: every block also returns its FFN output before the last residual (the targets)
        self.sentence_encoder = TransformerEncoderBase(tcfg, dictionary, embed_tokens, return_fc=True)
        self.regression_head = build_regression_head(dim, cfg.head_layers)
        # BERT's init, before the teacher copies the student (both start equal)
        self.sentence_encoder.apply(init_bert_params)
        self.regression_head.apply(init_bert_params)
        self.init_regression_head()
        # ema_transformer_layers_only: everything but the blocks is copied (the embeddings, their layer
        # norm, and the final layer norm of pre-LN models, which the targets never use)
        copied = ("embed_tokens.", "embed_positions.", "layernorm_embedding.", "layer_norm.")
        self.build_ema_teacher("sentence_encoder", copy_prefixes=copied if cfg.ema_transformer_layers_only else ())

    def max_positions(self) -> int:
        return self.cfg.max_positions

    def extract_features(self, src_tokens: Tensor, return_all_hiddens: bool = False) -> Tuple[Tensor, Dict]:
        """``(B, T)`` tokens -> last block's output ``(B, T, C)`` and ``{"inner_states": [(T, B, C)]}``."""
        out = self.sentence_encoder(src_tokens, return_all_hiddens=return_all_hiddens)
        inner = out["encoder_states"] if return_all_hiddens else None
        return out["encoder_out"][0].transpose(0, 1), {"inner_states": inner}

    def forward(self, src_tokens: Tensor, target_tokens: Optional[Tensor] = None, features_only: bool = False,
                return_all_hiddens: bool = False, **unused):
        """Args:
            src_tokens: ``(B, T)`` masked input from ``masked_lm`` (its masks are seeded per sample by the task).
            target_tokens: ``(B, T)`` original token at each selected position, padding elsewhere
                (``masked_lm`` with ``include_target_tokens=true``).

        Returns ``{"pred": (M, C), "target": (M, C), "ema_decay": float}`` for the M loss positions,
        or with ``features_only`` ``((B, T, C), {"inner_states": ...})``.
        """
        if features_only:
            return self.extract_features(src_tokens, return_all_hiddens)
        if target_tokens is None:
            raise ValueError("data2vec_text needs the unmasked tokens: set task.include_target_tokens=true "
                             "(task masked_lm)")
        selected = target_tokens.ne(self.dictionary.pad())
        unmasked = torch.where(selected, target_tokens, src_tokens)
        positions = src_tokens.eq(self.mask_idx) if self.cfg.loss_positions == "mask_token" else selected
        return self.data2vec_step(Views(src_tokens, unmasked, positions))

    def encode_student(self, views: Views) -> Tensor:
        return self.extract_features(views.student)[0]

    def teacher_top_k_blocks(self, teacher: nn.Module, views: Views) -> List[Tensor]:
        """The FFN outputs before the last residual of the teacher's top K blocks on the unmasked tokens."""
        fc_results = teacher(views.teacher, return_all_hiddens=True)["fc_results"]
        return [fc.transpose(0, 1) for fc in fc_results[-self.cfg.average_top_k_layers:]]

    def remove_pretraining_modules(self, last_layer: Optional[int] = None) -> None:
        if last_layer is not None:
            raise ValueError("data2vec_text keeps all its blocks for fine-tuning (last_layer is not supported)")
        super().remove_pretraining_modules()


@register_model("data2vec_text", dataclass=Data2VecTextConfig)
class Data2VecTextModel(FairseqEncoderModel):
    """The fairseq model around :class:`Data2VecTextEncoder` (``encoder.*``); train with the ``data2vec``
    criterion on the ``masked_lm`` task."""

    def __init__(self, cfg: Data2VecTextConfig, encoder: Data2VecTextEncoder):
        super().__init__(encoder)
        self.cfg = cfg

    @classmethod
    def build_model(cls, cfg: Data2VecTextConfig, task):
        if cfg.data2vec_version == 2:
            from d2v_plugin.text.model_v2 import Data2Vec2TextModel

            return Data2Vec2TextModel.build_v2(cfg, task)
        if cfg.data2vec_version != 1:
            raise ValueError(f"model.data2vec_version={cfg.data2vec_version} must be 1 or 2")
        if hasattr(task.cfg, "include_target_tokens") and not task.cfg.include_target_tokens:
            raise ValueError("data2vec_text needs the unmasked tokens: set task.include_target_tokens=true")
        # Remembered in the checkpoint, so fine-tuning can tell a dictionary in another order from ours.
        remember_in_run_config(cfg, "dictionary_digest", dictionary_digest(task.source_dictionary))
        return cls(cfg, Data2VecTextEncoder(cfg, task.source_dictionary))

    @property
    def num_updates(self) -> int:  # read by the data2vec criterion's collapse check
        return self.encoder.get_num_updates()

    def forward(self, src_tokens: Tensor, target_tokens: Optional[Tensor] = None, features_only: bool = False,
                return_all_hiddens: bool = False, **unused):
        """See :meth:`Data2VecTextEncoder.forward`."""
        return self.encoder(src_tokens, target_tokens, features_only, return_all_hiddens)

    def remove_pretraining_modules(self, last_layer: Optional[int] = None) -> None:
        self.encoder.remove_pretraining_modules(last_layer)
