"""The one ``data2vec`` criterion: regress the teacher's targets at the masked positions.

Every data2vec model's forward returns ``{"pred": (M, D), "target": (M, D), ...}`` for the M masked
positions of the batch (and optionally ``"extra_losses": {name: summed loss}``, added to the regression
loss); this criterion turns that into fairseq's ``(loss, sample_size, logging)``.
The loss options live in the model config under fairseq's official names (``loss_beta``,
``loss_scale``, ``min_target_var``, ``min_pred_var``), so an official recipe keeps its meaning.
:class:`CollapseGuard` stops a run whose statistics collapse or whose batch is not finite, with one message,
before the backward pass.
"""

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from d2v_plugin.compat.cpu_allocator import keep_freed_memory
from d2v_plugin.core.validation import lookup, run_config

logger = logging.getLogger(__name__)


class RepresentationCollapseError(RuntimeError):
    """The teacher's targets or the student's predictions lost their variance."""


class TrainingDivergedError(RuntimeError):
    """The loss, the predictions, the targets or the input of a batch are not finite (NaN/Inf).

    A RuntimeError, as :class:`RepresentationCollapseError`: fairseq's trainer re-raises it as it is (no
    ``crash.pt``, no NanDetector re-run). The message never contains "out of memory", which fairseq would
    take for an OOM to recover from.
    """


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


MAX_LISTED_SAMPLES = 8  # sample ids (and files) named in a divergence message; the rest are counted


