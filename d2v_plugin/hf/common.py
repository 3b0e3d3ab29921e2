"""What every modality's Hugging Face conversion shares: reading and writing checkpoints and directories.

* :func:`read_checkpoint` loads one of our fairseq checkpoints (``weights_only=True``, via
  :func:`d2v_plugin.core.finetune.load_checkpoint`) and says which model it holds;
* :func:`write_hf_dir` saves an HF model (safetensors) plus its processor/tokenizer files into a temporary
  folder beside ``OUT_DIR`` and renames it into place, so a failed export never leaves half a directory;
* :func:`write_checkpoint` writes a fairseq checkpoint atomically (temporary file, then ``os.replace``);
* :func:`unsupported` is the one error for "HF cannot express this option": it names the option and value.

Key maps are plain ``{our_key: hf_key}`` dicts per modality (``audio.py``, ``text.py``, ``image.py``),
in the style of torchtune's checkpoint converters; :func:`rename` applies one and refuses leftovers, so
nothing is half-converted.
"""

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterable, Mapping, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from d2v_plugin.core.finetune import load_checkpoint


class HFConversionError(ValueError):
    """A checkpoint or HF model that cannot be converted exactly; the message names the option at fault."""


def unsupported(option: str, value, why: str) -> HFConversionError:
    """``raise unsupported("model.extractor_mode", "default", "Data2VecAudio has only layer-norm convs")``."""
    return HFConversionError(f"{option}={value}: cannot be expressed by Hugging Face transformers ({why}); "
                             f"nothing was written")


def refused_on_import(model: str, option: str, value, why: str) -> HFConversionError:
    """The import's counterpart of :func:`unsupported`: an HF ``config.json`` option ``model`` (ours) lacks."""
    return HFConversionError(f"config.json {option}={value}: our {model} cannot express it ({why}); "
                             f"nothing was written")


def invert_key_map(key_map: Iterable[Tuple[str, str]]) -> Tuple[Tuple[str, str], ...]:
    """The ``(HF key regex, our key)`` map of an ``(our key regex, HF key)`` map, for the import.

    Our regexes' groups are ``(...)`` without nesting: the HF key's ``\\N`` become our regex's N-th group in
    the pattern, and our groups become ``\\1``, ``\\2``, ... in the replacement.
    """
    out = []
    for ours, hf in key_map:
        groups = re.findall(r"\([^()]*\)", ours)
        parts = re.split(r"\\(\d+)", hf)  # text, group number, text, ...
        pattern = "".join(groups[int(p) - 1] if i % 2 else re.escape(p) for i, p in enumerate(parts))
        texts = re.split(r"\([^()]*\)", ours)
        replacement = "".join(text.replace("\\", "") + (f"\\{i + 1}" if i < len(groups) else "")
                              for i, text in enumerate(texts))
        out.append((pattern, replacement))
    return tuple(out)


def read_checkpoint(path) -> Tuple[DictConfig, Dict[str, torch.Tensor], str]:
    """``(cfg, model state dict, model name)`` of a fairseq checkpoint, loaded with ``weights_only=True``."""
    state = load_checkpoint(str(path), option="CKPT")
    cfg = state.get("cfg")
    if cfg is None or cfg.get("model") is None:
        raise HFConversionError(f"{path}: a checkpoint without a hydra config (cfg.model); "
                                f"re-save it with fairseq 0.12")
    name = cfg.model.get("_name")
    return cfg, state["model"], name


def rename(state: Mapping[str, torch.Tensor], key_map: Iterable[Tuple[str, str]], source: str,
           drop: Iterable[str] = ()) -> Dict[str, torch.Tensor]:
    """Rename ``state`` with ``key_map``: ``(pattern, replacement)`` pairs of full-key regular expressions.

    Keys matching one of ``drop`` (regexes) are left out on purpose (the teacher, the regression head).
    Any other key that no pattern matches is an error naming it (``source`` says whose keys they are),
    so a model with a part the map does not know is refused instead of exported without it.
    """
    out, unknown = {}, []
    drop = [re.compile(d) for d in drop]
    compiled = [(re.compile(p), r) for p, r in key_map]
    for key, value in state.items():
        if any(d.fullmatch(key) for d in drop):
            continue
        for pattern, replacement in compiled:
            if pattern.fullmatch(key):
                out[pattern.sub(replacement, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise HFConversionError(f"{source}: no conversion for {len(unknown)} parameter(s): {', '.join(unknown[:8])}"
                                f"{' ...' if len(unknown) > 8 else ''}; nothing was written")
    return out


def write_hf_dir(out_dir, save: Callable[[Path], None]) -> Path:
    """Call ``save(tmp)`` (which writes the model and processor files) and move ``tmp`` to ``out_dir``.

    An existing ``out_dir`` is replaced only after the new one is complete.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save(tmp)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, old / "x")
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def write_checkpoint(state: dict, out_path) -> Path:
    """``torch.save(state)`` to a temporary file beside ``out_path``, then rename: never a truncated file."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out_path


def plain_config(cfg) -> dict:
    """An OmegaConf node as plain containers (what ``weights_only=True`` loading accepts)."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
