"""Images: ``data2vec_image`` / ``data2vec_image_classification`` <-> transformers' Data2VecVision.

Export (``d2v-export-hf CKPT OUT_DIR``):

* a ``data2vec_image`` pre-training checkpoint -> ``Data2VecVisionModel``: the student (patch embedding,
  [CLS], mask embedding as HF's ``mask_token``, blocks, shared relative position bias, final layer norm as
  HF's ``layernorm`` with ``use_mean_pooling=False``), so ``last_hidden_state`` is what our student's
  ``extract_features`` returns. The EMA teacher and the regression head (``final_proj``) stay behind.
  Fine-tuning it in transformers the way our recipe does (mean of the patches, then a layer norm) means
  loading it with ``use_mean_pooling=True`` (its final ``layernorm`` is then unused, as ours is);
* a ``data2vec_image_classification`` checkpoint -> ``Data2VecVisionForImageClassification`` with
  ``use_mean_pooling=True``: our head's layer norm is HF's pooler norm, its linear layer the classifier;
  ``id2label`` from the task's ``labels.txt`` when it is still there.

Beside the weights: a ``BeitImageProcessor`` that does what our evaluation transform does (shorter side to
``size / eval_crop_ratio`` with PIL bicubic, centre crop, /255, the task's mean and std). transformers picks
its torchvision backend when torchvision is installed, which resamples differently: load it with
``backend="pil"`` for pixels equal to ours. One more difference: for non-square images HF truncates the
longer side's new length where we round it, so it can be one pixel shorter (a half-pixel shift of the crop).

Decisions, all exact for inference:

* fairseq's attention has a key bias, HF's none: it adds ``q . b_k`` to every logit of a query, which softmax
  ignores, so it is dropped on export and zero on import;
* data2vec 2.0 (``model.data2vec_version=2``) maps only with pre-LN blocks (``model.layer_norm_first=true``):
  its fixed sin-cos positions go into HF's learned absolute position embeddings ([CLS] row zero), the fused
  qkv is split, prenet blocks come first. The paper's post-LN blocks (with a layer norm on the embeddings)
  and a 2.0 classifier (whose encoder norms before the mean pooling) have no Data2VecVision equivalent.

Import (``d2v-import-hf HF_DIR OUT.pt``): the encoder of a Data2VecVisionModel or ...ForImageClassification
directory -> a ``data2vec_image`` (version 1) pre-training checkpoint for ``model.model_path``. The EMA
teacher starts as a copy of the student (what it is at update 0); the regression head is freshly initialised,
and so are the mask embedding (without HF's ``mask_token``) and the encoder's final layer norm (ones and
zeros: with ``use_mean_pooling=True`` HF has none); fine-tuning drops all of these. Masking and target options
(pre-training only, absent from HF's config) get the paper's proportions.
"""

import logging
import os
import re
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from omegaconf import OmegaConf

from d2v_plugin.hf.common import (HFConversionError, invert_key_map, plain_config, refused_on_import, rename,
                                  unsupported, write_checkpoint, write_hf_dir)

logger = logging.getLogger(__name__)