class CollapseGuard:
    """Stops a collapsing or diverging data2vec run with one message, at every scale.

    **Collapse** (:meth:`check`, training batches only). For ``target_var`` and ``pred_var`` (the std of the
    targets and of the predictions, pooled over data-parallel ranks, so every rank decides the same) with
    the minimum ``model.min_<name>`` (0: off), from update ``model.var_check_start_update`` on, training
    stops when the statistic is below its minimum and

    * has been for ``model.var_check_patience`` consecutive training batches (a collapse stays low; one
      odd batch does not stop a run), or
    * has never reached it since the run (re)started: it has stayed low all along.

    Exception: with ``model.zero_init_regression_head`` the predictions start at exactly 0, and a pred_var
    rising from 0 is a head learning its read-out, not a collapse: pred_var is checked only once it has
    reached ``min_pred_var``. ``var_check_start_update`` None (the default) starts the check after a tenth
    of ``ema_anneal_end_step`` (= ``max_update`` by default), at least 50 and at most 5000 (fairseq's fixed
    start): update 50 of the tiny recipes, 3000 of the speech Base recipe's 30000-update anneal. Why at
    least 50: a small random head's pred_var can start below min_pred_var too (the tiny image recipe: 0.008
    until about update 18, then rising), and a tenth of its 100 updates would check it from update 10.
    The counters live in this object (the criterion's), so a resumed run starts them afresh.

    **Divergence** (:meth:`diverged`, training and validation): a non-finite loss or statistic stops the run
    before the backward pass, naming the update, the batch's sample ids and, where the task's dataset can
    tell, their manifest rows (audio: ``train.tsv:LINE (file)``; images likewise). Samples whose input is
    not finite are named as the cause; finite inputs mean the model diverged. One exception keeps fairseq's
    behaviour: with fp16 predictions and finite inputs the batch is left to fairseq's dynamic loss scaler,
    which skips the update and lowers the scale (a transient fp16 overflow).
    """

    STATS = ("target_var", "pred_var")

    def __init__(self):
        self.low: Dict[str, int] = {name: 0 for name in self.STATS}  # consecutive batches below the minimum
        self.reached: Dict[str, bool] = {name: False for name in self.STATS}  # at/above it once since start

    @staticmethod
    def start_update(cfg) -> int:
        """``cfg.var_check_start_update``, or for None a tenth of ``ema_anneal_end_step`` in [50, 5000]."""
        start = getattr(cfg, "var_check_start_update", None)
        if start is not None:
            return int(start)
        anneal = getattr(cfg, "ema_anneal_end_step", None)
        if isinstance(anneal, int) and not isinstance(anneal, bool) and anneal > 0:
            return min(5000, max(50, anneal // 10))
        return 5000

    def check(self, cfg, num_updates: int, stats: Dict[str, float]) -> None:
        """Update the counters with one training batch's statistics; raise :class:`RepresentationCollapseError`."""
        start = self.start_update(cfg)
        patience = max(1, int(getattr(cfg, "var_check_patience", 1)))
        zero_head = bool(getattr(cfg, "zero_init_regression_head", False))
        for name in self.STATS:
            value, limit = stats[name], float(getattr(cfg, f"min_{name}"))
            if value >= limit:
                self.low[name], self.reached[name] = 0, True
                continue
            self.low[name] += 1
            if num_updates < start or (name == "pred_var" and zero_head and not self.reached[name]):
                continue
            if not self.reached[name]:
                how = f"at all {self.low[name]} training batches since the run (re)started"
            elif self.low[name] >= patience:
                how = f"for {self.low[name]} consecutive training batches"
            else:
                continue
            raise RepresentationCollapseError(
                f"{name} = {value:.4g} has been below model.min_{name} = {limit:g} {how}, at update "
                f"{num_updates}: the representations collapsed. Lower the learning rate, check ema_decay / the "
                f"data, or change model.min_{name} / model.var_check_patience (collapse guard: "
                f"d2v_plugin/core/criterion.py)."
            )

    def diverged(self, model, sample, num_updates: int, loss_value: float, pred: Tensor, target: Tensor,
                 task=None) -> None:
        """Raise :class:`TrainingDivergedError` for a batch whose loss or pooled statistics are not finite."""
        ids = sample.get("id")
        ids = [] if ids is None else [int(i) for i in ids.reshape(-1).tolist()]
        bad_rows, batch_size = nonfinite_rows(sample.get("net_input") or {})
        where = f"at update {num_updates} ({'training' if model.training else 'validation'})"
        if bad_rows:
            bad = (describe_samples(task, [ids[i] for i in bad_rows], model) if len(ids) == batch_size
                   else "batch rows " + ", ".join(map(str, bad_rows)))
            raise TrainingDivergedError(
                f"non-finite loss ({loss_value}) {where}: the input of {len(bad_rows)} of {batch_size} samples "
                f"is NaN/Inf: {bad}. Remove or repair them.")
        if not math.isfinite(loss_value) or not (torch.isfinite(pred).all() and torch.isfinite(target).all()):
            if pred.dtype == torch.float16:
                logger.warning(f"non-finite loss {where} with fp16 predictions and finite inputs: left to "
                               f"fairseq's loss scaler (it skips the update)")
                return
            bad_pred = int((~torch.isfinite(pred)).sum())
            bad_target = int((~torch.isfinite(target)).sum())
            raise TrainingDivergedError(
                f"non-finite loss ({loss_value}) {where}: the inputs are finite, but {bad_pred} prediction and "
                f"{bad_target} target values are NaN/Inf: the model diverged (lower optimization.lr, check "
                f"optimization.clip_norm and model.ema_decay). Batch: {describe_samples(task, ids, model)}.")
        if pred.dtype == torch.float16:
            return  # another rank's fp16 overflow, left to the loss scaler there as here
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            raise TrainingDivergedError(
                f"non-finite target_var/pred_var {where}: the predictions or targets are too large to measure: "
                f"the model diverged (lower optimization.lr). Batch: {describe_samples(task, ids, model)}.")
        raise TrainingDivergedError(
            f"non-finite target_var/pred_var {where}: this rank's batch is finite, so a batch on another "
            f"data-parallel rank is not (its error names the samples).")


def nonfinite_rows(net_input: Dict[str, Any]) -> Tuple[List[int], int]:
    """``(rows, batch size)``: the rows (samples) of the floating-point input tensors that hold a NaN or Inf."""
    bad = None
    for value in net_input.values():
        if isinstance(value, Tensor) and value.is_floating_point() and value.dim() >= 1:
            rows = ~torch.isfinite(value.reshape(value.size(0), -1)).all(dim=1)
            bad = rows if bad is None or bad.shape != rows.shape else bad | rows
    return ([], 0) if bad is None else (bad.nonzero().reshape(-1).tolist(), bad.numel())


def describe_samples(task, ids: Sequence[int], model=None) -> str:
    """``"sample id 3 = train.tsv:5 (/data/a.wav), ..."``: the first :data:`MAX_LISTED_SAMPLES` ids, each
    with its manifest row where the dataset of the running split maps ids to rows (audio and image
    manifests), then how many more."""
    dataset = _running_dataset(task, model)
    parts = []
    for i in ids[:MAX_LISTED_SAMPLES]:
        source = sample_source(dataset, i) if dataset is not None else None
        parts.append(f"sample id {i}" + (f" = {source}" if source else ""))
    more = len(ids) - MAX_LISTED_SAMPLES
    return (", ".join(parts) or "no sample ids") + (f" and {more} more" if more > 0 else "")


def _running_dataset(task, model):
    """The dataset the batch came from: the training split while training; in validation the only other split
    loaded, if there is exactly one (else None: ids only)."""
    datasets = getattr(task, "datasets", None)
    if not datasets:
        return None
    run = run_config(getattr(model, "cfg", None))
    train = lookup(run, "dataset.train_subset") if run is not None else None
    train = train if isinstance(train, str) else "train"
    if model is None or model.training:
        return datasets.get(train)
    others = [d for name, d in datasets.items() if name != train]
    return others[0] if len(others) == 1 else None


def sample_source(dataset, index: int) -> Optional[str]:
    """``MANIFEST:LINE (file)`` of sample ``index``, for the audio datasets fairseq_fixes annotates with their
    manifest rows and for :class:`~d2v_plugin.image.dataset.ImageDataset` (wrappers' ``.dataset`` followed)."""
    for _ in range(8):
        if dataset is None:
            return None
        rows = getattr(dataset, "_d2v_rows", None)
        if rows is not None and 0 <= index < len(rows):
            manifest, line = rows[index]
            try:
                name = dataset.fnames[index]  # as FileAudioDataset.__getitem__ reads it
                name = name if isinstance(dataset.fnames, list) else name.as_py()
                name = dataset.text_compressor.decompress(name)
                return f"{manifest}:{line} ({os.path.join(dataset.root_dir, name)})"
            except Exception:  # an unusual audio dataset: the row is still exact
                return f"{manifest}:{line}"
        image_rows = getattr(dataset, "rows", None)
        if image_rows is not None and hasattr(dataset, "manifest") and 0 <= index < len(image_rows):
            row = image_rows[index]
            return f"{dataset.manifest}:{row.line_no} ({os.path.join(dataset.root, row.path)})"
        dataset = getattr(dataset, "dataset", None)
    return None


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
        self.guard = CollapseGuard()

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
        loss_value = loss.item()
        num_updates = getattr(model, "num_updates", 0)
        if not all(math.isfinite(v) for v in (loss_value, target_var, pred_var)):
            # before backward: fairseq's "gradients are Nan/Inf" path (pages of tensor dumps) never runs
            self.guard.diverged(model, sample, num_updates, loss_value, pred, target, self.task)
        elif model.training:
            self.guard.check(cfg, num_updates, {"target_var": target_var, "pred_var": pred_var})

        # Every entry is a sum, so fairseq can all-reduce logs across workers (on any device);
        # the means are recovered in reduce_metrics by dividing by "batches".
        logging_output = {
            "loss": loss_value if reduce else loss.detach(),
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
