"""The one ``data2vec`` criterion: regress the teacher's targets at the masked positions.

Every data2vec model's forward returns ``{"pred": (M, D), "target": (M, D), ...}`` for the M masked
positions of the batch (and optionally ``"extra_losses": {name: summed loss}``, added to the regression
loss); this criterion turns that into fairseq's ``(loss, sample_size, logging)``.
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


def _local_moments(x: Tensor) -> Tensor:
    """``(M, D) -> (3, D)`` float64: count, mean and M2 (sum of squared deviations from the mean) per channel.

    Computed in fp32 (no fp64 copy of the activations) with the corrected two-pass formula: the
    deviations are taken from the mean, and the rounding error of that mean is removed again, so the
    result stays accurate however large the mean is next to the spread. 0 rows give count 0, mean 0, M2 0.
    """
    x = x.reshape(-1, x.size(-1)).float()
    n = x.size(0)
    if n == 0:
        zeros = x.new_zeros(x.size(-1), dtype=torch.float64)
        return torch.stack([zeros, zeros, zeros])
    mean = x.mean(dim=0)
    d = x - mean
    s1 = d.sum(dim=0)
    m2 = ((d * d).sum(dim=0) - s1 * s1 / n).clamp_min(0)
    # The corrected mean in float64: rounded back to fp32 it would be off by up to half an ulp of the
    # mean (5e-4 at 1e4), which the between-rank term of the pooled M2 would multiply by the count.
    mean = mean.double() + s1.double() / n
    return torch.stack([torch.full_like(mean, float(n)), mean, m2.double()])


@torch.no_grad()
def mean_channel_stds(*tensors: Tensor) -> Tensor:
    """For each ``(M, D)`` tensor, the mean over channels of the per-channel std across positions: ``(len(tensors),)``.

    This is fairseq's ``target_var`` / ``pred_var``: ``sqrt(var + 1e-6)`` averaged over channels, with the
    unbiased (n - 1) variance; with fewer than 2 positions in all the variance counts as 0 (no NaN).

    Under torch.distributed the statistics are pooled over all ranks with ONE collective for all the
    tensors, on whatever device they are (gloo on CPU works too). Why an all_gather of the per-rank
    (count, mean, M2) and not an all_reduce: a sum can only pool power sums (n, sum x, sum x^2), and
    ``sum x^2 - (sum x)^2 / n`` cancels catastrophically when the mean is large next to the std (it can
    even turn negative: NaN); a cancellation-free shift would have to be agreed on by the ranks first
    (a second collective). Gathering the small ``(3, D)`` moments of every rank (a few KB) instead
    lets each rank pool them exactly and stably: ``M2 = sum_i M2_i + sum_i n_i (mean_i - mean)^2``, a
    sum of nonnegative terms (the closed form of Chan et al.'s parallel merge), done in float64.
    """
    moments = torch.cat([_local_moments(t) for t in tensors], dim=1)  # (3, sum of D)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [torch.empty_like(moments) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, moments)
        ranks = torch.stack(gathered)  # (world, 3, sum of D)
        n_i, mean_i, m2_i = ranks[:, 0], ranks[:, 1], ranks[:, 2]
        n = n_i.sum(dim=0)
        mean = (n_i * mean_i).sum(dim=0) / n.clamp_min(1)
        m2 = m2_i.sum(dim=0) + (n_i * (mean_i - mean) ** 2).sum(dim=0)
    else:
        n, m2 = moments[0], moments[2]
    var = m2 / (n - 1).clamp_min(1)
    std = torch.sqrt(var + 1e-6).float()
    sizes = [t.size(-1) for t in tensors]
    return torch.stack([chunk.mean() for chunk in std.split(sizes)])


def mean_std(x: Tensor) -> Tensor:
    """:func:`mean_channel_stds` of one tensor, ``(M, D) -> ()``."""
    return mean_channel_stds(x)[0]


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
        # The sample ids seed each sample's mask (with common.seed and the update number): masks differ
        # between samples and data-parallel ranks, and a resumed run draws the same ones again.
        out = model(**sample["net_input"], sample_ids=sample.get("id"))
        cfg = model.cfg
        pred, target = out["pred"], out["target"]
        loss = regression_loss(pred, target, cfg.loss_beta, cfg.loss_scale).sum()
        sample_size = pred.size(0)  # the number of masked positions
        # further terms a model adds to the regression loss (data2vec 2.0 images: the [CLS] loss), already
        # weighted and summed like it; each is logged as loss_<name>
        extra = dict(out.get("extra_losses", {}))
        for value in extra.values():
            loss = loss + value

        # Both statistics in one collective and one device sync (see mean_channel_stds).
        target_var, pred_var = mean_channel_stds(target, pred).tolist()
        num_updates = getattr(model, "num_updates", 0)
        if model.training and num_updates >= cfg.var_check_start_update:
            for name, value, limit in (
                ("target_var", target_var, cfg.min_target_var),
                ("pred_var", pred_var, cfg.min_pred_var),
            ):
                if value < limit:
                    raise RepresentationCollapseError(
                        f"{name} = {value:.4g} fell below model.min_{name} = {limit} at update "
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
            "target_var": target_var,
            "pred_var": pred_var,
        }
        for key in ("ema_decay", "feature_var"):  # optional, model-specific monitors
            if key in out:
                logging_output[key] = out[key]
        for name, value in extra.items():
            logging_output[f"loss_{name}"] = value.item() if reduce else value.detach()
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        loss = sum(log.get("loss", 0) for log in logging_outputs)
        metrics.log_scalar("loss", loss / max(sample_size, 1), sample_size, round=4)
        metrics.log_scalar("sample_size", sample_size, round=0)
        for key in sorted({k for log in logging_outputs for k in log if k.startswith("loss_")}):
            total = sum(log.get(key, 0) for log in logging_outputs)
            metrics.log_scalar(key, total / max(sample_size, 1), sample_size, round=4)
        batches = sum(log.get("batches", 0) for log in logging_outputs)
        for key in ("target_var", "pred_var", "ema_decay", "feature_var"):
            if batches and any(key in log for log in logging_outputs):
                total = sum(log.get(key, 0) for log in logging_outputs)
                metrics.log_scalar(key, total / batches, batches, round=6 if key == "ema_decay" else 4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
