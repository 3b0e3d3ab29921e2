"""Fine-tuning from a pre-training checkpoint: find it, check it, and remember its config.

Every fine-tuning model here (``data2vec_text_classification``, ``data2vec_image_classification``) has
three options: ``model_path`` (the pre-training checkpoint), ``no_pretrained_weights`` (its architecture,
random weights) and ``pretrained_model_cfg`` (that checkpoint's ``cfg.model``). :func:`pretrained_config`
is the one way they resolve them:

* first build (``pretrained_model_cfg`` is None): load ``model_path`` with :func:`load_checkpoint`, check
  the model name, and write the checkpoint's model config into ``pretrained_model_cfg`` where fairseq's
  saved checkpoint config sees it (:func:`remember_in_run_config`);
* rebuilding a fine-tuned checkpoint (``pretrained_model_cfg`` set): use it, never read ``model_path``,
  so a fine-tuned checkpoint loads anywhere, without the pre-training checkpoint.

The CTC model (``d2v_plugin/audio/ctc_model.py``) is left on fairseq's own mechanism: it *is* fairseq's
``Wav2VecEncoder``, which loads ``w2v_path`` itself and keeps the pre-training config in ``w2v_args``.
That is the layout of fairseq's wav2vec 2.0 / data2vec fine-tuned checkpoints and of every tool that
reads them; routing it through here would mean forking fairseq's encoder and breaking that compatibility.
"""

import hashlib
import logging
import os
import pickle
from typing import Any, List, Optional, Sequence, Tuple, Union
from zipfile import BadZipFile, ZipFile

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from fairseq.checkpoint_utils import _upgrade_state_dict
from fairseq.data import Dictionary
from fairseq.dataclass.utils import overwrite_args_by_name

logger = logging.getLogger(__name__)

# Plain-data classes fairseq itself pickles into checkpoints, which torch's weights-only unpickler may rebuild:
# the target Dictionary in the ``task_state`` of fairseq's ``audio_finetuning`` (wav2vec 2.0 / data2vec CTC)
# checkpoints. It has no ``__setstate__`` or ``__reduce__`` of its own: unpickling one only sets instance
# attributes, and what they hold passes the same weights-only checks (a payload inside is still refused).
CHECKPOINT_SAFE_CLASSES = (Dictionary,)


def load_checkpoint(path: str, option: Optional[str] = "model.model_path",
                    arg_overrides: Optional[dict] = None) -> dict:
    """A fairseq checkpoint as ``fairseq.checkpoint_utils.load_checkpoint_to_cpu`` returns it, loaded safely.

    ``torch.load(weights_only=True)`` is passed explicitly: only tensors, plain containers and the
    plain-data classes of ``CHECKPOINT_SAFE_CLASSES`` are unpickled, and ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
    (which overrides torch's *default* only) cannot turn code execution back on. Then what fairseq does: ``arg_overrides`` are applied, ``cfg`` becomes an
    OmegaConf object and old layouts are upgraded (``_upgrade_state_dict``). ``option`` names the setting in
    errors (None: the path alone). A file torch refuses is named, with the checkpoints beside it that look
    intact (:func:`intact_neighbours`), so a run whose ``checkpoint_last.pt`` was cut short by a full disk or
    a kill can be pointed at the newest good one.
    """
    where = f"{option}={path}" if option else str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: no such checkpoint")
    try:
        with open(path, "rb") as f, torch.serialization.safe_globals(list(CHECKPOINT_SAFE_CLASSES)):
            state = torch.load(f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, BadZipFile, ValueError) as e:
        others = intact_neighbours(path)
        hint = (f"; checkpoints beside it that look intact: {', '.join(others)} (resume from one with "
                f"checkpoint.restore_file=PATH, or move the damaged file away)") if others else ""
        raise ValueError(f"{where}: torch refuses to load it as a checkpoint of weights only "
                         f"(a truncated or corrupt file, or one holding arbitrary Python objects): "
                         f"{type(e).__name__}: {e}{hint}") from e
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{where}: not a fairseq checkpoint (no 'model' entry)")
    if arg_overrides and state.get("args") is not None:  # pre-hydra checkpoints, as fairseq handles them
        for name, value in arg_overrides.items():
            setattr(state["args"], name, value)
    if state.get("cfg") is not None:
        state["cfg"] = OmegaConf.create(state["cfg"], flags={"allow_objects": True})  # as fairseq does
        if arg_overrides:
            overwrite_args_by_name(state["cfg"], arg_overrides)
    try:
        return _upgrade_state_dict(state)
    except KeyError as e:  # what fairseq's upgrade needs of a checkpoint's layout is missing
        raise ValueError(f"{where}: not a fairseq checkpoint (missing {e})") from e