# -- key maps: (our key regex, HF key) ----------------------------------------------------------------
# data2vec_image (version 1) student -> Data2VecVisionModel.
ENCODER_KEY_MAP = (
    (r"patch_embed\.(weight|bias)", r"embeddings.patch_embeddings.projection.\1"),
    (r"cls_emb", r"embeddings.cls_token"),
    (r"mask_emb", r"embeddings.mask_token"),
    (r"encoder\.rel_pos_bias\.table", r"encoder.relative_position_bias.relative_position_bias_table"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"encoder.layer.\1.layernorm_before.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", r"encoder.layer.\1.attention.attention.query.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn\.k_proj\.weight", r"encoder.layer.\1.attention.attention.key.weight"),
    (r"encoder\.layers\.(\d+)\.self_attn\.v_proj\.(weight|bias)", r"encoder.layer.\1.attention.attention.value.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"encoder.layer.\1.attention.output.dense.\2"),
    (r"encoder\.layers\.(\d+)\.attn_layer_scale", r"encoder.layer.\1.lambda_1"),
    (r"encoder\.layers\.(\d+)\.ffn_layer_scale", r"encoder.layer.\1.lambda_2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layer.\1.layernorm_after.\2"),
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", r"encoder.layer.\1.intermediate.dense.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", r"encoder.layer.\1.output.dense.\2"),
    (r"encoder\.layer_norm\.(weight|bias)", r"layernorm.\1"),
)
# data2vec_image_classification's head -> Data2VecVisionForImageClassification's (backbone: "backbone." +
# ENCODER_KEY_MAP -> "data2vec_vision." + HF key).
HEAD_KEY_MAP = (
    (r"classification_heads\.sentence_classification_head\.norm\.(weight|bias)",
     r"data2vec_vision.pooler.layernorm.\1"),
    (r"classification_heads\.sentence_classification_head\.proj\.(weight|bias)", r"classifier.\1"),
)
# data2vec 2.0 student (pre-LN), after _v2_as_layers (prenet and blocks numbered as one stack "layers",
# fused qkv split into q/k/v, [CLS] row added to the positions) -> Data2VecVisionModel.
V2_KEY_MAP = (
    (r"patch_embed\.(weight|bias)", r"embeddings.patch_embeddings.projection.\1"),
    (r"extra_tokens", r"embeddings.cls_token"),
    (r"positions", r"embeddings.position_embeddings"),
    (r"encoder\.layers\.(\d+)\.norm1\.(weight|bias)", r"encoder.layer.\1.layernorm_before.\2"),
    (r"encoder\.layers\.(\d+)\.attn\.q\.(weight|bias)", r"encoder.layer.\1.attention.attention.query.\2"),
    (r"encoder\.layers\.(\d+)\.attn\.k\.weight", r"encoder.layer.\1.attention.attention.key.weight"),
    (r"encoder\.layers\.(\d+)\.attn\.v\.(weight|bias)", r"encoder.layer.\1.attention.attention.value.\2"),
    (r"encoder\.layers\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layer.\1.attention.output.dense.\2"),
    (r"encoder\.layers\.(\d+)\.norm2\.(weight|bias)", r"encoder.layer.\1.layernorm_after.\2"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc1\.(weight|bias)", r"encoder.layer.\1.intermediate.dense.\2"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc2\.(weight|bias)", r"encoder.layer.\1.output.dense.\2"),
    (r"encoder\.norm\.(weight|bias)", r"layernorm.\1"),
)
# Left behind on export: the teacher, the regression head (and 2.0's decoder), and the key biases.
DROP_V1 = (r"ema_teacher\..*", r"final_proj\..*", r"encoder\.layers\.\d+\.self_attn\.k_proj\.bias")
DROP_V2 = (r"ema_teacher\..*", r"final_proj\..*", r"decoder\..*", r"encoder\.layers\.\d+\.attn\.k\.bias")
# Parts of our pre-training model an HF encoder may lack: freshly initialised on import.
FRESH_ON_IMPORT = (r"final_proj\..*", r"mask_emb", r"encoder\.layer_norm\..*", r"encoder\.rel_pos_bias\.table")


# -- config: ours -> HF ------------------------------------------------------------------------------
def hf_config_kwargs(model_cfg: dict, classification: bool = False, mask_token: bool = False,
                     drop_path: Optional[float] = None) -> dict:
    """``Data2VecVisionConfig`` arguments for our ``data2vec_image`` options ``model_cfg`` (a plain dict, as
    saved in a checkpoint). ``classification``: the encoder of a fine-tuned classifier (mean pooling).

    Raises :func:`unsupported` for what Data2VecVision cannot express (see the module docstring).
    """
    version = model_cfg.get("data2vec_version", 1)
    dim, depth = model_cfg["embed_dim"], model_cfg["depth"]
    shared = dict(image_size=model_cfg["image_size"], patch_size=model_cfg["patch_size"],
                  num_channels=model_cfg["in_channels"], hidden_size=dim, num_attention_heads=model_cfg["num_heads"],
                  intermediate_size=int(dim * model_cfg["mlp_ratio"]), hidden_act="gelu",
                  attention_probs_dropout_prob=model_cfg["attention_dropout"], use_relative_position_bias=False)
    if version == 1:
        return dict(shared, num_hidden_layers=depth, layer_norm_eps=model_cfg["layer_norm_eps"],
                    layer_scale_init_value=model_cfg["layer_scale_init_value"],
                    drop_path_rate=model_cfg["drop_path"] if drop_path is None else drop_path,
                    hidden_dropout_prob=0.0,  # version 1 has no dropout outside the attention
                    use_absolute_position_embeddings=False, use_shared_relative_position_bias=True,
                    use_mean_pooling=classification, use_mask_token=mask_token)
    if version != 2:
        raise unsupported("model.data2vec_version", version, "only data2vec 1.0 and 2.0 models exist")
    if not model_cfg.get("layer_norm_first", False):
        raise unsupported("model.data2vec_version", 2, "data2vec 2.0 image blocks are post-LN "
                          "(model.layer_norm_first=false) behind a layer norm on the embeddings; Data2VecVision's "
                          "blocks are pre-LN and it has no embedding norm")
    if classification:
        raise unsupported("model.data2vec_version", 2, "a data2vec 2.0 (pre-LN) classifier layer-norms the encoder "
                          "output before mean pooling; Data2VecVision's mean pooling has no norm before it")
    return dict(shared, num_hidden_layers=model_cfg.get("prenet_depth", 0) + depth,
                layer_norm_eps=model_cfg["norm_eps"], layer_scale_init_value=0.0, drop_path_rate=0.0,
                hidden_dropout_prob=model_cfg.get("encoder_dropout", 0.0),  # training only
                use_absolute_position_embeddings=True, use_shared_relative_position_bias=False,
                use_mean_pooling=False, use_mask_token=False)


def _v2_as_layers(state: Dict[str, torch.Tensor], prenet_depth: int) -> Dict[str, torch.Tensor]:
    """A data2vec 2.0 student state with the names :data:`V2_KEY_MAP` knows: ``encoder.prenet.i`` and
    ``encoder.blocks.j`` become ``encoder.layers.i`` / ``encoder.layers.(prenet_depth + j)`` (one stack, as HF
    has), the fused ``attn.qkv`` is split into ``attn.q/k/v``, and the fixed positions get a zero [CLS] row
    (ours add positions to the patches only; HF adds them to [CLS] too)."""
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"encoder\.(prenet|blocks)\.(\d+)\.(.+)", key)
        if key == "positions":
            value = torch.cat([value.new_zeros(1, 1, value.size(-1)), value], dim=1)
        elif m:
            layer = int(m.group(2)) + (prenet_depth if m.group(1) == "blocks" else 0)
            key = f"encoder.layers.{layer}.{m.group(3)}"
            fused = re.fullmatch(r"(.+\.attn\.)qkv\.(weight|bias)", key)
            if fused:
                for proj, part in zip("qkv", value.chunk(3, dim=0)):
                    out[f"{fused.group(1)}{proj}.{fused.group(2)}"] = part
                continue
        out[key] = value
    return out


