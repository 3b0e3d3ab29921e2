"""Utterance classification pieces without training: the criterion's losses, accuracy and mAP (against hand-computed
values), pooling over each utterance's own frames, and the task's label checks naming the row."""

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import d2v_plugin  # noqa: F401  (registers the task, model and criterion)
from d2v_plugin.audio.classification import pool
from d2v_plugin.audio.classification_criterion import (UtteranceClassificationCriterion, average_precision,
                                                       class_targets, mean_average_precision)
from d2v_plugin.audio.classification_task import UtteranceClassificationConfig
from d2v_plugin.core.errors import ManifestError
from fairseq import metrics, tasks
from fairseq.data import Dictionary

LABELS = ["dog", "cat", "bird", "car"]

# 4 utterances x 4 classes. Hand-computed average precisions (sum over the distinct score thresholds, highest
# first, of recall gained x precision there):
#   class 0: ranks 1(+) 2(-) 3(+) 4(-)              -> 1/2 * 1/1 + 1/2 * 2/3 = 5/6
#   class 1: ranks 1(+) 2(-) 3(-) 4(+)              -> 1/2 * 1/1 + 1/2 * 2/4 = 3/4
#   class 2: no positive                             -> left out of the mean
#   class 3: {+,-} tied first, {-,+} tied second     -> 1/2 * 1/2 + 1/2 * 2/4 = 1/2
SCORES = torch.tensor([[0.9, 0.80, 0.1, 0.5],
                       [0.8, 0.40, 0.2, 0.5],
                       [0.7, 0.35, 0.3, 0.2],
                       [0.6, 0.10, 0.4, 0.2]])
HOT = torch.tensor([[1., 1., 0., 1.],
                    [0., 0., 0., 0.],
                    [1., 0., 0., 0.],
                    [0., 1., 0., 1.]])
HAND_MAP = (5 / 6 + 3 / 4 + 1 / 2) / 3


def label_dictionary() -> Dictionary:
    d = Dictionary()
    for label in LABELS:
        d.add_symbol(label)
    return d


def ids(d: Dictionary, rows):
    """Rows of label names -> (B, L) dictionary ids padded with pad, as the task batches them (int32)."""
    width = max(map(len, rows))
    return torch.tensor([[d.index(x) for x in r] + [d.pad()] * (width - len(r)) for r in rows], dtype=torch.int32)


def test_average_precision_by_hand():
    assert average_precision(SCORES[:, 0], HOT[:, 0]) == pytest.approx(5 / 6)
    assert average_precision(SCORES[:, 1], HOT[:, 1]) == pytest.approx(3 / 4)
    assert math.isnan(average_precision(SCORES[:, 2], HOT[:, 2]))
    assert average_precision(SCORES[:, 3], HOT[:, 3]) == pytest.approx(1 / 2)
    assert mean_average_precision(SCORES, HOT) == pytest.approx(HAND_MAP)


def test_average_precision_equals_scikit_learn():
    metrics_sk = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (50, 3), generator=g).float()  # many ties
    hot = (torch.rand(50, 3, generator=g) < 0.3).float()
    for c in range(3):
        assert average_precision(scores[:, c], hot[:, c]) == pytest.approx(
            metrics_sk.average_precision_score(hot[:, c].numpy(), scores[:, c].numpy()))


def test_class_targets():
    d = label_dictionary()
    assert class_targets(ids(d, [["cat"], ["dog"]]), d.pad(), d.nspecial, 4, False).tolist() == [1, 0]
    hot = class_targets(ids(d, [["dog", "cat", "car"], [], ["bird"]]), d.pad(), d.nspecial, 4, True)
    assert hot.tolist() == [[1, 1, 0, 1], [0, 0, 0, 0], [0, 0, 1, 0]]
    with pytest.raises(ValueError, match="label ids \\[3\\] are not classes 0..3"):  # <unk>
        class_targets(torch.tensor([[d.unk()]]), d.pad(), d.nspecial, 4, False)


class FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, source, padding_mask=None):
        return self.logits


def criterion_run(multi_label: bool, logits, rows, batches=1):
    """Forward the criterion (eval mode) on ``batches`` copies of one batch and reduce as fairseq's validation does."""
    d = label_dictionary()
    criterion = UtteranceClassificationCriterion(SimpleNamespace(target_dictionary=d, multi_label=multi_label))
    model = FixedLogits(logits).eval()
    sample = {"net_input": {"source": torch.zeros(len(rows), 10)}, "target": ids(d, rows), "ntokens": 7}
    outputs = [criterion(model, sample)[2] for _ in range(batches)]
    with metrics.aggregate(new_root=True) as agg:
        criterion.reduce_metrics(outputs)
        return criterion, outputs, agg.get_smoothed_values()


def test_multi_label_criterion_logs_the_split_map():
    rows = [[LABELS[c] for c in range(4) if HOT[i, c]] for i in range(4)]
    logits = torch.logit(SCORES)  # monotonic: the same ranking as SCORES
    criterion, outputs, logged = criterion_run(True, logits, rows, batches=2)
    assert not criterion.logging_outputs_can_be_summed()  # per-utterance scores are gathered, not summed
    assert logged["mAP"] == pytest.approx(100 * HAND_MAP, abs=0.01)  # two copies of the batch: the same ranking
    bce = F.binary_cross_entropy_with_logits(logits, HOT)  # mean over utterances and classes
    assert outputs[0]["loss"].item() == pytest.approx(4 * bce.item(), rel=1e-6)
    assert logged["loss"] == pytest.approx(bce.item() / math.log(2), abs=1e-3)