def intact_neighbours(path: str) -> List[str]:
    """The other ``*.pt`` files in ``path``'s folder whose zip directory reads (newest first).

    torch saves checkpoints as zip archives whose directory is at the end of the file, so a file cut short
    fails this check without being read in full; it does not prove the tensors inside are undamaged.
    """
    folder = os.path.dirname(os.path.abspath(path))
    found = []
    for name in os.listdir(folder):
        other = os.path.join(folder, name)
        if name.endswith(".pt") and os.path.abspath(other) != os.path.abspath(path) and os.path.isfile(other):
            try:
                with ZipFile(other):
                    found.append(other)
            except (BadZipFile, OSError):
                pass
    return sorted(found, key=os.path.getmtime, reverse=True)


def remember_in_run_config(cfg, key: str, value) -> None:
    """Set ``cfg.<key>`` where fairseq's checkpoints will see it.

    fairseq builds a model from a merged *copy* of the run's ``cfg.model`` (``merge_with_parent``)
    but saves the run's config in checkpoints, so a value set only on ``cfg`` is lost. The copy's
    parent is the run's config; set the value on its ``model`` node too.
    """
    if OmegaConf.is_config(cfg):
        with open_dict(cfg):
            cfg[key] = value
    else:
        setattr(cfg, key, value)
    parent = cfg._get_parent() if OmegaConf.is_config(cfg) else None
    run_cfg = parent.get("model") if parent is not None else None
    if run_cfg is not None and run_cfg is not cfg and run_cfg.get("_name") == cfg.get("_name"):
        with open_dict(run_cfg):
            run_cfg[key] = value


def pretrained_config(cfg, expected: Union[str, Sequence[str]],
                      option: str = "model.model_path") -> Tuple[Optional[dict], dict]:
    """``(checkpoint or None, pre-training model config)`` for a fine-tuning model's ``cfg``.

    ``cfg`` has ``model_path``, ``no_pretrained_weights`` and ``pretrained_model_cfg``; ``expected`` is
    the pre-training model name(s) accepted (``"data2vec_text"``). The checkpoint (:func:`load_checkpoint`'s
    dict) is returned when its weights are to be loaded: on the first build, unless
    ``no_pretrained_weights``. The config is a plain dict with ``_name``.
    """
    if cfg.pretrained_model_cfg is not None:  # a fine-tuned checkpoint: model_path may be long gone
        saved = cfg.pretrained_model_cfg
        return None, OmegaConf.to_container(saved, resolve=True) if OmegaConf.is_config(saved) else dict(saved)
    expected = [expected] if isinstance(expected, str) else list(expected)
    path = cfg.model_path
    state = load_checkpoint(path, option)
    model_cfg = state["cfg"].get("model") if state.get("cfg") is not None else None
    if model_cfg is None:
        raise ValueError(f"{option}={path}: the checkpoint has no model config (cfg.model)")
    name = model_cfg.get("_name")
    if name not in expected:
        raise ValueError(f"{option}={path}: expected a {' or '.join(expected)} pre-training checkpoint, "
                         f"found model {name!r}")
    pretrained = OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True)
    remember_in_run_config(cfg, "pretrained_model_cfg", pretrained)
    return (None if cfg.no_pretrained_weights else state), pretrained


def config_from_pretrained(dataclass_type: type, pretrained: dict, ignore: Sequence[str] = ()) -> DictConfig:
    """``dataclass_type``'s structured config with the pre-training values (``_name`` and ``ignore`` left out).

    Unknown keys fail (OmegaConf's struct mode): an option this code lacks may change the architecture.
    """
    values = {k: v for k, v in pretrained.items() if k != "_name" and k not in ignore}
    return OmegaConf.merge(OmegaConf.structured(dataclass_type), values)


def dictionary_digest(dictionary: Any) -> str:
    """sha256 (hex) of a fairseq ``Dictionary``'s symbols (or a list of symbols) in index order, joined by
    newlines.

    Two dictionaries give the same digest iff they map every token id to the same symbol (counts are
    ignored), so token ids binarized with one mean the same with the other.
    """
    symbols = getattr(dictionary, "symbols", dictionary)
    return hashlib.sha256("\n".join(symbols).encode("utf-8")).hexdigest()