def _labels(cfg, num_labels: int) -> Optional[list]:
    """The class names of the fine-tuning task (its ``labels.txt``), if still readable and as many as the
    classifier's outputs."""
    data = (cfg.get("task") or {}).get("data")
    path = os.path.join(str(data), "labels.txt") if data else None
    if not path or not os.path.isfile(path):
        return None
    from d2v_plugin.image.dataset import read_labels

    names = read_labels(str(data))
    return names if len(names) == num_labels else None


def image_processor(cfg, image_size: int):
    """A ``BeitImageProcessor`` (PIL backend) doing our evaluation transform for ``cfg.task`` (defaults:
    :class:`~d2v_plugin.image.task.ImagePretrainingConfig`'s when the checkpoint has no image task)."""
    from transformers import BeitImageProcessorPil
    from transformers.image_utils import PILImageResampling

    from d2v_plugin.image.task import ImagePretrainingConfig

    defaults = ImagePretrainingConfig()
    task = cfg.get("task") or {}
    crop_ratio = task.get("eval_crop_ratio", defaults.eval_crop_ratio)
    short = max(image_size, int(round(image_size / crop_ratio)))  # as EvalTransform
    return BeitImageProcessorPil(
        do_resize=True, size={"shortest_edge": short}, resample=PILImageResampling.BICUBIC,
        do_center_crop=True, crop_size={"height": image_size, "width": image_size},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True,
        image_mean=list(task.get("normalization_mean", defaults.normalization_mean)),
        image_std=list(task.get("normalization_std", defaults.normalization_std)), do_reduce_labels=False)


