"""Options every data2vec model shares: the EMA teacher, the targets and the regression loss.

Each modality's model config inherits from :class:`Data2VecConfig`, so the same option has the same
name, default and help text everywhere. Names follow fairseq's official data2vec configs so that an
official recipe's keys (``model.ema_decay``, ``model.loss_beta``, ...) mean the same here.
"""

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import II

from fairseq.dataclass import FairseqDataclass

from d2v_plugin.core.targets import TargetConfig


@dataclass
class Data2VecConfig(TargetConfig):
    # -- EMA teacher ---------------------------------------------------------------------------
    ema_decay: float = field(default=0.999, metadata={"help": "initial EMA decay of the teacher"})
    ema_end_decay: float = field(default=0.9999, metadata={"help": "final EMA decay of the teacher"})
    ema_anneal_end_step: int = field(
        default=II("optimization.max_update"),
        metadata={"help": "updates over which the decay goes linearly from ema_decay to ema_end_decay"},
    )
    # -- regression loss (applied by the shared `data2vec` criterion) ----------------------------
    loss_beta: float = field(
        default=0.0, metadata={"help": "0: L2 loss; > 0: smooth L1 loss with this beta"}
    )
    loss_scale: Optional[float] = field(
        default=None,
        metadata={"help": "multiply the per-position loss by this; None: 1/sqrt(embedding dim)"},
    )
    zero_init_regression_head: bool = field(
        default=False,
        metadata={"help": "start the regression head's last linear layer at zero, so the blocks get "
                          "gradients only through what it learns to read out (why: "
                          "TeacherStudentMixin.init_regression_head); off: fairseq's reference init"},
    )
    # -- collapse guard ------------------------------------------------------------------------
    min_target_var: float = field(
        default=0.1, metadata={"help": "stop training when the target std (target_var) falls below this"}
    )
    min_pred_var: float = field(
        default=0.01, metadata={"help": "stop training when the prediction std (pred_var) falls below this"}
    )
    var_check_start_update: int = field(
        default=5000,
        metadata={"help": "check min_target_var/min_pred_var only after this many updates"},
    )


@dataclass
class ModelMaskedConfig(FairseqDataclass):
    """For models that draw their own masks (audio, images; text masks come from fairseq's masked_lm task)."""

    seed: int = field(
        default=II("common.seed"),
        metadata={"help": "seeds the masks, together with the update number and each sample's id"},
    )
