"""``audio_ctc``: fairseq's ``audio_finetuning`` task made usable end to end for CTC speech recognition.

What it adds to ``audio_finetuning`` (everything else, data loading and batching included, is fairseq's):

* ``fairseq-generate`` decodes CTC models: :meth:`build_generator` returns a
  :class:`~d2v_plugin.audio.ctc_decoder.CtcDecoder` (greedy/Viterbi by default, beam search with an optional
  KenLM model) instead of fairseq's seq2seq ``SequenceGenerator``, which cannot drive a CTC model.
* Checkpoints load with ``torch.load(..., weights_only=True)``: fairseq stores the task's state,
  including the letter ``Dictionary`` object, in every checkpoint, which torch 2.6+ refuses to
  unpickle by default (and with it fairseq's own resume). We store the dictionary as plain lists.
* Labels are checked when a split loads: a manifest/label count mismatch or a character missing from
  the dictionary fails with the manifest row, instead of an assert (count) or a silent ``<unk>``.
* Evaluation splits never drop utterances: ``min_sample_size`` / ``max_sample_size`` (which make
  fairseq skip short clips and crop long ones) only apply to the training split (``train_subset``,
  which follows ``dataset.train_subset``). The task's own config is never changed for that: an
  evaluation split is built from a copy, so loading ``valid`` first (as ``fairseq-train`` does) leaves
  the training split cropped and filtered.
"""

import contextlib
import copy
import logging
import os
from dataclasses import dataclass, field, is_dataclass, replace
from typing import Any, Dict, Iterator, List, Optional

from omegaconf import II, DictConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from fairseq.data import Dictionary
from fairseq.tasks import register_task
from fairseq.tasks.audio_finetuning import AudioFinetuningConfig, AudioFinetuningTask

from d2v_plugin.audio.ctc_decoder import CtcDecoder, CtcDecoderConfig
from d2v_plugin.audio.manifest import read_manifest
from d2v_plugin.core.errors import ManifestError


logger = logging.getLogger(__name__)


@dataclass
class AudioCtcConfig(AudioFinetuningConfig, CtcDecoderConfig):
    train_subset: str = field(
        default=II("dataset.train_subset"),
        metadata={"help": "the split that min_sample_size/max_sample_size apply to; other splits keep every row"},
    )


def train_subset_of(cfg: Any) -> str:
    """``cfg.train_subset``, or ``"train"`` where it cannot be resolved.

    Inside fairseq's hydra config the default interpolation ``${dataset.train_subset}`` resolves; a task
    config built on its own (tests, scripts) has no ``dataset`` node to resolve it against, and a plain
    dataclass instance holds the ``${...}`` string itself. fairseq's own default is ``"train"``.
    """
    try:
        value = getattr(cfg, "train_subset", None)
    except (InterpolationResolutionError, MissingMandatoryValue):
        return "train"
    if not isinstance(value, str) or not value or value.startswith("${"):
        return "train"
    return value


def evaluation_config(cfg: Any) -> Any:
    """A copy of the task config with ``min_sample_size = 0`` and ``max_sample_size = None``; ``cfg`` is untouched."""
    if isinstance(cfg, DictConfig):
        cfg = copy.deepcopy(cfg)  # keeps the parent node, so interpolations still resolve
        with open_dict(cfg):
            cfg.min_sample_size = 0
            cfg.max_sample_size = None
        return cfg
    if is_dataclass(cfg):
        return replace(cfg, min_sample_size=0, max_sample_size=None)
    cfg = copy.copy(cfg)  # argparse.Namespace (legacy configs)
    cfg.min_sample_size, cfg.max_sample_size = 0, None
    return cfg


def dictionary_to_plain(d: Dictionary) -> Dict[str, Any]:
    """A Dictionary as lists and ints only (what ``torch.load(weights_only=True)`` accepts)."""
    return {"symbols": list(d.symbols), "count": [int(c) for c in d.count], "nspecial": int(d.nspecial),
            "bos": d.bos_index, "pad": d.pad_index, "eos": d.eos_index, "unk": d.unk_index}


