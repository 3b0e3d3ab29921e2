"""Hugging Face transformers export and import (``d2v-export-hf``, ``d2v-import-hf``).

``export_to_hf(CKPT, OUT_DIR)``: a pre-training or fine-tuning checkpoint of one of our models → a directory
that transformers' ``from_pretrained`` loads offline (safetensors weights, config, and the processor or
tokenizer a user needs). ``import_from_hf(HF_DIR, OUT_PT)``: an HF data2vec model directory → a fairseq
pre-training checkpoint that our fine-tuning recipes take as ``model.w2v_path`` / ``model.model_path``.

One module per modality holds its key map and config conversion (``audio.py``, ``text.py``, ``image.py``);
``common.py`` the rest. transformers is imported only when a conversion runs: it is an optional extra.
"""

import importlib
from pathlib import Path

from d2v_plugin.hf.common import HFConversionError, read_checkpoint

# our registered model name -> modality module
MODALITY_OF_MODEL = {
    "data2vec_audio": "audio", "data2vec_audio_ctc": "audio", "data2vec_audio_classification": "audio",
    "data2vec_text": "text", "data2vec_text_classification": "text",
    "data2vec_image": "image", "data2vec_image_classification": "image",
}
# HF config.model_type -> modality module
MODALITY_OF_HF_TYPE = {"data2vec-audio": "audio", "data2vec-text": "text", "data2vec-vision": "image"}


def _modality(name: str):
    return importlib.import_module(f"d2v_plugin.hf.{name}")


# options of export_to_hf that only one modality reads (text: where its tokenizer files are)
TEXT_ONLY_OPTIONS = ("spm_model", "dictionary", "label_dictionary")


def export_to_hf(checkpoint, out_dir, **text_files) -> Path:
    """Export ``checkpoint`` (ours) to the HF model directory ``out_dir``; returns ``out_dir``.

    ``text_files``: ``spm_model=``, ``dictionary=``, ``label_dictionary=`` paths for a text checkpoint whose
    data-bin (``cfg.task.data``) is not where it was during training (see :func:`d2v_plugin.hf.text.export`).
    """
    cfg, state, name = read_checkpoint(checkpoint)
    if name not in MODALITY_OF_MODEL:
        raise HFConversionError(f"{checkpoint}: model {name!r} has no Hugging Face export "
                                f"(supported: {', '.join(sorted(MODALITY_OF_MODEL))})")
    modality = MODALITY_OF_MODEL[name]
    given = {k: v for k, v in text_files.items() if v is not None}
    unknown = set(given) - set(TEXT_ONLY_OPTIONS)
    if unknown or (given and modality != "text"):
        raise HFConversionError(f"{', '.join(sorted(unknown or given))}: only for text checkpoints "
                                f"({checkpoint} holds {name})")
    return _modality(modality).export(cfg, state, Path(out_dir), Path(checkpoint), **given)


def import_from_hf(hf_dir, out_path) -> Path:
    """Convert the HF data2vec model in ``hf_dir`` to our fairseq checkpoint ``out_path``; returns it."""
    import json

    config_file = Path(hf_dir) / "config.json"
    if not config_file.is_file():
        raise HFConversionError(f"{hf_dir}: no config.json (not a Hugging Face model directory)")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in MODALITY_OF_HF_TYPE:
        raise HFConversionError(f"{config_file}: model_type {model_type!r} is not a data2vec model "
                                f"(supported: {', '.join(sorted(MODALITY_OF_HF_TYPE))})")
    return _modality(MODALITY_OF_HF_TYPE[model_type]).import_(Path(hf_dir), Path(out_path))
