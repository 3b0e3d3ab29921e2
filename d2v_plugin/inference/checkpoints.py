"""Any checkpoint ``d2v-extract`` / ``d2v-transcribe`` accept -> a model ready for inference.

Supported (``cfg.model._name`` as saved):

* ours: ``data2vec_audio``, ``data2vec_text``, ``data2vec_image`` (``data2vec_version`` 1 or 2), and the
  fine-tuned ``data2vec_audio_ctc``, ``data2vec_text_classification``, ``data2vec_image_classification``
  (their encoder is what is extracted);
* fairseq's reference: its data2vec 1.0 ``data2vec_audio`` / ``data2vec_text`` (the names are ours too:
  their configs load as they are, their ``_ema`` teacher through the models' state-dict upgrades),
  ``data2vec_vision`` (config mapped by :func:`vision_config`, weights by the image model's key map), and
  data2vec 2.0 ``data2vec_multi`` (config by each modality's ``config_from_data2vec_multi``, weights by
  :mod:`d2v_plugin.compat.data2vec_multi`).

Loading is :func:`d2v_plugin.core.finetune.load_checkpoint` (``torch.load(weights_only=True)``, then fairseq's
upgrade); the model is built with fairseq's ``build_model`` from the checkpoint's own config and a small
stand-in task carrying only what ``build_model`` reads (a dictionary, a class count), so neither the training
data folder nor a pre-training checkpoint has to exist. Weights load with ``strict=True``; only classification
heads of text models are left out (never extracted; fairseq's task registers them, not the model).
"""

import os
from dataclasses import dataclass
from importlib import import_module
from types import SimpleNamespace
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from fairseq import models as fairseq_models
from fairseq import utils as fairseq_utils
from fairseq.data import Dictionary

import d2v_plugin  # noqa: F401  (registers our models)
from d2v_plugin.core.finetune import dictionary_digest, load_checkpoint