def test_single_label_criterion_logs_accuracy():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    criterion, outputs, logged = criterion_run(False, logits, [["dog"], ["dog"], ["car"]])
    assert criterion.logging_outputs_can_be_summed()
    assert outputs[0]["ncorrect"] == 2 and logged["accuracy"] == pytest.approx(66.7)
    ce = F.cross_entropy(logits, torch.tensor([0, 0, 3]), reduction="sum")
    assert outputs[0]["loss"].item() == pytest.approx(ce.item(), rel=1e-6)
    with pytest.raises(ValueError, match="task.multi_label=false but a row of the batch has several labels"):
        criterion_run(False, logits, [["dog", "cat"], ["dog"], ["car"]])


def test_pooling_reads_only_each_utterances_frames():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 3, generator=g)
    padding = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    scorer = torch.nn.Linear(3, 1)
    mean, att = pool(x, padding), pool(x, padding, scorer)
    assert torch.allclose(mean[1], x[1, :4].mean(0)) and torch.allclose(mean[0], x[0].mean(0))
    changed = x.clone()
    changed[1, 4:] = 1e3  # padded frames: never read
    assert torch.equal(pool(changed, padding), mean) and torch.equal(pool(changed, padding, scorer), att)
    assert torch.allclose(att[1], pool(x[1:2, :4], None, scorer)[0], atol=1e-6)


# -- the task's label checks ------------------------------------------------------------------------------------
def task_for(tmp_path: Path, lbl: str, multi_label=False):
    audio = tmp_path / "audio"
    audio.mkdir(exist_ok=True)
    rows = []
    for i in range(3):
        sf.write(str(audio / f"u{i}.wav"), np.zeros(800, dtype=np.float32), 16000, subtype="PCM_16")
        rows.append(f"u{i}.wav\t800")
    (tmp_path / "train.tsv").write_text("\n".join([str(audio)] + rows) + "\n")
    (tmp_path / "train.lbl").write_text(lbl)
    (tmp_path / "dict.lbl.txt").write_text("dog 2\ncat 1\n")
    cfg = OmegaConf.merge(OmegaConf.structured(UtteranceClassificationConfig), {
        "_name": "utterance_classification", "data": str(tmp_path), "multi_label": multi_label, "tpu": False})
    return tasks.setup_task(cfg)


def test_task_classes_and_label_checks_name_the_row(tmp_path):
    task = task_for(tmp_path, "dog\ncat\ndog\n")
    assert task.num_classes == 2 and not task.multi_label
    task.load_dataset("train")
    batch = task.datasets["train"].collater([task.datasets["train"][i] for i in range(3)])
    assert (batch["target"][:, 0] - task.target_dictionary.nspecial).tolist() == [0, 1, 0]
    manifest, lbl = tmp_path / "train.tsv", tmp_path / "train.lbl"
    for text, message in [
        ("dog\ncat\n", f"{lbl}: 2 labels for 3 manifest rows in {manifest}: row u2.wav (line 4) has no label"),
        ("dog\ncow\ndog\n", f"{lbl}:2: row u1.wav has symbols not in the dictionary: ['cow']"),
        ("dog\ncat dog\ndog\n", f"{lbl}:2: row u1.wav ({manifest}:3) has 2 labels, expected exactly one label"),
        ("dog\n\ndog\n", f"{lbl}:2: row u1.wav ({manifest}:3) has 0 labels, expected exactly one label"),
    ]:
        lbl.write_text(text)
        with pytest.raises(ManifestError) as e:
            task.check_labels(str(manifest), str(lbl))
        assert str(e.value).startswith(message), str(e.value)
    lbl.write_text("dog\ncat dog\ndog\n")
    task_for(tmp_path, "dog\ncat dog\ndog\n", multi_label=True).check_labels(str(manifest), str(lbl))
    assert task.state_dict()["target_dictionary"]["symbols"][4:] == ["dog", "cat"]  # plain lists: weights_only


def test_model_options_are_checked_before_anything_loads():
    from d2v_plugin.audio.classification import Data2VecAudioClassification, Data2VecAudioClassificationConfig
    from d2v_plugin.core.validation import ConfigRangeError

    cfg = OmegaConf.merge(OmegaConf.structured(Data2VecAudioClassificationConfig),
                          {"w2v_path": "/nonexistent.pt", "classifier_proj_size": 0, "final_dropout": 1.0,
                           "normalize": True, "data": "/nonexistent", "ddp_backend": "legacy_ddp"})
    with pytest.raises(ConfigRangeError, match=r"model\.final_dropout=1\.0 is out of range: must be in \[0, 1\).*"
                                               r"model\.classifier_proj_size=0 is out of range: must be >= 1"):
        Data2VecAudioClassification.build_model(cfg, SimpleNamespace(num_classes=3))
    cfg.classifier_proj_size, cfg.final_dropout = 8, 0.0
    with pytest.raises(ValueError, match="needs task utterance_classification with a label dictionary"):
        Data2VecAudioClassification.build_model(cfg, SimpleNamespace())
