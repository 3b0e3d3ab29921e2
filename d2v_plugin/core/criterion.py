"""The one ``data2vec`` criterion: regress the teacher's targets at the masked positions.

Every data2vec model's forward returns ``{"pred": (M, D), "target": (M, D), ...}`` for the M masked
positions of the batch; this criterion turns that into fairseq's ``(loss, sample_size, logging)``.
The loss options live in the model config under fairseq's official names (``loss_beta``,
``loss_scale``, ``min_target_var``, ``min_pred_var``), so an official recipe keeps its meaning.
"""

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from d2v_plugin.compat.cpu_allocator import keep_freed_memory


class RepresentationCollapseError(RuntimeError):
    """The teacher's targets or the student's predictions lost their variance."""


def regression_loss(pred: Tensor, target: Tensor, beta: float, scale: Optional[float]) -> Tensor:
    """Per-position loss, ``(M, D) x (M, D) -> (M,)``.

    L2 when ``beta == 0``, else smooth L1 with that beta; summed over channels and multiplied by
    ``scale`` (default ``1/sqrt(D)``, which keeps the loss size independent of the model width).
    """
    pred, target = pred.float(), target.float()
    if beta == 0:
        loss = F.mse_loss(pred, target, reduction="none")
    else:
        loss = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    if scale is None:
        scale = 1.0 / math.sqrt(pred.size(-1))
    return loss.sum(dim=-1) * scale


@torch.no_grad()
def mean_std(x: Tensor) -> Tensor:
    """Mean over channels of the per-channel standard deviation across positions, ``(M, D) -> ()``.

    Under torch.distributed the statistics are pooled over all ranks (on whatever device ``x`` is:
    gloo on CPU works too). This is fairseq's ``target_var`` / ``pred_var``.
    """
    x = x.reshape(-1, x.size(-1)).float()
    if not (dist.is_available() and dist.is_initialized()):
        return torch.sqrt(x.var(dim=0) + 1e-6).mean()
    n = torch.tensor([float(x.size(0))], device=x.device)
    s, ss = x.sum(dim=0), (x * x).sum(dim=0)
    for t in (n, s, ss):
        dist.all_reduce(t)
    var = ss / (n - 1) - s * s / (n * (n - 1))
    return torch.sqrt(var + 1e-6).mean()


@dataclass
class Data2VecCriterionConfig(FairseqDataclass):
    cpu_keep_freed_memory: bool = field(
        default=True,
        metadata={"help": "when training without a GPU, make glibc keep freed memory for reuse instead of "
                          "page-faulting fresh memory every update (d2v_plugin/compat/cpu_allocator.py: "
                          "faster CPU updates, same peak memory; logged once). Never applied when CUDA "
                          "is available, nor outside training"},
    )


@register_criterion("data2vec", dataclass=Data2VecCriterionConfig)
class Data2VecCriterion(FairseqCriterion):
    def __init__(self, task, cpu_keep_freed_memory: bool = True):
        super().__init__(task)
        # A training-only, CPU-only process setting, applied here because the criterion is built only
        # for training: decoding, feature extraction and GPU runs never change the allocator.
        if cpu_keep_freed_memory and not torch.cuda.is_available():
            keep_freed_memory()

    def forward(self, model, sample, reduce=True):
        out = model(**sample["net_input"])
        cfg = model.cfg
        pred, target = out["pred"], out["target"]
        loss = regression_loss(pred, target, cfg.loss_beta, cfg.loss_scale).sum()
        sample_size = pred.size(0)  # the number of masked positions

        target_var, pred_var = mean_std(target), mean_std(pred)
        num_updates = getattr(model, "num_updates", 0)
        if model.training and num_updates >= cfg.var_check_start_update:
            for name, value, limit in (
                ("target_var", target_var, cfg.min_target_var),
                ("pred_var", pred_var, cfg.min_pred_var),
            ):
                if value < limit:
                    raise RepresentationCollapseError(
                        f"{name} = {value.item():.4g} fell below model.min_{name} = {limit} at update "
                        f"{num_updates}: the representations collapsed. Lower the learning rate, check "
                        f"ema_decay / the data, or change model.min_{name}."
                    )

        # Every entry is a sum, so fairseq can all-reduce logs across workers (on any device);
        # the means are recovered in reduce_metrics by dividing by "batches".
        logging_output = {
            "loss": loss.item() if reduce else loss.detach(),
            "sample_size": sample_size,
            "nsentences": sample["id"].numel() if "id" in sample else 0,
            "batches": 1,
            "target_var": target_var.item(),
            "pred_var": pred_var.item(),
        }
        for key in ("ema_decay", "feature_var"):  # optional, model-specific monitors
            if key in out:
                logging_output[key] = out[key]
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        loss = sum(log.get("loss", 0) for log in logging_outputs)
        metrics.log_scalar("loss", loss / max(sample_size, 1), sample_size, round=4)
        metrics.log_scalar("sample_size", sample_size, round=0)
        batches = sum(log.get("batches", 0) for log in logging_outputs)
        for key in ("target_var", "pred_var", "ema_decay", "feature_var"):
            if batches and any(key in log for log in logging_outputs):
                total = sum(log.get(key, 0) for log in logging_outputs)
                metrics.log_scalar(key, total / batches, batches, round=6 if key == "ema_decay" else 4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
