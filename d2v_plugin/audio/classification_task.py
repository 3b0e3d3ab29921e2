"""``utterance_classification``: one label (or several) per utterance, for ``data2vec_audio_classification``
and the criterion of the same name (as fairseq pairs its ``sentence_prediction`` task and criterion).

Data: the audio manifests (``SPLIT.tsv``), ``SPLIT.lbl`` with one line per manifest row (its label, or with
``multi_label`` its labels separated by spaces) and ``dict.lbl.txt`` (fairseq ``Dictionary`` format), as
``python -m manifests.utterance_labels`` writes them. Class ``i`` is dictionary entry ``nspecial + i``: fairseq's
``Dictionary`` puts its four special symbols first.

Everything else is the ``audio_ctc`` task's (:class:`~d2v_plugin.audio.task.AudioCtcTask`, itself fairseq's
``audio_finetuning``), so nothing is written twice: fairseq reads the label lines and batches them as padded
dictionary ids (``AddTargetDataset``: ``target (B, L)``, ``pad`` after each row's labels); evaluation splits
keep every utterance uncropped (``min_sample_size`` / ``max_sample_size`` apply to the training split only);
the label dictionary is stored in checkpoints as plain lists (``torch.load(weights_only=True)`` loads them); and
a label-count mismatch or an unknown label fails naming the manifest row. What this task adds: the number of
classes for the model, the single- or multi-label choice for the criterion, and a check that each row has
exactly one label (``multi_label=false``) or at least one.

Why not fairseq's own tasks of that kind: ``audio_classification`` in ``fairseq/tasks`` (same ``SPLIT.lbl`` /
``dict.lbl.txt`` idea) loads its label dictionary without special symbols and then asks it for ``pad()``, which
fails before the first batch; it also stores a ``Dictionary`` object in checkpoints (``weights_only=True``
refuses them), runs the model a second time per batch for its accuracy and has no multi-label mode. The one in
``examples/data2vec`` does not import on this stack (its package imports torchvision).
"""

from dataclasses import dataclass, field
from typing import List, Optional

from fairseq.tasks import register_task
from fairseq.tasks.audio_finetuning import AudioFinetuningConfig
from omegaconf import II

from d2v_plugin.audio.manifest import read_manifest
from d2v_plugin.audio.task import AudioCtcTask
from d2v_plugin.core.errors import ManifestError


@dataclass
class UtteranceClassificationConfig(AudioFinetuningConfig):
    labels: Optional[str] = field(
        default="lbl",
        metadata={"help": "label file extension: SPLIT.{labels} and dict.{labels}.txt beside the manifests"},
    )
    multi_label: bool = field(
        default=False,
        metadata={"help": "false: exactly one label per row (cross-entropy, accuracy); true: one or more labels "
                          "per row, separated by spaces (per-class binary cross-entropy, mAP)"},
    )
    train_subset: str = field(
        default=II("dataset.train_subset"),
        metadata={"help": "the split that min_sample_size/max_sample_size apply to; other splits keep every row"},
    )


@register_task("utterance_classification", dataclass=UtteranceClassificationConfig)
class UtteranceClassificationTask(AudioCtcTask):
    """``audio_ctc``'s data loading with a label dictionary in place of the letter one (module docstring)."""

    cfg: UtteranceClassificationConfig

    @property
    def num_classes(self) -> int:
        """Labels in ``dict.{labels}.txt`` (the dictionary without fairseq's special symbols)."""
        return len(self.target_dictionary) - self.target_dictionary.nspecial

    @property
    def multi_label(self) -> bool:
        return bool(self.cfg.multi_label)

    def check_labels(self, manifest: str, label_path: str) -> None:
        """``audio_ctc``'s checks (file present, one line per row, every label in the dictionary), then: each
        row has exactly one label, or with ``multi_label`` at least one; errors name the label file's line."""
        super().check_labels(manifest, label_path)
        _, rows = read_manifest(manifest)
        with open(label_path, encoding="utf-8") as f:
            lines: List[str] = f.read().splitlines()
        for (line_no, path, _), line in zip(rows, lines):
            n = len(line.split())
            if n == 0 or (n > 1 and not self.multi_label):
                want = "at least one label" if self.multi_label else "exactly one label (task.multi_label=false)"
                raise ManifestError(f"{label_path}:{line_no - 1}: row {path} ({manifest}:{line_no}) has {n} "
                                    f"labels, expected {want}")

    def build_generator(self, *args, **kwargs):
        raise NotImplementedError("task utterance_classification has no generator: fairseq-generate decodes CTC "
                                  "models (task audio_ctc); validation logs the accuracy / mAP")