def _pretraining_export(cfg, state) -> Tuple[dict, Dict[str, torch.Tensor], dict]:
    """(HF config kwargs, HF weights, our model options) of a ``data2vec_image`` checkpoint."""
    model_cfg = plain_config(cfg.model)
    kwargs = hf_config_kwargs(model_cfg, mask_token="mask_emb" in state)
    if model_cfg.get("data2vec_version", 1) == 2:
        weights = rename(_v2_as_layers(state, model_cfg.get("prenet_depth", 0)), V2_KEY_MAP,
                         "data2vec_image (2.0) checkpoint", drop=DROP_V2)
    else:
        weights = rename(state, ENCODER_KEY_MAP, "data2vec_image checkpoint", drop=DROP_V1)
    return kwargs, weights, model_cfg


def _classification_export(cfg, state) -> Tuple[dict, Dict[str, torch.Tensor], dict]:
    """(HF config kwargs, HF weights, encoder options) of a ``data2vec_image_classification`` checkpoint."""
    if cfg.model.get("pretrained_model_cfg") is None:
        raise HFConversionError("model.pretrained_model_cfg is empty: the checkpoint does not say which encoder "
                                "it fine-tunes (re-save it with this plugin)")
    model_cfg = plain_config(cfg.model.pretrained_model_cfg)
    kwargs = hf_config_kwargs(model_cfg, classification=True, drop_path=cfg.model.get("drop_path"))
    key_map = tuple((r"backbone\." + ours, "data2vec_vision." + hf) for ours, hf in ENCODER_KEY_MAP) + HEAD_KEY_MAP
    drop = tuple(r"backbone\." + d for d in DROP_V1)
    weights = rename(state, key_map, "data2vec_image_classification checkpoint", drop=drop)
    num_labels = weights["classifier.weight"].size(0)
    kwargs["num_labels"] = num_labels
    labels = _labels(cfg, num_labels)
    if labels is not None:
        kwargs["id2label"] = dict(enumerate(labels))
        kwargs["label2id"] = {name: i for i, name in enumerate(labels)}
    return kwargs, weights, model_cfg


def export(cfg, state: Dict[str, torch.Tensor], out_dir: Path, checkpoint_path: Path) -> Path:
    """Write the HF model directory for our image checkpoint (see the module docstring); returns ``out_dir``.

    The HF model is built and loaded with ``strict=True`` before anything is written, so a weight missing on
    either side fails the export instead of leaving a randomly initialised parameter.
    """
    from transformers import Data2VecVisionConfig, Data2VecVisionForImageClassification, Data2VecVisionModel

    if cfg.model._name == "data2vec_image_classification":
        kwargs, weights, model_cfg = _classification_export(cfg, state)
        model_class = Data2VecVisionForImageClassification
    else:
        kwargs, weights, model_cfg = _pretraining_export(cfg, state)
        model_class = Data2VecVisionModel
    model = model_class(Data2VecVisionConfig(**kwargs))
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    processor = image_processor(cfg, model_cfg["image_size"])

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)

    logger.info(f"{checkpoint_path}: exported as {model_class.__name__} (the EMA teacher and the regression head "
                f"are not exported)")
    return write_hf_dir(out_dir, save)