MODALITY = {
    "data2vec_audio": "audio", "data2vec_audio_ctc": "audio",
    "data2vec_text": "text", "data2vec_text_classification": "text",
    "data2vec_image": "image", "data2vec_image_classification": "image",
}
REFERENCE_V2 = {"AUDIO": "audio", "TEXT": "text", "IMAGE": "image"}  # data2vec_multi supported_modality
CLASSIFICATION_HEAD = "classification_heads."


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here; the message names the file and the option at fault."""


@dataclass
class LoadedModel:
    """A checkpoint's model in eval mode, and what its inputs need.

    Attributes:
        path: the checkpoint file.
        name: ``cfg.model._name`` as saved (``data2vec_vision``, ``data2vec_multi``: fairseq's reference).
        modality: ``audio``, ``text`` or ``image``.
        model: the whole model.
        encoder: the data2vec encoder extracted from: a ``data2vec_audio`` / ``data2vec_image`` model (1.0 or
            2.0), or a text encoder (``Data2VecTextEncoder`` / ``Data2Vec2TextEncoder``). It has
            ``extract_features``, ``teacher_top_k_blocks`` and the pre-training ``cfg`` (targets' options).
        task_cfg: the checkpoint's task config: sample rate / normalisation, image size and normalisation,
            where the text data-bin was.
        dictionary: text: the source dictionary (``dict.txt`` + ``<mask>``); CTC: the letter dictionary.
        spm: text: the SentencePiece processor the data-bin was encoded with.
    """

    path: str
    name: str
    modality: str
    model: nn.Module
    encoder: nn.Module
    task_cfg: DictConfig
    dictionary: Optional[Dictionary] = None
    spm: Optional[object] = None

    @property
    def version(self) -> int:
        return int(self.encoder.cfg.get("data2vec_version", 1))

    @property
    def is_ctc(self) -> bool:
        return self.name == "data2vec_audio_ctc"


def load_model(path: str, *, spm_model: Optional[str] = None, dictionary: Optional[str] = None,
               device: str = "cpu") -> LoadedModel:
    """Load ``path`` (see module docstring) onto ``device``, in eval mode.

    ``spm_model`` / ``dictionary``: text checkpoints' ``spm.model`` and ``dict.txt``, when they are no longer
    in the data-bin the checkpoint was trained on (``cfg.task.data``); CTC checkpoints: a ``dict.ltr.txt`` when
    the checkpoint's task state holds none.
    """
    state = load_checkpoint(str(path), option="CKPT")
    cfg = state.get("cfg")
    if cfg is None or cfg.get("model") is None:
        raise CheckpointError(f"{path}: no hydra config (cfg.model); re-save it with fairseq 0.12")
    model_cfg, modality = model_config(cfg.model, str(path))
    task_cfg = cfg.get("task") or OmegaConf.create({})
    task, weights = stand_in_task(state, model_cfg, task_cfg, str(path), spm_model, dictionary)
    model = fairseq_models.build_model(model_cfg, task, from_checkpoint=True)
    try:
        model.load_state_dict(weights, strict=True, model_cfg=model_cfg)
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path}: its weights do not fit the model its config describes: {e}") from e
    model.to(device).eval()
    return LoadedModel(str(path), cfg.model.get("_name"), modality, model, encoder_of(model, model_cfg._name),
                       task_cfg, getattr(task, "target_dictionary", getattr(task, "source_dictionary", None)),
                       getattr(task, "spm", None))


def stand_in_task(state: dict, model_cfg, task_cfg, path: str, spm_model: Optional[str], dictionary: Optional[str]):
    """``(task, weights)``: what the model's ``build_model`` reads of its task (text: ``source_dictionary``, and
    the ``spm`` processor for the inputs; CTC: ``target_dictionary``; image classification: ``num_classes``), and
    the state to load (text: without classification heads)."""
    task, weights, name = SimpleNamespace(cfg=SimpleNamespace()), dict(state["model"]), model_cfg._name
    if name in ("data2vec_text", "data2vec_text_classification"):
        task.spm, task.source_dictionary = text_pipeline(task_cfg, path, name.endswith("classification"),
                                                         spm_model, dictionary)
        check_text_dictionary(model_cfg, weights, task.source_dictionary, path)
        weights = {k: v for k, v in weights.items() if not k.startswith(CLASSIFICATION_HEAD)}
    elif name == "data2vec_audio_ctc":
        task.target_dictionary = ctc_dictionary(state, task_cfg, path, dictionary)
    elif name == "data2vec_image_classification":
        from d2v_plugin.image.classification import HEAD_NAME

        task.num_classes = weights[f"{CLASSIFICATION_HEAD}{HEAD_NAME}.proj.weight"].size(0)
    return task, weights


def model_config(saved: DictConfig, path: str):
    """``(our model config, modality)`` for the checkpoint's ``cfg.model`` (reference configs converted)."""
    name = saved.get("_name")
    if name in MODALITY:
        return saved, MODALITY[name]
    values = OmegaConf.to_container(saved, resolve=True, enum_to_str=True)
    if name == "data2vec_vision":
        return OmegaConf.create(vision_config(values, path)), "image"
    if name == "data2vec_multi":
        modality = REFERENCE_V2.get(str(values.get("supported_modality")))
        if modality is None:
            raise CheckpointError(f"{path}: data2vec_multi model.supported_modality="
                                  f"{values.get('supported_modality')!r}: expected AUDIO, TEXT or IMAGE")
        convert = import_module(f"d2v_plugin.{modality}.model_v2").config_from_data2vec_multi
        try:
            options = convert(values)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from e
        return OmegaConf.create({"_name": f"data2vec_{modality}", **options}), modality
    raise CheckpointError(f"{path}: model {name!r} is not supported (ours: {', '.join(sorted(MODALITY))}; "
                          f"fairseq's reference: data2vec_audio, data2vec_text, data2vec_vision, data2vec_multi)")


# fairseq data2vec_vision option -> the value ours needs to compute the same (checked, then dropped)
VISION_ONLY = {"shared_rel_pos_bias": True}


def vision_config(values: dict, path: str) -> dict:
    """Our ``data2vec_image`` options for fairseq's ``data2vec_vision`` config (a plain dict).

    Every other option has our name and meaning; the reference's LayerNorms use torch's default epsilon
    (1e-5, ours 1e-6 by default). An option ours lacks is refused by name.
    """
    from d2v_plugin.image.model import Data2VecImageConfig

    ours = {f for f in Data2VecImageConfig.__dataclass_fields__}
    options = {"_name": "data2vec_image", "layer_norm_eps": 1e-5}
    for key, value in values.items():
        if key == "_name":
            continue
        if key in VISION_ONLY:
            if value != VISION_ONLY[key]:
                raise CheckpointError(f"{path}: data2vec_vision option model.{key}={value!r} is not supported "
                                      f"(only {VISION_ONLY[key]!r})")
        elif key in ours:
            options[key] = value
        else:
            raise CheckpointError(f"{path}: data2vec_vision option model.{key} has no counterpart in "
                                  f"data2vec_image")
    return options


def encoder_of(model: nn.Module, name: str) -> nn.Module:
    """The data2vec encoder inside a model (see :class:`LoadedModel`)."""
    if name == "data2vec_audio_ctc":
        return model.w2v_encoder.w2v_model
    if name == "data2vec_image_classification":
        return model.backbone
    if MODALITY[name] == "text":
        return model.encoder
    return model


# -- text ---------------------------------------------------------------------------------------------------
def text_pipeline(task_cfg, path: str, classification: bool, spm_model: Optional[str], dictionary: Optional[str]):
    """``(SentencePiece processor, fairseq Dictionary)``: given, or the data-bin's ``spm.model`` and
    ``dict.txt`` (classification: ``input0/dict.txt``), with ``<mask>`` added as masked_lm and
    sentence_prediction add it."""
    import sentencepiece

    data = task_cfg.get("data")
    root = fairseq_utils.split_paths(data)[0] if isinstance(data, str) and data else None
    files = {}
    for option, given, default in (("--spm-model", spm_model, "spm.model"),
                                   ("--dictionary", dictionary, "input0/dict.txt" if classification else "dict.txt")):
        file = given or (os.path.join(root, default) if root else None)
        if file is None or not os.path.isfile(file):
            where = "given" if given else f"from the checkpoint's task.data={data!r}"
            raise CheckpointError(f"{option} {file}: no such file ({where}); a text checkpoint needs the "
                                  f"SentencePiece model and dict.txt its data-bin was encoded with")
        files[option] = file
    d = Dictionary.load(files["--dictionary"])
    d.add_symbol("<mask>")
    return sentencepiece.SentencePieceProcessor(model_file=files["--spm-model"]), d


def check_text_dictionary(model_cfg, weights: dict, d: Dictionary, path: str) -> None:
    """The dictionary must be the checkpoint's: as many symbols as embedding rows, and the same digest
    when the checkpoint stored one (ours do; fairseq's reference does not)."""
    rows = next((v.size(0) for k, v in weights.items() if k.endswith("embed_tokens.weight") and "ema" not in k), None)
    if rows is not None and rows != len(d):
        raise CheckpointError(f"{path}: the dictionary has {len(d)} symbols (with <mask>) but the checkpoint's "
                              f"embedding {rows} rows: pass the dict.txt it was trained with (--dictionary)")
    encoder_cfg = model_cfg.get("pretrained_model_cfg") or model_cfg
    digest = encoder_cfg.get("dictionary_digest")
    if digest is not None and digest != dictionary_digest(d):
        raise CheckpointError(f"{path}: the dictionary lists other symbols (or another order) than the one the "
                              f"checkpoint was trained with (model.dictionary_digest): pass its dict.txt "
                              f"(--dictionary)")


# -- CTC ----------------------------------------------------------------------------------------------------
def ctc_dictionary(state: dict, task_cfg, path: str, given: Optional[str]) -> Dictionary:
    """The letter dictionary of a CTC checkpoint: ``given``, its task state (``audio_ctc`` stores it), or the
    task's ``dict.<labels>.txt`` beside its manifests."""
    from d2v_plugin.audio.task import dictionary_from_plain

    plain = (state.get("task_state") or {}).get("target_dictionary")
    if given is None and isinstance(plain, dict):
        return dictionary_from_plain(plain)
    file = given or os.path.join(str(task_cfg.get("data")), f"dict.{task_cfg.get('labels', 'ltr')}.txt")
    if not os.path.isfile(file):
        raise CheckpointError(f"{path}: no letter dictionary in the checkpoint's task state and {file} does not "
                              f"exist: pass the dict.ltr.txt it was fine-tuned with (--dictionary)")
    return Dictionary.load(file)


def device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
