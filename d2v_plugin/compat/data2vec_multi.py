"""fairseq's data2vec 2.0 (``data2vec_multi``) checkpoints -> our ``data2vec_version: 2`` models.

Plain key maps, one per modality: a regular expression on the reference's parameter name and the name it
has here. The reference keeps its EMA teacher as a flat ``_ema`` dict named like its own parameters (or,
with ``ema_encoder_only``, like the entries of its block list); both are renamed with the same table, and
:class:`~d2v_plugin.core.teacher_student.TeacherStudentMixin` then places the teacher's share of ``_ema``.
"""

import re
from typing import Dict, List, Tuple

from torch import Tensor

# (reference name pattern, our name); the first pattern that matches wins. {m}: the modality's key.
_SHARED: List[Tuple[str, str]] = [
    (r"blocks\.(\d+)\.(.*)", r"encoder.blocks.\1.\2"),
    (r"norm\.(weight|bias)", r"encoder.norm.\1"),
    (r"modality_encoders\.{m}\.context_encoder\.norm\.(.*)", r"encoder.context_norm.\1"),
    (r"modality_encoders\.{m}\.context_encoder\.blocks\.(\d+)\.(.*)", r"encoder.prenet.\1.\2"),
    (r"modality_encoders\.{m}\.alibi_scale", r"encoder.alibi.scale"),
    (r"modality_encoders\.{m}\.decoder\.blocks\.(\d+)\.0\.(.*)", r"decoder.convs.\1.\2"),
    (r"modality_encoders\.{m}\.decoder\.proj\.(.*)", r"final_proj.\1"),  # proj.weight or proj.N.weight
]

KEY_MAPS: Dict[str, List[Tuple[str, str]]] = {
    # data2vec_text v2 (d2v_plugin/text/model_v2.py): the encoder's names (the model adds "encoder.");
    # local_encoder.{embed_tokens, embed_positions, layernorm_embedding} keep the reference's names
    "TEXT": _SHARED + [
        (r"modality_encoders\.TEXT\.local_encoder\.(.*)", r"local_encoder.\1"),
    ],
    "AUDIO": _SHARED + [
        (r"modality_encoders\.AUDIO\.local_encoder\.(.*)", r"feature_extractor.\1"),
        (r"modality_encoders\.AUDIO\.project_features\.1\.(.*)", r"layer_norm.\1"),
        (r"modality_encoders\.AUDIO\.project_features\.2\.(.*)", r"post_extract_proj.\1"),
        # its positional stack is Sequential(TransposeLast, Sequential(conv, ...) x depth, TransposeLast)
        (r"modality_encoders\.AUDIO\.relative_positional_encoder\.(\d+)\.0\.(.*)", "pos_conv"),
    ],
    "IMAGE": _SHARED + [
        (r"modality_encoders\.IMAGE\.local_encoder\.proj\.(.*)", r"patch_embed.\1"),  # its PatchEmbed's conv
        (r"modality_encoders\.IMAGE\.extra_tokens", "extra_tokens"),  # [CLS]
        (r"modality_encoders\.IMAGE\.fixed_positional_encoder\.positions", "positions"),  # fixed sin-cos
    ],
}


def is_data2vec_multi(state_dict: Dict[str, Tensor], prefix: str = "") -> bool:
    """Whether a model state dict was written by fairseq's data2vec_multi."""
    return any(k.startswith(prefix + "modality_encoders.") for k in state_dict)


def rename(name: str, modality: str) -> str:
    """Our name for the reference's parameter ``name`` (a KeyError names any it does not know)."""
    if re.fullmatch(r"\d+\..*", name):  # an ema_encoder_only teacher is the bare list of blocks
        name = f"blocks.{name}"
    for pattern, target in KEY_MAPS[modality]:
        m = re.fullmatch(pattern.format(m=modality), name)
        if m is None:
            continue
        if target == "pos_conv":  # Sequential index i+1 (after a TransposeLast) -> our conv i
            return f"pos_conv.convs.{int(m.group(1)) - 1}.{m.group(2)}"
        return m.expand(target)
    raise KeyError(f"data2vec_multi parameter {name!r} has no counterpart in our {modality.lower()} model")


