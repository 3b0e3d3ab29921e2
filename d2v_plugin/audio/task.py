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
  fairseq skip short clips and crop long ones) only apply to the training split.
"""

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import open_dict

from fairseq.data import Dictionary
from fairseq.tasks import register_task
from fairseq.tasks.audio_finetuning import AudioFinetuningConfig, AudioFinetuningTask

from d2v_plugin.audio.ctc_decoder import CtcDecoder, CtcDecoderConfig
from d2v_plugin.audio.manifest import read_manifest
from d2v_plugin.core.errors import ManifestError


@dataclass
class AudioCtcConfig(AudioFinetuningConfig, CtcDecoderConfig):
    train_subset: str = field(
        default="train",
        metadata={"help": "the split that min_sample_size/max_sample_size apply to; other splits keep every row"},
    )


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
        if split != getattr(task_cfg, "train_subset", "train"):
            with open_dict(task_cfg):  # evaluation: every row, uncropped
                task_cfg.min_sample_size = 0
                task_cfg.max_sample_size = None
        manifest = os.path.join(self.cfg.data, f"{split}.tsv")
        label_path = os.path.join(self.cfg.data, f"{split}.{task_cfg.labels}")
        self.check_labels(manifest, label_path)
        super().load_dataset(split, task_cfg, **kwargs)

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
        return CtcDecoder(self.cfg, self.target_dictionary, beam=getattr(args, "beam", 5),
                          nbest=getattr(args, "nbest", 1))
