"""Image manifests and the fairseq dataset that reads them.

Manifest (``SPLIT.tsv``, written by ``python -m manifests.image_manifest``): the first line is the
root directory, each further line a path relative to it, optionally followed by a TAB and the class
name. ``labels.txt`` next to it lists the class names, one per line; a name's line index is its label.

Errors: a malformed row, a missing or empty file, or an unknown class fail when the dataset is built,
naming ``manifest:line``. An image that exists but cannot be decoded is only found when it is read
(decoding every image up front would cost as much as an epoch); it then travels to the main process
as an ``"error"`` entry of the batch, where :func:`raise_if_unreadable` (called by the image tasks)
raises it with the manifest line, instead of a data-loader worker's stack trace.
"""

import os
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from fairseq.data import FairseqDataset

from d2v_plugin.core.errors import ManifestError
from d2v_plugin.image.transforms import to_rgb

LABELS_FILE = "labels.txt"


class ManifestRow(NamedTuple):
    line_no: int
    path: str  # relative to the manifest root
    label: Optional[str]


def read_image_manifest(manifest: str, check_files: bool = True):
    """Parse (and check) a manifest; returns ``(root, [ManifestRow, ...])``."""
    if not os.path.isfile(manifest):
        raise ManifestError(f"{manifest}: manifest not found (write one with python -m manifests.image_manifest)")
    rows: List[ManifestRow] = []
    with open(manifest, encoding="utf-8") as f:
        root = f.readline().rstrip("\n")
        if not os.path.isdir(root):
            raise ManifestError(f"{manifest}:1: root directory {root!r} does not exist")
        for line_no, line in enumerate(f, start=2):
            fields = line.rstrip("\n").split("\t")
            if not fields[0] or len(fields) > 2:
                raise ManifestError(f"{manifest}:{line_no}: expected 'path' or 'path<TAB>class', got {line.rstrip()!r}")
            if check_files:
                path = os.path.join(root, fields[0])
                try:
                    size = os.stat(path).st_size
                except OSError:
                    raise ManifestError(f"{manifest}:{line_no}: image file not found: {path}") from None
                if size == 0:
                    raise ManifestError(f"{manifest}:{line_no}: image file is empty: {path}")
            rows.append(ManifestRow(line_no, fields[0], fields[1] if len(fields) == 2 else None))
    if not rows:
        raise ManifestError(f"{manifest}: no images listed")
    return root, rows


def read_labels(manifest_dir: str) -> List[str]:
    path = os.path.join(manifest_dir, LABELS_FILE)
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: labels file not found; classification needs a manifest made "
                            "from class sub-folders (python -m manifests.image_manifest)")
    with open(path, encoding="utf-8") as f:
        names = [line.rstrip("\n") for line in f if line.strip()]
    if len(set(names)) != len(names):
        raise ManifestError(f"{path}: duplicate class names")
    return names


class ImageDataset(FairseqDataset):
    """Images of one manifest, augmented by ``transform(pil_image, rng) -> (3, S, S)`` tensor.

    Args:
        labels: class names (``labels.txt``); when given, every row needs a known class and batches
            carry ``target``.
        shuffle: a new random order every epoch (training), else manifest order.
        seed: with the epoch and the item index, seeds the item's augmentation and the order.
    """

    def __init__(self, manifest: str, transform: Callable, labels: Optional[Sequence[str]] = None,
                 shuffle: bool = False, seed: int = 1):
        super().__init__()
        self.manifest = manifest
        self.root, self.rows = read_image_manifest(manifest)
        self.transform, self.shuffle, self.seed, self.epoch = transform, shuffle, seed, 1
        self.targets: Optional[np.ndarray] = None
        if labels is not None:
            index: Dict[str, int] = {name: i for i, name in enumerate(labels)}
            targets = []
            for row in self.rows:
                if row.label is None:
                    raise ManifestError(f"{manifest}:{row.line_no}: no class given for {row.path}")
                if row.label not in index:
                    raise ManifestError(f"{manifest}:{row.line_no}: class {row.label!r} is not in {LABELS_FILE}")
                targets.append(index[row.label])
            self.targets = np.asarray(targets, dtype=np.int64)
        self.sizes = np.ones(len(self.rows), dtype=np.int64)  # one "token" per image for fairseq's batching

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        path = os.path.join(self.root, row.path)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        try:
            with Image.open(path) as f:
                img = to_rgb(f)  # decodes the whole file; 16-bit grey is scaled, not clipped
        except Exception as e:  # PIL raises many types; report any with the manifest line (main process)
            return {"id": index, "error": f"{self.manifest}:{row.line_no}: cannot read image {path}: "
                                          f"{type(e).__name__}: {e}"}
        item = {"id": index, "source": self.transform(img, rng)}
        if self.targets is not None:
            item["target"] = int(self.targets[index])
        return item

    def collater(self, samples: List[dict]) -> dict:
        """-> ``{"id": (B,), "net_input": {"source": (B, 3, S, S)}, "target": (B,), ...}``."""
        if not samples:
            return {}
        errors = [s["error"] for s in samples if "error" in s]
        if errors:
            return {"id": torch.tensor([s["id"] for s in samples]), "error": errors[0]}
        batch = {
            "id": torch.tensor([s["id"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": len(samples),
            "net_input": {"source": torch.stack([s["source"] for s in samples])},
        }
        if self.targets is not None:
            batch["target"] = torch.tensor([s["target"] for s in samples])
        return batch

    def num_tokens(self, index: int) -> int:
        return 1

    def size(self, index: int) -> int:
        return 1

    def ordered_indices(self) -> np.ndarray:
        if self.shuffle:
            return np.random.default_rng([self.seed, self.epoch]).permutation(len(self))
        return np.arange(len(self))

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return False  # the order changes with the epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def raise_if_unreadable(sample: Optional[dict]) -> None:
    """Raise the error an :class:`ImageDataset` batch carries (see module docstring)."""
    if sample and "error" in sample:
        raise ManifestError(sample["error"])