def convert_state_dict(state_dict: Dict[str, Tensor], modality: str, prefix: str = "") -> None:
    """Rename a data2vec_multi state dict in place (its ``_ema`` entry too)."""
    for k in [k for k in state_dict if k.startswith(prefix) and k != prefix + "_ema"]:
        state_dict[prefix + rename(k[len(prefix):], modality)] = _reshape(k, state_dict.pop(k))
    ema = state_dict.get(prefix + "_ema")
    if isinstance(ema, dict):
        state_dict[prefix + "_ema"] = {rename(k, modality): _reshape(k, v) for k, v in ema.items()}


def _reshape(name: str, value: Tensor) -> Tensor:
    # the reference's ALiBi scale is (layers, 1, heads, 1, 1) for broadcasting; ours is (heads,)
    return value.reshape(-1) if name.endswith("alibi_scale") else value


# -- configs -------------------------------------------------------------------------------------------------
# Options with the same name and meaning in data2vec_multi's top level and in our configs.
SAME_NAME = ("average_top_k_layers", "instance_norm_target_layer", "layer_norm_target_layer",
             "batch_norm_target_layer", "instance_norm_targets", "layer_norm_targets", "ema_decay",
             "ema_end_decay", "ema_anneal_end_step", "loss_beta", "loss_scale", "clone_batch", "min_target_var",
             "min_pred_var", "post_mlp_drop", "norm_eps")
DECODER = {"decoder_dim": "decoder_dim", "decoder_kernel": "decoder_kernel", "decoder_layers": "decoder_layers",
           "decoder_groups": "decoder_groups", "decoder_residual": "decoder_residual",
           "input_dropout": "decoder_input_dropout", "projection_layers": "projection_layers",
           "projection_ratio": "projection_ratio"}
# What a data2vec_multi option must be (its default) for our models to compute the same thing.
UNSUPPORTED_TOP = {"end_of_block_targets": False, "shared_decoder": None, "recon_loss": 0, "d2v_loss": 1,
                   "start_drop_path_rate": 0, "end_drop_path_rate": 0, "mae_init": False, "norm_affine": True}
UNSUPPORTED_MODALITY = {"learned_alibi": False, "learned_alibi_scale_per_layer": False, "add_masks": False,
                        "keep_masked_pct": 0, "mask_prob_min": None, "remove_masks": False,
                        "encoder_zero_mask": True, "start_drop_path_rate": 0, "end_drop_path_rate": 0,
                        "prenet_layerdrop": 0}
UNSUPPORTED_DECODER = {"add_positions_masked": False, "add_positions_all": False}


def shared_options(cfg: dict, modality: str) -> Tuple[dict, dict]:
    """The options every modality maps the same way, and the modality's own section of ``cfg``.

    ``cfg`` is a data2vec_multi model config as a plain dict (a checkpoint's ``cfg["model"]``). Any option
    set to something our models do not implement raises a ValueError naming it: nothing is half-converted.
    """
    section = cfg.get("modalities", {}).get(modality.lower())
    if section is None:
        raise ValueError(f"data2vec_multi config has no modalities.{modality.lower()} section")
    checks = [(f"model.{k}", cfg.get(k, v), v) for k, v in UNSUPPORTED_TOP.items()]
    checks += [(f"model.modalities.{modality.lower()}.{k}", section.get(k, v), v)
               for k, v in UNSUPPORTED_MODALITY.items()]
    decoder = section.get("decoder") or {}
    checks += [(f"model.modalities.{modality.lower()}.decoder.{k}", decoder.get(k, v), v)
               for k, v in UNSUPPORTED_DECODER.items()]
    for name, value, supported in checks:
        if value != supported and not (supported == 0 and value in (0, 0.0, None)):
            raise ValueError(f"data2vec_multi option {name}={value!r} is not supported by d2v_plugin's "
                             f"data2vec 2.0 (only {supported!r})")
    if section.get("decoder") is None:
        raise ValueError(f"data2vec_multi option model.modalities.{modality.lower()}.decoder=null (no decoder) "
                         f"is not supported")
    options = {k: cfg[k] for k in SAME_NAME if k in cfg}
    options.update({ours: decoder[k] for k, ours in DECODER.items() if k in decoder})
    for k in ("mask_prob", "mask_length", "mask_noise_std", "mask_dropout", "prenet_depth", "prenet_dropout"):
        if k in section:
            options[k] = section[k]
    options["data2vec_version"] = 2
    return options, section
