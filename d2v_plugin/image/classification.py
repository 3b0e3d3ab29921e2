"""``data2vec_image_classification``: a classifier on a pre-trained ``data2vec_image`` encoder.

The encoder is built from the pre-training checkpoint's own config and weights (``model_path``),
stripped of its pre-training parts (teacher, regression head, mask embedding, final norm; data2vec 2.0:
teacher, decoder, regression head). Features are the mean of the last block's patch outputs (BEiT's
mean pooling, [CLS] left out), normalised by a LayerNorm and fed to a linear layer.

* ``linear_probe=true``: the encoder is frozen and always in eval mode; only the norm and the linear
  layer train.
* ``no_pretrained_weights=true``: same architecture, random weights (a baseline).

The pre-training config is kept in ``pretrained_model_cfg`` (:mod:`d2v_plugin.core.finetune`), so a
fine-tuned checkpoint reloads (and resumes) without the pre-training checkpoint.

It plugs into fairseq's ``sentence_prediction`` criterion: ``forward(..., classification_head_name=)``
returns ``(logits, extra)`` and the head is ``classification_heads["sentence_classification_head"]``,
the criterion's default name.
"""

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from omegaconf import MISSING
from torch import Tensor, nn

from fairseq.dataclass import FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model
from fairseq.modules import LayerNorm

from d2v_plugin.core.finetune import config_from_pretrained, pretrained_config
from d2v_plugin.core.validation import validate
from d2v_plugin.image.model import Data2VecImageConfig, Data2VecImageModel

logger = logging.getLogger(__name__)

HEAD_NAME = "sentence_classification_head"  # fairseq sentence_prediction's default head name


@dataclass
class Data2VecImageClassificationConfig(FairseqDataclass):
    model_path: str = field(default=MISSING, metadata={"help": "data2vec_image pre-training checkpoint"})
    linear_probe: bool = field(
        default=False, metadata={"help": "freeze the encoder and train only the classifier (linear probe)"}
    )
    no_pretrained_weights: bool = field(
        default=False, metadata={"help": "use the checkpoint's architecture but random weights (baseline)"}
    )
    num_classes: int = field(default=0, metadata={"help": "number of classes; 0: the task's labels.txt"})
    drop_path: Optional[float] = field(
        default=None, metadata={"help": "stochastic depth rate for fine-tuning; None: the pre-training value"}
    )
    pretrained_model_cfg: Any = field(
        default=None,
        metadata={"help": "the encoder's config, copied from model_path when the model is first built "
                          "(a fine-tuned checkpoint then loads without model_path)"},
    )


class ClassificationHead(nn.Module):
    def __init__(self, dim: int, num_classes: int, eps: float):
        super().__init__()
        self.norm = LayerNorm(dim, eps=eps)
        self.proj = nn.Linear(dim, num_classes)
        # small initial logits: the loss starts near log(num_classes) (BEiT scales it by 1e-3 too)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        self.proj.weight.data.mul_(1e-3)
        nn.init.zeros_(self.proj.bias)

    def forward(self, features: Tensor) -> Tensor:
        return self.proj(self.norm(features))


@register_model("data2vec_image_classification", dataclass=Data2VecImageClassificationConfig)
class Data2VecImageClassificationModel(BaseFairseqModel):
    def __init__(self, cfg: Data2VecImageClassificationConfig, backbone: BaseFairseqModel, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        dim = backbone.cfg.embed_dim
        eps = backbone.cfg.norm_eps if backbone.cfg.data2vec_version == 2 else backbone.cfg.layer_norm_eps
        self.classification_heads = nn.ModuleDict({HEAD_NAME: ClassificationHead(dim, num_classes, eps)})
        if cfg.linear_probe:
            self.backbone.requires_grad_(False)

    @classmethod
    def build_model(cls, cfg: Data2VecImageClassificationConfig, task=None):
        validate(cfg, "data2vec_image_classification")  # option ranges and the run's (core/validation.py)
        if getattr(task, "cfg", None) is not None:  # our image task's augmentation options
            validate(task.cfg, "image_task", prefix="task.", run=False)
        state, pretrained = pretrained_config(cfg, "data2vec_image")
        backbone_cfg = config_from_pretrained(Data2VecImageConfig, pretrained)
        if cfg.drop_path is not None:
            if backbone_cfg.data2vec_version == 2 and cfg.drop_path > 0:
                raise ValueError(f"model.drop_path={cfg.drop_path}: a data2vec 2.0 encoder has no stochastic depth")
            backbone_cfg.drop_path = cfg.drop_path
        backbone = Data2VecImageModel.build_model(backbone_cfg)  # version 1 or 2, as pre-trained
        backbone.remove_pretraining_modules()
        if state is not None:
            backbone.load_state_dict(state["model"], strict=True)
            logger.info(f"loaded pre-trained encoder weights from {cfg.model_path}")
        num_classes = cfg.num_classes or getattr(task, "num_classes", 0)
        if num_classes <= 0:
            raise ValueError("model.num_classes is 0 and the task has no labels: set model.num_classes")
        return cls(cfg, backbone, num_classes)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cfg.linear_probe:
            self.backbone.eval()  # a frozen encoder: no dropout / stochastic depth
        return self

    def features(self, source: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` -> mean of the patch outputs of the last block, ``(B, D)``."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.linear_probe):
            x = self.backbone.extract_features(source)["x"]
        return x[:, 1:].mean(dim=1)

    def forward(self, source: Tensor, features_only: bool = False, classification_head_name: str = HEAD_NAME):
        """``source``: ``(B, C, H, W)`` images. Returns ``(logits (B, num_classes), {"features": (B, D)})``.

        ``features_only`` is accepted for ``sentence_prediction``'s call and has no effect.
        """
        features = self.features(source)
        return self.classification_heads[classification_head_name](features), {"features": features}
