"""``image_pretraining`` and ``image_classification``: image manifests through fairseq's data pipeline.

``task.data`` is a folder written by ``python -m manifests.image_manifest``: ``SPLIT.tsv`` per split
(``train.tsv``, ``valid.tsv``) and, for classification, ``labels.txt``. The training split is augmented
(:class:`~d2v_plugin.image.transforms.TrainTransform`); other splits are resized and centre-cropped.
Option names follow fairseq's data2vec ``image_pretraining`` task where it has them.

Classification batches carry ``target`` and work with fairseq's ``sentence_prediction`` criterion
(cross entropy; validation logs ``accuracy``), given the ``data2vec_image_classification`` model.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import List

from omegaconf import II, MISSING

from fairseq.data import Dictionary
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task

from d2v_plugin.image.dataset import ImageDataset, raise_if_unreadable, read_labels
from d2v_plugin.image.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform

logger = logging.getLogger(__name__)


@dataclass
class ImagePretrainingConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "folder with SPLIT.tsv image manifests (and labels.txt)"})
    input_size: int = field(default=224, metadata={"help": "images are cropped/resized to input_size x input_size"})
    normalization_mean: List[float] = field(
        default_factory=lambda: list(IMAGENET_MEAN), metadata={"help": "per-channel mean subtracted (RGB, 0..1 scale)"}
    )
    normalization_std: List[float] = field(
        default_factory=lambda: list(IMAGENET_STD), metadata={"help": "per-channel std divided by (RGB, 0..1 scale)"}
    )
    crop_min_scale: float = field(
        default=0.08, metadata={"help": "random resized crop: smallest fraction of the image area kept"}
    )
    crop_max_scale: float = field(default=1.0, metadata={"help": "random resized crop: largest area fraction"})
    crop_min_ratio: float = field(default=3 / 4, metadata={"help": "random resized crop: smallest aspect (w/h)"})
    crop_max_ratio: float = field(default=4 / 3, metadata={"help": "random resized crop: largest aspect (w/h)"})
    hflip_prob: float = field(default=0.5, metadata={"help": "probability of a horizontal flip"})
    color_jitter: float = field(
        default=0.4, metadata={"help": "brightness/contrast/saturation jitter strength; 0 disables it"}
    )
    eval_crop_ratio: float = field(
        default=0.875, metadata={"help": "evaluation: resize to input_size/eval_crop_ratio, centre-crop input_size"}
    )
    train_subset: str = field(
        default=II("dataset.train_subset"), metadata={"help": "the split that is augmented and shuffled"}
    )
    seed: int = field(default=II("common.seed"), metadata={"help": "seeds augmentation and order (with epoch and index)"})


@register_task("image_pretraining", dataclass=ImagePretrainingConfig)
class ImagePretrainingTask(FairseqTask):
    cfg: ImagePretrainingConfig
    with_labels = False

    @classmethod
    def setup_task(cls, cfg: ImagePretrainingConfig, **kwargs):
        return cls(cfg)

    def transform_for(self, split: str, cfg: ImagePretrainingConfig):
        if split == cfg.train_subset:
            return TrainTransform(
                cfg.input_size, scale=(cfg.crop_min_scale, cfg.crop_max_scale),
                ratio=(cfg.crop_min_ratio, cfg.crop_max_ratio), hflip_prob=cfg.hflip_prob,
                color_jitter=cfg.color_jitter, mean=cfg.normalization_mean, std=cfg.normalization_std,
            )
        return EvalTransform(cfg.input_size, cfg.eval_crop_ratio, cfg.normalization_mean, cfg.normalization_std)

    def load_dataset(self, split: str, combine: bool = False, task_cfg: FairseqDataclass = None, **kwargs):
        cfg = task_cfg or self.cfg
        manifest = os.path.join(cfg.data, f"{split}.tsv")
        self.datasets[split] = ImageDataset(
            manifest, self.transform_for(split, cfg), labels=self.labels if self.with_labels else None,
            shuffle=split == cfg.train_subset, seed=cfg.seed,
        )
        logger.info(f"{manifest}: {len(self.datasets[split])} images")

    # Decoding errors reach the main process inside the batch (see d2v_plugin.image.dataset).
    def train_step(self, sample, *args, **kwargs):
        raise_if_unreadable(sample)
        return super().train_step(sample, *args, **kwargs)

    def valid_step(self, sample, model, criterion):
        raise_if_unreadable(sample)
        return super().valid_step(sample, model, criterion)

    def max_positions(self):
        return None

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None


@dataclass
class ImageClassificationConfig(ImagePretrainingConfig):
    pass


@register_task("image_classification", dataclass=ImageClassificationConfig)
class ImageClassificationTask(ImagePretrainingTask):
    """Labelled images; ``labels.txt`` fixes the classes (its line order is the label index)."""

    cfg: ImageClassificationConfig
    with_labels = True

    def __init__(self, cfg: ImageClassificationConfig):
        super().__init__(cfg)
        self.labels = read_labels(cfg.data)
        # For sentence_prediction's optional reports (mcc, f1): symbols "0".."K-1" map back to labels.
        self.label_dictionary = Dictionary()
        for i in range(len(self.labels)):
            self.label_dictionary.add_symbol(str(i))

    @property
    def num_classes(self) -> int:
        return len(self.labels)
