"""Options every data2vec model shares: the EMA teacher, the targets and the regression loss.

Each modality's model config inherits from :class:`Data2VecConfig`, so the same option has the same
name, default and help text everywhere. Names follow fairseq's official data2vec configs so that an
official recipe's keys (``model.ema_decay``, ``model.loss_beta``, ...) mean the same here.
"""

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import II

from fairseq.dataclass import FairseqDataclass

from d2v_plugin.core.decoder import DecoderConfig
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
    # -- collapse guard (applied by the data2vec criterion: d2v_plugin/core/criterion.py, CollapseGuard) ------
    min_target_var: float = field(
        default=0.1, metadata={"help": "collapse guard: the target std (target_var) must stay at or above this; "
                                       "0 turns its check off"}
    )
    min_pred_var: float = field(
        default=0.01, metadata={"help": "collapse guard: the prediction std (pred_var) must stay at or above this; "
                                        "0 turns its check off. With zero_init_regression_head it is checked only "
                                        "once it has reached this value (a zero head starts at 0)"}
    )
    var_check_start_update: Optional[int] = field(
        default=None,
        metadata={"help": "collapse guard: first update at which target_var/pred_var are checked; None: a tenth of "
                          "ema_anneal_end_step, at least 50 and at most 5000 (fairseq's fixed start), so tiny "
                          "runs are checked too"},
    )
    var_check_patience: int = field(
        default=10,
        metadata={"help": "collapse guard: training stops when a statistic has been below its minimum for this "
                          "many consecutive training batches (or at every batch since the run started)"},
    )


@dataclass
class ModelMaskedConfig(FairseqDataclass):
    """For models that draw their own masks (audio, images; text masks come from fairseq's masked_lm task)."""

    seed: int = field(
        default=II("common.seed"),
        metadata={"help": "seeds the masks, together with the update number and each sample's id"},
    )


@dataclass
class Data2Vec2Config(DecoderConfig):
    """data2vec 2.0 (Baevski et al. 2023), a mode of every data2vec model (``data2vec_version: 2``).

    Names follow fairseq's ``data2vec_multi`` where it has the option (its nested
    ``modalities.<m>.decoder.*`` flattened to ``decoder_*``). Ignored when ``data2vec_version`` is 1.
    """

    data2vec_version: int = field(
        default=1,
        metadata={"help": "1: data2vec (2022): the student encodes the whole masked input; 2: data2vec 2.0 "
                          "(2023): the student encodes only the unmasked tokens, a conv decoder predicts the "
                          "masked ones, and clone_batch masks per sample share one teacher pass"},
    )
    clone_batch: int = field(
        default=1, metadata={"help": "data2vec 2.0: masked copies of each sample sharing one teacher pass"})
    mask_noise_std: float = field(
        default=0.01, metadata={"help": "data2vec 2.0: std of the noise tokens the decoder sees at masked positions"})
    prenet_depth: int = field(
        default=0, metadata={"help": "data2vec 2.0: modality-specific blocks before the shared ones (no targets)"})
    prenet_dropout: float = field(
        default=0.0, metadata={"help": "data2vec 2.0: dropout after the embedding layer norm, before the prenet"})
    post_mlp_drop: float = field(
        default=0.1, metadata={"help": "data2vec 2.0: dropout on each block's MLP output before its residual"})
    norm_eps: float = field(default=1e-5, metadata={"help": "data2vec 2.0: epsilon of the blocks' layer norms"})
