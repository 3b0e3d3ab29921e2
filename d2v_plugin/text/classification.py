"""``data2vec_text_classification``: sentence (pair) classification on a pre-trained ``data2vec_text``.

For fairseq's ``sentence_prediction`` task and criterion, the way RoBERTa is fine-tuned on GLUE. The
encoder is rebuilt from the pre-training checkpoint's own config (``model.model_path``: ours, or one
saved by fairseq's data2vec text), loses its teacher and regression head, and gets RoBERTa's
classification head on the first token (``<s>``) for each head the task registers.

Parameter names are RoBERTa's (``encoder.sentence_encoder.*``, ``classification_heads.*``; a data2vec 2.0
encoder, ``data2vec_version: 2``, keeps its own: ``encoder.local_encoder.*``, ``encoder.encoder.*``). The
pre-training config is copied into this model's config (``pretrained_model_cfg``, see
:mod:`d2v_plugin.core.finetune`), so a fine-tuned checkpoint reloads without the pre-training checkpoint;
``no_pretrained_weights=true`` trains the same architecture from random weights (a baseline).

The fine-tuning data must be binarized with the pre-training dictionary: the checkpoint's
``dictionary_digest`` (of its symbols, in order) must match the task's dictionary, or the token ids
would mean other tokens (:func:`check_dictionary`).
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

from omegaconf import MISSING
from torch import Tensor, nn

from fairseq import utils
from fairseq.data import Dictionary
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import FairseqEncoderModel, register_model
from fairseq.models.roberta.model import RobertaClassificationHead

from d2v_plugin.core.finetune import config_from_pretrained, dictionary_digest, pretrained_config
from d2v_plugin.core.validation import validate
from d2v_plugin.text.model import Data2VecTextConfig, Data2VecTextEncoder, encoder_config

logger = logging.getLogger(__name__)


@dataclass
class Data2VecTextClassificationConfig(FairseqDataclass):
    model_path: str = field(default=MISSING, metadata={"help": "data2vec_text pre-training checkpoint"})
    no_pretrained_weights: bool = field(
        default=False, metadata={"help": "use the checkpoint's architecture but random weights (a baseline)"}
    )
    dropout: Optional[float] = field(
        default=None, metadata={"help": "dropout of the encoder while fine-tuning; None: the pre-training value"}
    )
    attention_dropout: Optional[float] = field(
        default=None, metadata={"help": "attention dropout while fine-tuning; None: the pre-training value"}
    )
    pooling: ChoiceEnum(["first", "mean"]) = field(
        default="first",
        metadata={"help": "sentence representation fed to the head: first: the <s> token's output (RoBERTa); "
                          "mean: the mean over the non-padding tokens' outputs"},
    )
    pooler_dropout: float = field(default=0.0, metadata={"help": "dropout in the classification head"})
    pooler_activation_fn: ChoiceEnum(utils.get_available_activation_fns()) = field(
        default="tanh", metadata={"help": "activation of the classification head's hidden layer"}
    )
    pretrained_model_cfg: Any = field(
        default=None,
        metadata={"help": "the encoder's config, copied from model_path when the model is first built "
                          "(a fine-tuned checkpoint then loads without model_path)"},
    )


def first_difference(a: Sequence[str], b: Sequence[str]) -> int:
    """Index of the first symbol where ``a`` and ``b`` differ (the shorter length if one is a prefix)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def pretraining_symbols(state: dict) -> Optional[List[str]]:
    """The pre-training dictionary's symbols, if its data-bin's ``dict.txt`` is still where it was
    (``cfg.task.data``; masked_lm reads the first of its ``:``-separated paths) and ``<mask>`` added."""
    task_cfg = state["cfg"].get("task") or {}
    data = task_cfg.get("data")
    path = os.path.join(utils.split_paths(data)[0], "dict.txt") if isinstance(data, str) and data else None
    if path is None or not os.path.isfile(path):
        return None
    dictionary = Dictionary.load(path)
    dictionary.add_symbol("<mask>")
    return dictionary.symbols


