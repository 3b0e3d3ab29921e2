"""``data2vec_text_classification``: sentence (pair) classification on a pre-trained ``data2vec_text``.

For fairseq's ``sentence_prediction`` task and criterion, the way RoBERTa is fine-tuned on GLUE. The
encoder is rebuilt from the pre-training checkpoint's own config (``model.model_path``: ours, or one
saved by fairseq's data2vec text), loses its teacher and regression head, and gets RoBERTa's
classification head on the first token (``<s>``) for each head the task registers.

Parameter names are RoBERTa's (``encoder.sentence_encoder.*``, ``classification_heads.*``). The
pre-training config is copied into this model's config (``pretrained_model_cfg``), so a fine-tuned
checkpoint reloads without the pre-training checkpoint; ``no_pretrained_weights=true`` trains the same
architecture from random weights (a baseline).
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf, open_dict
from torch import Tensor, nn

from fairseq import checkpoint_utils, utils
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import FairseqEncoderModel, register_model
from fairseq.models.roberta.model import RobertaClassificationHead

from d2v_plugin.text.model import Data2VecTextConfig, Data2VecTextEncoder

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


def load_pretraining_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model.model_path={path}: no such checkpoint")
    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    name = state["cfg"]["model"].get("_name")
    if name != "data2vec_text":
        raise ValueError(f"{path}: expected a data2vec_text pre-training checkpoint, found model {name!r}")
    return state


def remember_in_run_config(cfg, key: str, value) -> None:
    """Set ``cfg.<key>`` where fairseq's checkpoints will see it.

    fairseq builds a model from a merged *copy* of the run's ``cfg.model`` (``merge_with_parent``)
    but saves the run's config in checkpoints, so a value set only on ``cfg`` is lost. The copy's
    parent is the run's config; set the value on its ``model`` node too.
    """
    setattr(cfg, key, value)
    parent = cfg._get_parent() if OmegaConf.is_config(cfg) else None
    run_cfg = parent.get("model") if parent is not None else None
    if run_cfg is not None and run_cfg is not cfg and run_cfg.get("_name") == cfg.get("_name"):
        with open_dict(run_cfg):
            run_cfg[key] = value


@register_model("data2vec_text_classification", dataclass=Data2VecTextClassificationConfig)
class Data2VecTextClassificationModel(FairseqEncoderModel):
    def __init__(self, cfg: Data2VecTextClassificationConfig, encoder: Data2VecTextEncoder):
        super().__init__(encoder)
        self.cfg = cfg
        self.classification_heads = nn.ModuleDict()

    @classmethod
    def build_model(cls, cfg: Data2VecTextClassificationConfig, task):
        state = None
        if cfg.pretrained_model_cfg is None:
            state = load_pretraining_checkpoint(cfg.model_path)
            saved = OmegaConf.to_container(state["cfg"]["model"], resolve=True, enum_to_str=True)
            remember_in_run_config(cfg, "pretrained_model_cfg", saved)
        pretrained = {k: v for k, v in cfg.pretrained_model_cfg.items() if k != "_name"}
        encoder_cfg = OmegaConf.merge(OmegaConf.structured(Data2VecTextConfig), pretrained)
        for key in ("dropout", "attention_dropout"):
            if getattr(cfg, key) is not None:
                encoder_cfg.transformer[key] = getattr(cfg, key)
        encoder = Data2VecTextEncoder(encoder_cfg, task.source_dictionary)
        encoder.remove_pretraining_modules()
        model = cls(cfg, encoder)
        if state is not None and not cfg.no_pretrained_weights:
            model.load_pretrained(state["model"], cfg.model_path)
        return model

    def load_pretrained(self, state_dict: dict, path: str) -> None:
        """Load a pre-training state dict (teacher and regression head are dropped on the way)."""
        key = "encoder.sentence_encoder.embed_tokens.weight"
        saved, ours = state_dict[key].size(0), self.encoder.sentence_encoder.embed_tokens.num_embeddings
        if saved != ours:
            raise ValueError(f"{path} was pre-trained with a vocabulary of {saved} symbols but the fine-tuning "
                             f"data's dictionary has {ours}: binarize it with the pre-training dict.txt "
                             f"(manifests.text_manifest --spm-model .../spm.model --srcdict .../dict.txt)")
        self.load_state_dict(state_dict, strict=True)
        logger.info(f"loaded pre-trained encoder weights from {path}")

    def register_classification_head(self, name: str, num_classes: int, inner_dim: Optional[int] = None, **kwargs):
        """Called by ``sentence_prediction``: add RoBERTa's head ``(B, T, C) -> (B, num_classes)``."""
        dim = self.encoder.sentence_encoder.embed_tokens.embedding_dim
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

    def max_positions(self) -> int:
        return self.encoder.sentence_encoder.max_positions()
