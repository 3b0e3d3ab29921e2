"""``utterance_classification``: the loss and metrics of ``data2vec_audio_classification`` on the
``utterance_classification`` task.

* one label per utterance (``task.multi_label=false``): cross-entropy; logs ``accuracy`` (%), as fairseq's
  ``sentence_prediction`` does for text and images;
* several (``task.multi_label=true``, AudioSet style): binary cross-entropy per class, averaged over the classes;
  validation logs ``mAP`` (%): the mean over classes of their average precision, over the whole validation
  split (classes without a positive there are left out, as scikit-learn's ``average_precision_score`` gives
  them no value). Per-utterance scores are gathered for that (fairseq's ``log_concat_tensor``), so with several
  data-parallel workers the multi-label logs are gathered, not summed (``common.all_gather_list_size`` must
  hold a batch's ``B x classes`` scores).

``loss`` is logged in base 2 per utterance, fairseq's convention. Targets arrive as the task batches them: label
dictionary ids ``(B, L)`` padded with ``pad``; class ``i`` is id ``nspecial + i``.
"""

import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass


def class_targets(target: Tensor, pad: int, nspecial: int, num_classes: int, multi_label: bool) -> Tensor:
    """Label dictionary ids ``(B, L)`` (``pad`` after each row's labels) -> class ids ``(B,)`` (long), or with
    ``multi_label`` a multi-hot ``(B, num_classes)`` float matrix."""
    target = target.long()  # fairseq's Dictionary.encode_line gives int32 ids
    valid = target.ne(pad)
    classes = target - nspecial
    if (valid & ((classes < 0) | (classes >= num_classes))).any():
        bad = sorted(set(target[valid & ((classes < 0) | (classes >= num_classes))].tolist()))
        raise ValueError(f"label ids {bad} are not classes 0..{num_classes - 1} (the <unk> symbol, or a label "
                         f"dictionary other than the model's)")
    if not multi_label:
        if not bool((valid.sum(1) == 1).all()):
            raise ValueError("task.multi_label=false but a row of the batch has several labels")
        return classes[:, 0]
    hot = torch.zeros(target.size(0), num_classes, device=target.device)
    rows = torch.arange(target.size(0), device=target.device).unsqueeze(1).expand_as(target)
    hot[rows[valid], classes[valid]] = 1.0
    return hot


def average_precision(scores: Tensor, positives: Tensor) -> float:
    """Average precision of one class: ``scores (N,)``, ``positives (N,)`` in {0, 1}; NaN without a positive.

    As scikit-learn's ``average_precision_score``: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score
    thresholds, highest first (tied scores enter together).
    """
    order = torch.argsort(scores.double(), descending=True, stable=True)
    s, t = scores.double()[order], positives.double()[order]
    if t.sum() == 0:
        return float("nan")
    tp, fp = t.cumsum(0), (1 - t).cumsum(0)
    last = torch.ones_like(s, dtype=torch.bool)  # the last position of each run of tied scores
    last[:-1] = s[1:] != s[:-1]
    tp, fp = tp[last], fp[last]
    recall = tp / tp[-1]
    gained = recall - torch.cat([recall.new_zeros(1), recall[:-1]])
    return float((gained * tp / (tp + fp)).sum())


def mean_average_precision(scores: Tensor, targets: Tensor) -> float:
    """``scores``, ``targets`` ``(N, C)`` -> the mean of the classes' average precisions (NaN ones left out);
    NaN when no class has a positive."""
    aps = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.size(1))]
    aps = [ap for ap in aps if not math.isnan(ap)]
    return sum(aps) / len(aps) if aps else float("nan")


@register_criterion("utterance_classification", dataclass=FairseqDataclass)
class UtteranceClassificationCriterion(FairseqCriterion):
    """The model maps ``net_input`` to logits ``(B, classes)``; the task says single- or multi-label."""

    def __init__(self, task):
        super().__init__(task)
        self.multi_label = bool(getattr(task, "multi_label", False))
        dictionary = task.target_dictionary
        self.pad, self.nspecial = dictionary.pad(), dictionary.nspecial

    def forward(self, model, sample, reduce: bool = True) -> Tuple[Tensor, int, Dict]:
        logits = model(**sample["net_input"]).float()  # (B, C)
        batch, classes = logits.shape
        targets = class_targets(sample["target"], self.pad, self.nspecial, classes, self.multi_label)
        if self.multi_label:
            # mean over classes, sum over utterances: the loss size does not grow with the number of classes
            loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / classes
        else:
            loss = F.cross_entropy(logits, targets, reduction="sum")
        logging = {"loss": loss.data, "ntokens": sample["ntokens"], "nsentences": batch, "sample_size": batch}
        if not self.multi_label:
            logging["ncorrect"] = (logits.argmax(-1) == targets).sum().item()
        elif not model.training:  # validation: every utterance's scores, for the split's mAP
            logging["_scores"] = logits.detach().cpu()
            logging["_targets"] = targets.cpu()
        return loss, batch, logging

    @staticmethod
    def reduce_metrics(logging_outputs: List[Dict]) -> None:
        loss = sum(log.get("loss", 0) for log in logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        metrics.log_scalar("loss", loss / max(sample_size, 1) / math.log(2), sample_size, round=3)
        if logging_outputs and "ncorrect" in logging_outputs[0]:
            ncorrect = sum(log.get("ncorrect", 0) for log in logging_outputs)
            nsentences = sum(log.get("nsentences", 0) for log in logging_outputs)
            metrics.log_scalar("accuracy", 100.0 * ncorrect / max(nsentences, 1), nsentences, round=1)
        scored = [log for log in logging_outputs if "_scores" in log]
        if scored:
            metrics.log_concat_tensor("_scores", torch.cat([log["_scores"] for log in scored]))
            metrics.log_concat_tensor("_targets", torch.cat([log["_targets"] for log in scored]))
            metrics.log_derived("mAP", _map_percent)

    def logging_outputs_can_be_summed(self) -> bool:
        """Multi-label validation logs per-utterance scores, which are gathered across workers, not summed."""
        return not self.multi_label


def _map_percent(meters) -> float:
    """The split's mAP in %, NaN when no label of it occurs (no class to average)."""
    return round(100.0 * mean_average_precision(meters["_scores"].tensor, meters["_targets"].tensor), 2)