def dictionary_from_plain(state: Dict[str, Any]) -> Dictionary:
    d = Dictionary()
    d.symbols, d.count = list(state["symbols"]), list(state["count"])
    d.indices = {s: i for i, s in enumerate(d.symbols)}
    d.nspecial = state["nspecial"]
    d.bos_index, d.pad_index, d.eos_index, d.unk_index = state["bos"], state["pad"], state["eos"], state["unk"]
    return d


@register_task("audio_ctc", dataclass=AudioCtcConfig)
class AudioCtcTask(AudioFinetuningTask):
    cfg: AudioCtcConfig

    # -- checkpoints that load with weights_only=True -------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"target_dictionary": dictionary_to_plain(self.target_dictionary)} if self.cfg.labels else {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        plain = state_dict.get("target_dictionary")
        if isinstance(plain, dict):
            state_dict = {**state_dict, "target_dictionary": dictionary_from_plain(plain)}
        super().load_state_dict(state_dict)

    # -- data ------------------------------------------------------------------------------------
    def load_dataset(self, split: str, task_cfg: Optional[AudioCtcConfig] = None, **kwargs):
        task_cfg = task_cfg or self.cfg
        manifest = os.path.join(self.cfg.data, f"{split}.tsv")
        label_path = os.path.join(self.cfg.data, f"{split}.{task_cfg.labels}")
        self.check_labels(manifest, label_path)
        if split == train_subset_of(task_cfg):
            super().load_dataset(split, task_cfg, **kwargs)
            return
        # Evaluation: every row, uncropped, from a copy of the config. fairseq's AudioPretrainingTask
        # reads min_sample_size / max_sample_size from self.cfg (not task_cfg), so the copy stands in
        # for self.cfg too while the split is built; the config objects themselves never change.
        eval_cfg = evaluation_config(task_cfg)
        with self._config(eval_cfg if task_cfg is self.cfg else evaluation_config(self.cfg)):
            super().load_dataset(split, eval_cfg, **kwargs)

    @contextlib.contextmanager
    def _config(self, cfg: Any) -> Iterator[None]:
        saved = self.cfg
        self.cfg = cfg
        try:
            yield
        finally:
            self.cfg = saved

    def check_labels(self, manifest: str, label_path: str) -> None:
        """Fail with the manifest row when labels are missing or use characters outside the dictionary."""
        if not os.path.isfile(manifest):
            raise ManifestError(f"{manifest}: manifest not found")
        if not os.path.isfile(label_path):
            raise ManifestError(f"{label_path}: label file not found (expected one line per row of {manifest})")
        _, rows = read_manifest(manifest, check_files=True)
        with open(label_path, encoding="utf-8") as f:
            labels: List[str] = f.read().splitlines()
        if len(labels) != len(rows):
            first_bad = min(len(labels), len(rows))
            what = (f"row {rows[first_bad][1]} (line {rows[first_bad][0]}) has no label"
                    if len(labels) < len(rows) else f"label line {first_bad + 1} has no manifest row")
            raise ManifestError(f"{label_path}: {len(labels)} labels for {len(rows)} manifest rows in {manifest}: {what}")
        known = set(self.target_dictionary.symbols)
        for (line_no, path, _), label in zip(rows, labels):
            unknown = sorted(set(label.split()) - known)
            if unknown:
                raise ManifestError(f"{label_path}:{line_no - 1}: row {path} has symbols not in the dictionary: {unknown}")

    # -- decoding --------------------------------------------------------------------------------
    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, prefix_allowed_tokens_fn=None):
        decoder = CtcDecoder(self.cfg, self.target_dictionary, beam=getattr(args, "beam", 5),
                             nbest=getattr(args, "nbest", 1), task=self)
        if self.cfg.ctc_decoder == "viterbi" and getattr(args, "beam", None) not in (None, 1):
            # fairseq-generate labels its score line "with beam={generation.beam}" (default 5): greedy
            # decoding is beam 1, so say so there instead of a beam that never ran
            if OmegaConf.is_config(args):
                with open_dict(args):
                    args.beam = 1
            else:
                args.beam = 1
        logger.info(f"audio_ctc: decoding with {decoder.description()}")
        return decoder
