"""Small, documented fixes to fairseq 0.12 (fairseq-fixed 0.12.3.1), applied when the plugin loads.

We never edit installed files; each fix wraps one fairseq function and says why.

1. ``FileAudioDataset`` (fairseq.data.audio.raw_audio_dataset): a malformed manifest row fails with a
   bare ``assert`` showing the line, and a missing audio file is only noticed inside a data-loader
   worker, after three retries with sleeps, as ``Exception("Failed to load ...")``. We validate the
   manifest when the dataset is built and fail with ``ManifestError("<manifest>:<line>: ...")``
   naming the file; a file that becomes unreadable later fails with the manifest row too.
2. ``fairseq.data.data_utils.batch_by_size``: fairseq-fixed 0.12.3.1 added a line that drops the last
   batch whenever ``required_batch_size_multiple > 1`` (fairseq's default is 8) and that batch's size
   is not a multiple of it. Every epoch silently loses up to 7 samples of training data, validation
   scores skip samples, and ``fairseq-generate`` skips utterances. The batches are consecutive slices
   of the ordered indices, so we give the dropped tail back as the last batch.
3. ``DistributedFairseqModel`` (fairseq.models.distributed_fairseq_model) always passes
   ``device_ids=[device_id]`` to PyTorch's ``DistributedDataParallel``, which PyTorch rejects for a
   CPU model. For CPU modules we pass none (what PyTorch expects), so gloo data-parallel training on
   CPU works (started with ``d2v-hydra-train``, see d2v_plugin/launch.py).
4. ``RawAudioDataset.collater`` crops clips with NumPy's *global* random generator, which nothing
   seeds: a run resumed from a checkpoint crops differently from an uninterrupted one (and data-loader
   workers forked from one process crop alike). Each batch's crops are now seeded from the epoch and
   the ids of its samples, so training is reproducible across resumes.
"""

import functools
import os

import numpy as np
from torch.nn.parallel import DistributedDataParallel

from fairseq.data import data_utils
from fairseq.data.audio import raw_audio_dataset
from fairseq.models import distributed_fairseq_model


class ManifestError(ValueError):
    """A manifest row is malformed or points to a file that cannot be read."""


def check_audio_manifest(manifest_path: str):
    """Validate a wav2vec-style manifest; return ``(root, [(line_no, relpath, frames), ...])``."""
    rows = []
    with open(manifest_path, encoding="utf-8") as f:
        root = f.readline().strip()
        if not os.path.isdir(root):
            raise ManifestError(f"{manifest_path}:1: root directory {root!r} does not exist")
        for line_no, line in enumerate(f, start=2):
            fields = line.rstrip("\n").split("\t")
            if fields == [""]:
                raise ManifestError(f"{manifest_path}:{line_no}: empty line")
            if len(fields) != 2:
                raise ManifestError(f"{manifest_path}:{line_no}: expected 'path<TAB>frames', got {line.strip()!r}")
            try:
                frames = int(fields[1])
            except ValueError:
                raise ManifestError(f"{manifest_path}:{line_no}: frame count {fields[1]!r} is not an integer") from None
            path = os.path.join(root, fields[0])
            if not os.path.isfile(path):
                raise ManifestError(f"{manifest_path}:{line_no}: audio file not found: {path}")
            rows.append((line_no, fields[0], frames))
    return root, rows


def _patch_file_audio_dataset():
    cls = raw_audio_dataset.FileAudioDataset
    if getattr(cls, "_d2v_checked", False):
        return
    original_init, original_getitem = cls.__init__, cls.__getitem__

    @functools.wraps(original_init)
    def __init__(self, manifest_path, sample_rate, *args, **kwargs):
        _, rows = check_audio_manifest(manifest_path)
        original_init(self, manifest_path, sample_rate, *args, **kwargs)
        # fairseq drops rows shorter than min_sample_size; keep the line number of each kept row.
        min_size = kwargs.get("min_sample_size", args[1] if len(args) > 1 else 0) or 0
        self._d2v_rows = [(manifest_path, line_no) for line_no, _, n in rows if n >= min_size]

    @functools.wraps(original_getitem)
    def __getitem__(self, index):
        try:
            return original_getitem(self, index)
        except Exception as e:
            rows = getattr(self, "_d2v_rows", None)
            where = f"{rows[index][0]}:{rows[index][1]}" if rows and index < len(rows) else f"row {index}"
            raise ManifestError(f"{where}: cannot read audio: {e}") from None

    cls.__init__, cls.__getitem__ = __init__, __getitem__
    cls._d2v_checked = True


def _patch_batch_by_size():
    original = data_utils.batch_by_size
    if getattr(original, "_d2v_keeps_tail", False):
        return

    @functools.wraps(original)
    def batch_by_size(indices, *args, **kwargs):
        if not isinstance(indices, np.ndarray):
            indices = np.fromiter(indices, dtype=np.int64, count=-1)
        if len(indices) == 0:
            return []
        batches = original(indices, *args, **kwargs)
        covered = sum(len(b) for b in batches)
        if covered < len(indices) and kwargs.get("fixed_shapes") is None:
            batches = list(batches) + [indices[covered:]]
        return batches

    batch_by_size._d2v_keeps_tail = True
    data_utils.batch_by_size = batch_by_size


def _patch_raw_audio_crops():
    cls = raw_audio_dataset.RawAudioDataset
    if getattr(cls, "_d2v_seeded_crops", False):
        return
    original_collater, original_set_epoch = cls.collater, cls.set_epoch

    @functools.wraps(original_collater)
    def collater(self, samples):
        ids = [int(s["id"]) for s in samples if "id" in s]
        with data_utils.numpy_seed(getattr(self, "_d2v_epoch", 0), *ids):
            return original_collater(self, samples)

    @functools.wraps(original_set_epoch)
    def set_epoch(self, epoch):
        self._d2v_epoch = epoch
        return original_set_epoch(self, epoch)

    cls.collater, cls.set_epoch = collater, set_epoch
    cls._d2v_seeded_crops = True


class CpuFriendlyDistributedDataParallel(DistributedDataParallel):
    """PyTorch's DDP, minus the device ids fairseq passes for a module that lives on the CPU."""

    def __init__(self, module, device_ids=None, output_device=None, *args, **kwargs):
        if all(p.device.type == "cpu" for p in module.parameters()):
            device_ids = output_device = None
        super().__init__(module, device_ids, output_device, *args, **kwargs)


_patch_file_audio_dataset()
_patch_batch_by_size()
_patch_raw_audio_crops()
distributed_fairseq_model.DistributedDataParallel = CpuFriendlyDistributedDataParallel