def check_dictionary(state: dict, path: str, dictionary: Dictionary) -> None:
    """Refuse fine-tuning data binarized with another dictionary than the pre-training checkpoint's.

    Symbols are compared through the digest the checkpoint's model config stores
    (``dictionary_digest``, :func:`d2v_plugin.core.finetune.dictionary_digest`); a checkpoint without
    one (older, or fairseq's data2vec) is compared by vocabulary size only, with a warning.
    """
    model = state["model"]
    key = "encoder.sentence_encoder.embed_tokens.weight"  # data2vec 2.0: encoder.local_encoder.embed_tokens
    saved = model[key if key in model else "encoder.local_encoder.embed_tokens.weight"].size(0)
    ours = len(dictionary)
    fix = ("binarize it with the pre-training dict.txt (manifests.text_manifest --spm-model .../spm.model "
           "--srcdict .../dict.txt)")
    if saved != ours:
        raise ValueError(f"{path} was pre-trained with a vocabulary of {saved} symbols but the fine-tuning "
                         f"data's dictionary has {ours}: {fix}")
    digest = state["cfg"]["model"].get("dictionary_digest")
    if digest is None:
        logger.warning(f"{path} stores no dictionary_digest (an older checkpoint, or fairseq's data2vec): "
                       f"only the vocabulary sizes ({ours} symbols) were compared, not the symbols")
        return
    if digest == dictionary_digest(dictionary):
        return
    symbols = pretraining_symbols(state)
    if symbols is not None and dictionary_digest(symbols) == digest:
        i = first_difference(symbols, dictionary.symbols)
        where = (f"the first difference is at index {i}: {symbols[i]!r} in the pre-training dictionary, "
                 f"{dictionary.symbols[i]!r} in the fine-tuning data's")
    else:
        where = "the first differing index is unknown (the pre-training data-bin's dict.txt is gone or changed)"
    raise ValueError(f"{path} was pre-trained with a dictionary of {saved} symbols and the fine-tuning data's "
                     f"has {ours}, but their symbols differ (the token ids would mean other tokens); {where}: {fix}")


@register_model("data2vec_text_classification", dataclass=Data2VecTextClassificationConfig)
class Data2VecTextClassificationModel(FairseqEncoderModel):
    def __init__(self, cfg: Data2VecTextClassificationConfig, encoder: Data2VecTextEncoder):
        super().__init__(encoder)
        self.cfg = cfg
        self.classification_heads = nn.ModuleDict()

    @classmethod
    def build_model(cls, cfg: Data2VecTextClassificationConfig, task):
        validate(cfg, "data2vec_text_classification")  # option ranges and the run's (core/validation.py)
        state, pretrained = pretrained_config(cfg, "data2vec_text")
        # the digest describes the pre-training dictionary, not an encoder option
        encoder_cfg = config_from_pretrained(Data2VecTextConfig, pretrained, ignore=("dictionary_digest",))
        for key in ("dropout", "attention_dropout"):
            if getattr(cfg, key) is not None:
                encoder_cfg.transformer[key] = getattr(cfg, key)
        if encoder_cfg.data2vec_version == 2:
            from d2v_plugin.text.model_v2 import Data2Vec2TextEncoder

            encoder = Data2Vec2TextEncoder(encoder_cfg, task.source_dictionary)
        else:
            encoder = Data2VecTextEncoder(encoder_cfg, task.source_dictionary)
        encoder.remove_pretraining_modules()
        model = cls(cfg, encoder)
        if state is not None:
            model.load_pretrained(state, cfg.model_path)
        return model

    def load_pretrained(self, state: dict, path: str) -> None:
        """Load a pre-training checkpoint (:func:`~d2v_plugin.core.finetune.load_checkpoint`'s dict) after
        checking its dictionary against this model's; teacher and regression head are dropped on the way."""
        check_dictionary(state, path, self.encoder.dictionary)
        self.load_state_dict(state["model"], strict=True)
        logger.info(f"loaded pre-trained encoder weights from {path}")

    def register_classification_head(self, name: str, num_classes: int, inner_dim: Optional[int] = None, **kwargs):
        """Called by ``sentence_prediction``: add RoBERTa's head ``(B, T, C) -> (B, num_classes)``."""
        dim = self.embed_tokens().embedding_dim
        self.classification_heads[name] = RobertaClassificationHead(
            input_dim=dim, inner_dim=inner_dim or dim, num_classes=num_classes,
            activation_fn=self.cfg.pooler_activation_fn, pooler_dropout=self.cfg.pooler_dropout,
        )

    def forward(self, src_tokens: Tensor, features_only: bool = True, return_all_hiddens: bool = False,
                classification_head_name: Optional[str] = None, **unused):
        """``src_tokens (B, T)`` -> ``(logits (B, num_classes), extra)`` with a head, else ``((B, T, C), extra)``.

        ``features_only`` is accepted for ``sentence_prediction``'s call; there is no LM head.
        """
        x, extra = self.encoder.extract_features(src_tokens, return_all_hiddens)
        if classification_head_name is not None:
            if self.cfg.pooling == "mean":
                keep = src_tokens.ne(self.encoder.dictionary.pad()).unsqueeze(-1).type_as(x)
                x = ((x * keep).sum(1) / keep.sum(1)).unsqueeze(1)  # (B, 1, C): the head reads position 0
            x = self.classification_heads[classification_head_name](x)
        return x, extra

    def embed_tokens(self) -> nn.Embedding:
        """The encoder's token embeddings (data2vec 2.0: ``encoder.local_encoder.embed_tokens``)."""
        if hasattr(self.encoder, "sentence_encoder"):
            return self.encoder.sentence_encoder.embed_tokens
        return self.encoder.local_encoder.embed_tokens

    def max_positions(self) -> int:
        if hasattr(self.encoder, "sentence_encoder"):
            return self.encoder.sentence_encoder.max_positions()
        return encoder_config(self.encoder.cfg.transformer).max_source_positions
