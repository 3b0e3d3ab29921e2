"""Small, documented fixes to fairseq 0.12 (fairseq-fixed 0.12.3.1), applied by :func:`apply`.

We never edit installed files; each fix wraps one fairseq function and says why. :func:`apply` is the
only place they are switched on: ``d2v_plugin/__init__.py`` calls it when fairseq loads the plugin
(``common.user_dir``), it is idempotent, and it logs once which fixes it applied. :data:`FIXES` lists
them; the README's list is checked against it (tests/compat/test_fairseq_fixes.py).

The CPU data-parallel fix (``DistributedDataParallel`` without device ids for a CPU module) is not here:
only ``d2v-hydra-train`` needs it, and it applies it itself (d2v_plugin/compat/launch.py).
"""

import functools
import logging
import os
import shutil
import tempfile
from argparse import Namespace
from typing import Dict

import numpy as np

from omegaconf import open_dict

from fairseq import checkpoint_utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.data import data_utils
from fairseq.data.audio import raw_audio_dataset
from fairseq.file_io import PathManager

from d2v_plugin.audio.manifest import read_manifest
from d2v_plugin.core.errors import ManifestError
from d2v_plugin.core.finetune import load_checkpoint

logger = logging.getLogger(__name__)


def _patch_file_audio_dataset():
    cls = raw_audio_dataset.FileAudioDataset
    if getattr(cls, "_d2v_checked", False):
        return
    original_init, original_getitem = cls.__init__, cls.__getitem__

    @functools.wraps(original_init)
    def __init__(self, manifest_path, sample_rate, *args, **kwargs):
        _, rows = read_manifest(manifest_path, check_files=True)
        original_init(self, manifest_path, sample_rate, *args, **kwargs)
        # fairseq drops rows shorter than min_sample_size; keep the line number of each kept row.
        min_size = kwargs.get("min_sample_size", args[1] if len(args) > 1 else 0) or 0
        self._d2v_rows = [(manifest_path, line_no) for line_no, _, n in rows if n >= min_size]
        short = [row for row in rows if row.frames < min_size]
        if short and len(short) == len(rows):  # fairseq would go on to "the dataset is empty ... max tokens"
            shortest = min(r.frames for r in rows)
            raise ManifestError(f"{manifest_path}: all {len(rows)} clips are shorter than task.min_sample_size="
                                f"{min_size} samples (the longest has {max(r.frames for r in rows)}); lower "
                                f"task.min_sample_size (e.g. task.min_sample_size={shortest}) or use longer clips")
        if short:  # fairseq only logs an INFO count
            examples = ", ".join(f"{manifest_path}:{r.line_no} {r.path} ({r.frames} samples)" for r in short[:3])
            logger.warning(f"{manifest_path}: {len(short)} of {len(rows)} clips are shorter than task.min_sample_size="
                           f"{min_size} samples and are left out (lower task.min_sample_size to keep them): "
                           f"{examples}{' ...' if len(short) > 3 else ''}")

    @functools.wraps(original_getitem)
    def __getitem__(self, index):
        try:
            return original_getitem(self, index)
        except Exception as e:  # soundfile/OS errors: name the row, keep the cause chained
            rows = getattr(self, "_d2v_rows", None)
            where = f"{rows[index][0]}:{rows[index][1]}" if rows and index < len(rows) else f"row {index}"
            raise ManifestError(f"{where}: cannot read audio: {e}") from e

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


def _patch_checkpoint_loading():
    if getattr(checkpoint_utils.load_checkpoint_to_cpu, "_d2v_weights_only", False):
        return
    original = checkpoint_utils.load_checkpoint_to_cpu

    @functools.wraps(original)
    def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
        # fairseq's version: fetch remote files through PathManager, then a plain torch.load
        local_path = PathManager.get_local_path(path)
        return load_checkpoint(local_path, option=None, arg_overrides=arg_overrides)

    load_checkpoint_to_cpu._d2v_weights_only = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu


def _patch_generate_results():
    from fairseq_cli import generate

    if getattr(generate.main, "_d2v_replaces_results", False):
        return
    original = generate.main

    @functools.wraps(original)
    def main(cfg):
        if isinstance(cfg, Namespace):
            cfg = convert_namespace_to_omegaconf(cfg)
        results = cfg.common_eval.results_path
        if results is None:
            return original(cfg)
        # fairseq opens RESULTS/generate-SUBSET.txt for writing before anything can fail: decode into a
        # folder beside it and move the file into place only when decoding finished
        os.makedirs(results, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix=".generate-", dir=results)
        name = f"generate-{cfg.dataset.gen_subset}.txt"
        try:
            with open_dict(cfg):
                cfg.common_eval.results_path = scratch
            result = original(cfg)
            os.replace(os.path.join(scratch, name), os.path.join(results, name))
            return result
        finally:
            with open_dict(cfg):
                cfg.common_eval.results_path = results
            shutil.rmtree(scratch, ignore_errors=True)

    main._d2v_replaces_results = True
    generate.main = main


# name -> (what it fixes, the function that applies it); the README lists the same names.
FIXES: Dict[str, tuple] = {
    "audio_manifest_rows": (
        "FileAudioDataset: a malformed manifest row or a missing audio file fails when the dataset is built, "
        "as 'MANIFEST:LINE: ...', instead of a bare assert or a data-loader worker's traceback after retries; "
        "a file that becomes unreadable later names its row too (cause chained)",
        _patch_file_audio_dataset),
    "batch_by_size_keeps_tail": (
        "data_utils.batch_by_size: fairseq-fixed 0.12.3.1 drops the last batch whenever "
        "required_batch_size_multiple > 1 (fairseq's default 8), losing training samples and skipping "
        "validation/fairseq-generate utterances; the dropped tail is given back as the last batch",
        _patch_batch_by_size),
    "seeded_audio_crops": (
        "RawAudioDataset.collater crops clips with NumPy's unseeded global generator, so a resumed run crops "
        "differently; each batch's crops are seeded from the epoch and its sample ids",
        _patch_raw_audio_crops),
    "weights_only_checkpoints": (
        "checkpoint_utils.load_checkpoint_to_cpu (resuming, fairseq-generate --path, model.w2v_path, "
        "load_model_ensemble) calls torch.load without weights_only, so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 "
        "turns code execution from a checkpoint back on, and a damaged file fails without its name; it loads "
        "with an explicit weights_only=True and names a refused file and the intact checkpoints beside it "
        "(d2v_plugin.core.finetune.load_checkpoint)",
        _patch_checkpoint_loading),
    "generate_keeps_results": (
        "fairseq-generate empties RESULTS/generate-SUBSET.txt before decoding, so a run that fails (a missing "
        "KenLM, a bad option) destroys the previous results; it now writes beside it and renames on success",
        _patch_generate_results),
}

_applied = False


def apply() -> None:
    """Apply every fix in :data:`FIXES` once per process (later calls do nothing) and log it once."""
    global _applied
    if _applied:
        return
    for _, patch in FIXES.values():
        patch()
    _applied = True
    logger.info("d2v_plugin: applied fixes to fairseq 0.12: " + ", ".join(FIXES)
                + " (d2v_plugin/compat/fairseq_fixes.py)")