# -- import: HF -> ours --------------------------------------------------------------------------------
def model_options(config) -> dict:
    """Our ``data2vec_image`` (version 1) options for an HF ``Data2VecVisionConfig``; raises
    :func:`~d2v_plugin.hf.common.refused_on_import` naming the HF option our ViT cannot express."""
    image_size, patch_size = config.image_size, config.patch_size
    for name, value in (("image_size", image_size), ("patch_size", patch_size)):
        if isinstance(value, (list, tuple)):
            if len(set(value)) != 1:
                raise refused_on_import("data2vec_image", name, list(value), "it takes square images and patches")
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    patch_size = patch_size[0] if isinstance(patch_size, (list, tuple)) else patch_size
    checks = (
        ("use_absolute_position_embeddings", config.use_absolute_position_embeddings, False,
         "data2vec_image (1.0) has no absolute position embeddings"),
        ("use_relative_position_bias", config.use_relative_position_bias, False,
         "data2vec_image has one relative position bias shared by all blocks, not one per block"),
        ("hidden_act", config.hidden_act, "gelu", "data2vec_image's MLP activation is GELU"),
        ("hidden_dropout_prob", config.hidden_dropout_prob, 0.0,
         "data2vec_image (1.0) has no dropout on the embeddings or the residual branches"),
        ("image_size % patch_size", image_size % patch_size, 0, "the patch grid must cover the image exactly"),
    )
    for name, value, supported, why in checks:
        if value != supported:
            raise refused_on_import("data2vec_image", name, value, why)
    if config.hidden_size % config.num_attention_heads:
        raise refused_on_import("data2vec_image", "num_attention_heads", config.num_attention_heads,
                          f"hidden_size={config.hidden_size} is not a multiple of it")
    mlp_ratio = config.intermediate_size / config.hidden_size
    if int(config.hidden_size * mlp_ratio) != config.intermediate_size:
        raise refused_on_import("data2vec_image", "intermediate_size", config.intermediate_size,
                          "not int(hidden_size * r) for any float r: data2vec_image sizes its MLP by a ratio")
    # Masking and targets are pre-training only and HF does not say them: the paper's shares (120 of 196
    # patches masked, the top 6 of 12 blocks averaged), so that a small model still passes our config checks.
    num_mask = max(1, round((image_size // patch_size) ** 2 * 120 / 196))
    return dict(data2vec_version=1, image_size=image_size, patch_size=patch_size, in_channels=config.num_channels,
                num_mask_patches=num_mask, min_mask_patches_per_block=min(16, num_mask),
                average_top_k_layers=max(1, config.num_hidden_layers // 2),
                embed_dim=config.hidden_size, depth=config.num_hidden_layers, num_heads=config.num_attention_heads,
                mlp_ratio=mlp_ratio, layer_scale_init_value=float(config.layer_scale_init_value),
                drop_path=float(config.drop_path_rate), attention_dropout=float(config.attention_probs_dropout_prob),
                layer_norm_eps=float(config.layer_norm_eps))


def full_model_config(options: dict) -> dict:
    """Every ``data2vec_image`` option as a plain value (ours' defaults plus ``options``), as a checkpoint of a
    real run holds them: the fine-tuning loader rebuilds the encoder from this alone. The two options fairseq
    fills from the run (``seed`` = ``common.seed``, ``ema_anneal_end_step`` = ``optimization.max_update``)
    get fairseq's default seed 1 and 0 (no anneal: irrelevant to fine-tuning)."""
    from d2v_plugin.image.model import Data2VecImageConfig

    merged = OmegaConf.merge(OmegaConf.structured(Data2VecImageConfig),
                             {"seed": 1, "ema_anneal_end_step": 0, **options})
    return {**OmegaConf.to_container(merged, resolve=True, enum_to_str=True), "_name": "data2vec_image"}


def task_options(hf_dir: Path, image_size: int) -> dict:
    """Our ``image_pretraining`` task options from the directory's image processor, where it says them
    (mean/std; ``eval_crop_ratio`` from a shortest-edge resize + centre crop); else our defaults."""
    import json

    task = {"_name": "image_pretraining", "input_size": image_size}
    file = hf_dir / "preprocessor_config.json"
    if not file.is_file():
        return task
    pre = json.loads(file.read_text())
    if pre.get("do_normalize", True) and "image_mean" in pre and "image_std" in pre:
        task.update(normalization_mean=list(pre["image_mean"]), normalization_std=list(pre["image_std"]))
    short, crop = (pre.get("size") or {}).get("shortest_edge"), pre.get("crop_size") or {}
    if short and pre.get("do_center_crop") and crop.get("height") == crop.get("width") == image_size:
        task["eval_crop_ratio"] = image_size / short
    else:
        logger.warning(f"{file}: not a shortest-edge resize + centre crop; task.eval_crop_ratio keeps our default")
    return task


def _hf_encoder_state(hf_dir: Path, config) -> Dict[str, torch.Tensor]:
    """The Data2VecVisionModel weights in ``hf_dir`` (of a base model or an ...ForImageClassification one)."""
    from transformers import Data2VecVisionModel

    model, info = Data2VecVisionModel.from_pretrained(str(hf_dir), config=config, output_loading_info=True)
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise HFConversionError(f"{hf_dir}: the weights lack {len(missing)} encoder parameter(s): "
                                f"{', '.join(missing[:8])}; nothing was written")
    return model.state_dict()


def import_(hf_dir: Path, out_path: Path) -> Path:
    """Convert the HF data2vec-vision model in ``hf_dir`` into our ``data2vec_image`` checkpoint ``out_path``.

    Our model is built from the converted config and loads the complete state dict with ``strict=True`` before
    the checkpoint is written (proof that every parameter has a value).
    """
    from transformers import AutoConfig

    from d2v_plugin.core.finetune import config_from_pretrained
    from d2v_plugin.image.model import Data2VecImageConfig, Data2VecImageModel

    config = AutoConfig.from_pretrained(str(hf_dir))
    model_cfg = full_model_config(model_options(config))
    hf_state = _hf_encoder_state(hf_dir, config)
    student = rename(hf_state, invert_key_map(ENCODER_KEY_MAP), f"{hf_dir} (Data2VecVisionModel)")
    with torch.random.fork_rng(devices=[]):  # fresh parts are reproducible; the global generator is left alone
        torch.manual_seed(model_cfg["seed"])
        model = Data2VecImageModel.build_model(config_from_pretrained(Data2VecImageConfig, model_cfg))
    ours = model.state_dict()
    for name, tensor in model.encoder.state_dict().items():
        if name.endswith("self_attn.k_proj.bias"):
            student[f"encoder.{name}"] = torch.zeros_like(tensor)
    fresh = [k for k in ours if k not in student and not k.startswith("ema_teacher.")]
    unexpected = [k for k in fresh if not any(re.fullmatch(p, k) for p in FRESH_ON_IMPORT)]
    if unexpected:
        raise HFConversionError(f"{hf_dir}: no HF weight for {', '.join(unexpected[:8])}; nothing was written")
    state = {**{k: ours[k] for k in fresh}, **student}
    for name in model.ema_teacher.model.state_dict():
        state[f"ema_teacher.model.{name}"] = state[f"encoder.{name}"].detach().clone().float()
    state["ema_teacher.num_updates"] = torch.zeros((), dtype=torch.long)
    model.load_state_dict(state, strict=True)
    head = any("ForImageClassification" in a for a in config.architectures or ())
    logger.info(f"{hf_dir}: imported the encoder{' (not the classification head)' if head else ''}; freshly "
                f"initialised: {', '.join(fresh) or 'nothing'}; the EMA teacher is a copy of the student")
    checkpoint = {
        "cfg": {"model": model_cfg, "task": task_options(hf_dir, model_cfg["image_size"]), "common": {"seed": 1}},
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "args": None,
        "optimizer_history": [{"criterion_name": "data2vec", "optimizer_name": "none", "lr_scheduler_state": {},
                               "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1}, "converted_from": str(hf_dir)},
        "last_optimizer_state": None,
    }
    return write_checkpoint(checkpoint, out_path)
