"""Speech: ``data2vec_audio`` / ``data2vec_audio_ctc`` / ``data2vec_audio_classification`` <-> transformers'
Data2VecAudio.

Export (``d2v-export-hf CKPT OUT_DIR``):

* a ``data2vec_audio`` (version 1) pre-training checkpoint -> ``Data2VecAudioModel``: the student (conv
  feature encoder, its layer norm and projection, mask embedding as HF's ``masked_spec_embed``, positional
  convolutions, blocks, the layer norm before the first block), so ``last_hidden_state`` is what our
  ``extract_features(mask=False)`` returns. The EMA teacher and the regression head (``final_proj``) stay
  behind. HF's SpecAugment options keep their defaults: our ``mask_prob`` (65%) is the pre-training
  objective's mask, not a fine-tuning augmentation;
* a ``data2vec_audio_ctc`` checkpoint -> ``Data2VecAudioForCTC``: the encoder as above under
  ``data2vec_audio.``, the CTC projection as ``lm_head``, the fine-tuning masks as SpecAugment options;
* a ``data2vec_audio_classification`` checkpoint (``pooling=mean``) -> ``Data2VecAudioForSequenceClassification``:
  the encoder as for CTC, ``projector`` and ``classifier`` as they are (both heads project every frame, average
  the utterance's frames and classify), ``id2label`` from the label dictionary the task stored.

Beside the weights: a ``Wav2Vec2FeatureExtractor`` (``do_normalize`` = the task's ``normalize``, the task's
sampling rate, ``return_attention_mask``: our encoder has no group norm, so padding must be masked). For
CTC also a ``Wav2Vec2CTCTokenizer`` and a ``Wav2Vec2Processor`` with the letter dictionary the checkpoint's
task stored. fairseq's CTC blank is dictionary index 0 (``<s>``, a symbol no transcript contains); HF's blank
is ``pad_token_id``. We name id 0 ``<pad>`` and id 1 (fairseq's unused ``<pad>``) ``<s>``, the layout of HF's
converted wav2vec 2.0 / data2vec models, so ids and logit columns are unchanged; ``|`` is the word delimiter.
One numeric difference remains in the processor: HF normalises a waveform with variance epsilon 1e-7,
fairseq's task with 1e-5 (``F.layer_norm``), a relative difference of about ``5e-6 / var`` in the input.

Not expressible in Data2VecAudio, refused by name: ``extractor_mode=default`` (one group norm after the
first conv instead of a layer norm after each), ``layer_norm_first=true`` (pre-LN blocks),
``pos_conv_depth=1`` (wav2vec 2.0's single weight-normalised positional conv without layer norm),
``layer_type`` other than ``transformer``, activations HF lacks, ``data2vec_version=2`` (ALiBi attention
biases, conv decoder), a CTC ``blank_weight``, and ``pooling=attentive`` (HF's head averages the frames).

Import (``d2v-import-hf HF_DIR OUT.pt``): the encoder of any Data2VecAudio directory (``...Model``,
``...ForCTC``: its ``lm_head`` is dropped) -> a ``data2vec_audio`` (version 1) pre-training checkpoint for
``model.w2v_path``, with the ``task`` (``audio_pretraining``, ``normalize`` from the feature extractor) that
fairseq's ``Wav2VecEncoder`` rebuilds it from. The EMA teacher starts as a copy of the student (what it is at
update 0); the regression head is freshly initialised (seeded), and so is the mask embedding when the HF
model has none; fine-tuning drops the teacher and the head. Pre-training-only options (EMA schedule,
targets, masking) are those of ``examples/audio/pretraining/base_librispeech.yaml``.
"""

import json
import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from omegaconf import OmegaConf

from d2v_plugin.hf.common import (HFConversionError, invert_key_map, plain_config, refused_on_import, rename,
                                  unsupported, write_checkpoint, write_hf_dir)


def refused(option: str, value, why: str) -> HFConversionError:
    return refused_on_import("data2vec_audio", option, value, why)

logger = logging.getLogger(__name__)

# -- key maps: (our key regex, HF key) ----------------------------------------------------------------
# data2vec_audio (version 1) student -> Data2VecAudioModel. fairseq's conv block i is
# Sequential(conv, dropout, Sequential(TransposeLast, LayerNorm, TransposeLast), GELU); a positional
# conv layer (pos_conv_depth > 1) is Sequential(conv, SamePad, TransposeLast, LayerNorm, TransposeLast, GELU)
# with a parameter-free layer norm.
ENCODER_KEY_MAP = (
    (r"mask_emb", r"masked_spec_embed"),
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"layer_norm\.(weight|bias)", r"feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"feature_projection.projection.\1"),
    (r"encoder\.pos_conv\.(\d+)\.0\.(weight|bias)", r"encoder.pos_conv_embed.layers.\1.conv.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)", r"encoder.layers.\1.attention.\2_proj.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"encoder.layers.\1.layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
)
# data2vec_audio_ctc (fairseq's Wav2VecCtc: encoder under w2v_encoder.w2v_model, CTC projection
# w2v_encoder.proj) -> Data2VecAudioForCTC (encoder under data2vec_audio, projection lm_head).
CTC_KEY_MAP = tuple((r"w2v_encoder\.w2v_model\." + ours, "data2vec_audio." + hf) for ours, hf in ENCODER_KEY_MAP) + (
    (r"w2v_encoder\.proj\.(weight|bias)", r"lm_head.\1"),
)
# data2vec_audio_classification: the same encoder; projector and classifier keep their names (HF's head is ours).
CLASSIFICATION_KEY_MAP = CTC_KEY_MAP[:-1] + ((r"(projector|classifier)\.(weight|bias)", r"\1.\2"),)
# Left behind on export: the teacher (ours, or a fairseq-reference checkpoint's flat "_ema") and the head.
DROP_ON_EXPORT = (r"ema_teacher\..*", r"_ema", r"final_proj\..*")
# Without SpecAugment (mask_time_prob = mask_feature_prob = 0) HF has no masked_spec_embed: ours is unused.
DROP_MASK_EMB = (r"(w2v_encoder\.w2v_model\.)?mask_emb",)
# Parts of our pre-training model an HF encoder lacks: freshly initialised on import.
FRESH_ON_IMPORT = (r"final_proj\..*", r"mask_emb")

# fairseq activation name (utils.get_activation_fn) -> transformers' ACT2FN name of the same function
ACTIVATIONS = {"gelu": "gelu", "gelu_accurate": "gelu_new", "gelu_fast": "gelu_new", "relu": "relu",
               "tanh": "tanh", "linear": "linear", "swish": "swish"}
ACTIVATIONS_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_accurate", "gelu_pytorch_tanh": "gelu_accurate",
                       "relu": "relu", "tanh": "tanh", "linear": "linear", "swish": "swish", "silu": "swish"}
# our layer norms (fairseq's LayerNorm / Fp32LayerNorm defaults), and HF's conv and pos-conv ones
LAYER_NORM_EPS = 1e-5
# what an imported checkpoint pre-trains with if someone continues pre-training it (base_librispeech.yaml)
PRETRAINING_DEFAULTS = {
    "mask_prob": 0.65, "mask_length": 10, "require_same_masks": True, "mask_dropout": 0.0,
    "average_top_k_layers": 8, "instance_norm_target_layer": True, "loss_beta": 0.0, "loss_scale": None,
    "ema_decay": 0.999, "ema_end_decay": 0.9999, "ema_anneal_end_step": 30000,
    "ema_transformer_only": True, "ema_layers_only": True, "feature_grad_mult": 1.0, "seed": 1,
}
BLANK = "<pad>"  # HF's name for the CTC blank (id 0, fairseq's "<s>")


ENCODER_KEY_MAP_FROM_HF = invert_key_map(ENCODER_KEY_MAP)


# -- config: ours -> HF ------------------------------------------------------------------------------
def _option(model: dict, key: str):
    """``model[key]``, or our ``data2vec_audio`` default (what fairseq builds the model with) when absent."""
    if key in model:
        return model[key]
    from d2v_plugin.audio.model import Data2VecAudioConfig

    return getattr(Data2VecAudioConfig, key)


def encoder_config_kwargs(model: dict, option: str = "model") -> dict:
    """``Data2VecAudioConfig`` arguments for our ``data2vec_audio`` options ``model`` (a plain dict, as in
    ``cfg.model`` of a pre-training checkpoint). ``option`` is where ``model`` sits in the checkpoint's
    config, for the error messages. Raises :func:`unsupported` for what Data2VecAudio cannot express.
    """
    from d2v_plugin.audio.conv_features import parse_conv_layers

    name = model.get("_name")
    if name != "data2vec_audio":
        raise HFConversionError(f"{option}._name={name}: expected a data2vec_audio encoder")
    version = _option(model, "data2vec_version")
    if version != 1:
        raise unsupported(f"{option}.data2vec_version", version, "data2vec 2.0 speech models use ALiBi attention "
                          "biases and a conv decoder; Data2VecAudio is data2vec 1.0")
    mode = _option(model, "extractor_mode")
    if mode != "layer_norm":
        raise unsupported(f"{option}.extractor_mode", mode, "Data2VecAudio's conv feature encoder has a layer norm "
                          "after every convolution, 'default' one group norm after the first")
    if _option(model, "layer_norm_first"):
        raise unsupported(f"{option}.layer_norm_first", "true", "Data2VecAudio's blocks are post-LN, with a layer "
                          "norm before the first block")
    layer_type = _option(model, "layer_type")
    if layer_type != "transformer":
        raise unsupported(f"{option}.layer_type", layer_type, "Data2VecAudio has transformer blocks only")
    depth = _option(model, "pos_conv_depth")
    if depth < 2:
        raise unsupported(f"{option}.pos_conv_depth", depth, "depth 1 is wav2vec 2.0's single weight-normalised "
                          "positional convolution; Data2VecAudio's are each followed by a layer norm")
    activation = _option(model, "activation_fn")
    if activation not in ACTIVATIONS:
        raise unsupported(f"{option}.activation_fn", activation, f"mapped: {', '.join(ACTIVATIONS)}")
    conv = parse_conv_layers(_option(model, "conv_feature_layers"), option=f"{option}.conv_feature_layers")
    return dict(
        hidden_size=_option(model, "encoder_embed_dim"),
        num_hidden_layers=_option(model, "encoder_layers"),
        num_attention_heads=_option(model, "encoder_attention_heads"),
        intermediate_size=_option(model, "encoder_ffn_embed_dim"),
        hidden_act=ACTIVATIONS[activation],
        feat_extract_activation="gelu",  # fairseq's conv blocks and positional convs: nn.GELU
        conv_dim=[d for d, _, _ in conv], conv_kernel=[k for _, k, _ in conv], conv_stride=[s for _, _, s in conv],
        conv_bias=bool(_option(model, "conv_bias")),
        num_conv_pos_embeddings=depth,  # HF's name for the number of positional conv layers
        conv_pos_kernel_size=max(3, _option(model, "conv_pos") // depth),  # fairseq's kernel per layer
        num_conv_pos_embedding_groups=_option(model, "conv_pos_groups"),
        layer_norm_eps=LAYER_NORM_EPS,
        hidden_dropout=_option(model, "dropout"),
        attention_dropout=_option(model, "attention_dropout"),
        activation_dropout=_option(model, "activation_dropout"),
        feat_proj_dropout=_option(model, "dropout_input"),
        layerdrop=_option(model, "encoder_layerdrop"),
    )


def ctc_config_kwargs(model: dict) -> dict:
    """``Data2VecAudioConfig`` arguments for a ``data2vec_audio_ctc`` ``cfg.model``: the encoder from the
    pre-training config fairseq keeps in ``w2v_args``, dropout and SpecAugment from the fine-tuning options."""
    w2v_args = model.get("w2v_args")
    if not w2v_args or not w2v_args.get("model"):
        raise HFConversionError("model.w2v_args: the fine-tuned checkpoint lacks its pre-training config "
                                "(fairseq's Wav2VecEncoder writes it on the first build)")
    blank_weight = model.get("blank_weight", 0.0)
    if blank_weight:
        raise unsupported("model.blank_weight", blank_weight, "Data2VecAudioForCTC's logits are the projection's "
                          "output; bake the weight into lm_head.bias[0] if you want it")
    kwargs = encoder_config_kwargs(w2v_args["model"], option="model.w2v_args.model")
    masking = model.get("apply_mask", False)
    kwargs.update(
        hidden_dropout=model.get("dropout", 0.0), attention_dropout=model.get("attention_dropout", 0.0),
        activation_dropout=model.get("activation_dropout", 0.0), feat_proj_dropout=model.get("dropout_input", 0.0),
        layerdrop=model.get("layerdrop", 0.0), final_dropout=model.get("final_dropout", 0.0),
        mask_time_prob=model.get("mask_prob", 0.0) if masking else 0.0, mask_time_length=model.get("mask_length", 10),
        mask_feature_prob=model.get("mask_channel_prob", 0.0) if masking else 0.0,
        mask_feature_length=model.get("mask_channel_length", 10),
    )
    return kwargs


def hf_config(cfg, vocab_size: Optional[int] = None, labels: Optional[List[str]] = None):
    """The transformers ``Data2VecAudioConfig`` of our checkpoint config ``cfg`` (``cfg.model._name`` is
    ``data2vec_audio``, ``data2vec_audio_ctc`` or ``data2vec_audio_classification``; ``vocab_size``: the CTC
    projection's rows; ``labels``: the class names, in class order)."""
    from transformers import Data2VecAudioConfig

    model = plain_config(cfg["model"])
    name = model.get("_name")
    if name == "data2vec_audio":
        return Data2VecAudioConfig(**encoder_config_kwargs(model), architectures=["Data2VecAudioModel"])
    if name == "data2vec_audio_ctc":
        # ids as named by ctc_vocabulary: blank/pad 0, then fairseq's <pad> renamed <s>, </s>, <unk>
        sizes = {} if vocab_size is None else {"vocab_size": vocab_size}
        return Data2VecAudioConfig(**ctc_config_kwargs(model), **sizes, pad_token_id=0, bos_token_id=1,
                                   eos_token_id=2, ctc_zero_infinity=_zero_infinity(cfg),
                                   architectures=["Data2VecAudioForCTC"])
    if name == "data2vec_audio_classification":
        if model.get("pooling", "mean") != "mean":
            raise unsupported("model.pooling", model["pooling"], "Data2VecAudioForSequenceClassification averages "
                              "the projected frames (pooling=mean)")
        names = {} if labels is None else {"id2label": dict(enumerate(labels)),
                                           "label2id": {label: i for i, label in enumerate(labels)}}
        # the encoder part of the config is the CTC model's: both are fairseq's Wav2VecEncoder
        return Data2VecAudioConfig(**ctc_config_kwargs(model), **names, use_weighted_layer_sum=False,
                                   classifier_proj_size=model.get("classifier_proj_size", 256),
                                   architectures=["Data2VecAudioForSequenceClassification"])
    raise HFConversionError(f"model._name={name}: not a speech model (data2vec_audio, data2vec_audio_ctc, "
                            f"data2vec_audio_classification)")


def _zero_infinity(cfg) -> bool:
    criterion = cfg.get("criterion") if hasattr(cfg, "get") else None
    return bool(criterion.get("zero_infinity", False)) if criterion else False


# -- processor ---------------------------------------------------------------------------------------
def feature_extractor(task: dict):
    """What our ``audio_pretraining``/``audio_ctc`` task does to a waveform, as a ``Wav2Vec2FeatureExtractor``."""
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=int(task.get("sample_rate", 16000)),
                                    padding_value=0.0, do_normalize=bool(task.get("normalize", False)),
                                    return_attention_mask=True)


def ctc_vocabulary(symbols) -> Dict[str, int]:
    """HF's vocab.json for fairseq's letter dictionary ``symbols`` (index order): ids unchanged, id 0 named
    ``<pad>`` (HF's blank) and id 1 ``<s>``, see the module docstring."""
    symbols = list(symbols)
    if symbols[:4] != ["<s>", "<pad>", "</s>", "<unk>"]:
        raise HFConversionError(f"task_state.target_dictionary: expected fairseq's special symbols "
                                f"<s> <pad> </s> <unk> first, found {symbols[:4]}")
    names = [BLANK, "<s>"] + symbols[2:]
    if len(set(names)) != len(names):
        raise HFConversionError("task_state.target_dictionary: a letter is listed twice, or the dictionary "
                                "already has a <pad>/<s> beyond its special symbols")
    if "|" not in names:
        raise HFConversionError("task_state.target_dictionary: no word delimiter '|' (letter targets, "
                                "task.labels=ltr, separate words with it)")
    return {name: i for i, name in enumerate(names)}


def _dictionary_symbols(checkpoint_path: Path, cfg) -> list:
    """The letter dictionary of a fine-tuned checkpoint: its task state (what ``audio_ctc`` stores), or else
    the task's ``dict.<labels>.txt`` beside the manifests."""
    from d2v_plugin.core.finetune import load_checkpoint

    task_state = load_checkpoint(str(checkpoint_path), option="CKPT").get("task_state") or {}
    plain = task_state.get("target_dictionary")
    if isinstance(plain, dict) and plain.get("symbols"):
        if (plain.get("bos"), plain.get("pad"), plain.get("eos"), plain.get("unk")) != (0, 1, 2, 3):
            raise HFConversionError("task_state.target_dictionary: special symbol ids differ from fairseq's 0-3")
        return list(plain["symbols"])
    task = cfg.get("task") or {}
    dict_file = Path(str(task.get("data", ""))) / f"dict.{task.get('labels', 'ltr')}.txt"
    if not dict_file.is_file():
        raise HFConversionError(f"{checkpoint_path}: no target dictionary in the task state and no {dict_file} "
                                f"(task.data, task.labels)")
    from fairseq.data import Dictionary

    return list(Dictionary.load(str(dict_file)).symbols)


def class_labels(symbols, classifier: Optional[torch.Tensor], checkpoint_path: Path) -> List[str]:
    """The class names of a ``data2vec_audio_classification`` checkpoint: its label dictionary without fairseq's
    special symbols (class ``i`` is entry ``4 + i``), one per row of ``classifier.weight``."""
    symbols = list(symbols)
    if symbols[:4] != ["<s>", "<pad>", "</s>", "<unk>"]:
        raise HFConversionError(f"task_state.target_dictionary: expected fairseq's special symbols "
                                f"<s> <pad> </s> <unk> first, found {symbols[:4]}")
    rows = None if classifier is None else classifier.shape[0]
    if rows != len(symbols) - 4:
        raise HFConversionError(f"{checkpoint_path}: the classifier has {rows} outputs for {len(symbols) - 4} labels")
    return symbols[4:]


def ctc_processor(task: dict, vocab: Dict[str, int], tmp: Path):
    """``Wav2Vec2Processor`` (feature extractor + CTC tokenizer over ``vocab``), its vocab.json in ``tmp``."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2Processor

    vocab_file = tmp / "vocab.json"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False, indent=1))
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab_file), bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                     pad_token=BLANK, word_delimiter_token="|", do_lower_case=False)
    if tokenizer.pad_token_id != 0 or len(tokenizer) != len(vocab):
        raise HFConversionError(f"the CTC tokenizer has pad id {tokenizer.pad_token_id} and {len(tokenizer)} "
                                f"tokens, expected 0 and {len(vocab)}")
    return Wav2Vec2Processor(feature_extractor=feature_extractor(task), tokenizer=tokenizer)


# -- export ------------------------------------------------------------------------------------------
def _hf_model(config, hf_state: Dict[str, torch.Tensor]):
    """The HF model (``config.architectures[0]``) holding exactly ``hf_state`` (strict: a missing or extra key is
    an error). Built on the meta device, so no random init runs (fast, and the global random generator is left
    alone)."""
    import transformers

    with torch.device("meta"):
        model = getattr(transformers, config.architectures[0])(config)
    try:
        model.load_state_dict({k: v.detach().clone().contiguous() for k, v in hf_state.items()},
                              strict=True, assign=True)
    except RuntimeError as e:
        raise HFConversionError(f"the converted weights do not fit {type(model).__name__}: {e}") from None
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor outside the state dict (none in transformers 5.25) would have no value
        raise HFConversionError(f"{type(model).__name__}: no value for {', '.join(left)}")
    return model.eval()


def export(cfg, state: Dict[str, torch.Tensor], out_dir: Path, checkpoint_path: Path) -> Path:
    """Write the HF directory of our speech checkpoint (see the module docstring); returns ``out_dir``."""
    name = cfg.model.get("_name")
    ctc = name == "data2vec_audio_ctc"
    task = plain_config(cfg["task"]) if cfg.get("task") is not None else {}
    proj = state.get("w2v_encoder.proj.weight")
    config = hf_config(cfg, None if proj is None else proj.shape[0])  # first: refuse before reading more
    vocab = None
    key_map = CTC_KEY_MAP if ctc else ENCODER_KEY_MAP
    if name == "data2vec_audio_classification":
        labels = class_labels(_dictionary_symbols(checkpoint_path, cfg), state.get("classifier.weight"),
                              checkpoint_path)
        config, key_map = hf_config(cfg, labels=labels), CLASSIFICATION_KEY_MAP
    if ctc:
        vocab = ctc_vocabulary(_dictionary_symbols(checkpoint_path, cfg))
        if proj is None or proj.shape[0] != len(vocab):
            raise HFConversionError(f"{checkpoint_path}: the CTC projection (w2v_encoder.proj) has "
                                    f"{None if proj is None else proj.shape[0]} outputs for {len(vocab)} letters")
    drop = DROP_ON_EXPORT
    if not (config.mask_time_prob > 0 or config.mask_feature_prob > 0):
        drop = drop + DROP_MASK_EMB
    hf_state = rename(state, key_map, str(checkpoint_path), drop=drop)
    model = _hf_model(config, hf_state)
    logger.info(f"exporting {name} as {type(model).__name__}; left behind: EMA teacher, regression head")

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        if ctc:
            ctc_processor(task, vocab, tmp).save_pretrained(tmp)
        else:
            feature_extractor(task).save_pretrained(tmp)

    return write_hf_dir(out_dir, save)


# -- config: HF -> ours ------------------------------------------------------------------------------
def conv_layers_spec(dims, kernels, strides) -> str:
    """fairseq's ``conv_feature_layers`` string, runs of equal layers as ``[(d, k, s)] * n``."""
    runs = []
    for layer in zip(dims, kernels, strides):
        if runs and runs[-1][0] == layer:
            runs[-1][1] += 1
        else:
            runs.append([layer, 1])
    return " + ".join(f"[({d}, {k}, {s})]" + (f" * {n}" if n > 1 else "") for (d, k, s), n in runs)


def model_options(config) -> dict:
    """Our ``data2vec_audio`` (version 1) options for a transformers ``Data2VecAudioConfig``; raises for what
    our model cannot express."""
    if getattr(config, "add_adapter", False):
        raise refused("add_adapter", True, "no adapter convolutions after the encoder")
    if config.feat_extract_activation != "gelu":
        raise refused("feat_extract_activation", config.feat_extract_activation,
                      "fairseq's conv feature encoder and positional convolutions use GELU")
    if abs(config.layer_norm_eps - LAYER_NORM_EPS) > 1e-12:
        raise refused("layer_norm_eps", config.layer_norm_eps, f"our layer norms use {LAYER_NORM_EPS}")
    depth, kernel = config.num_conv_pos_embeddings, config.conv_pos_kernel_size
    if depth < 2:
        raise refused("num_conv_pos_embeddings", depth, "fairseq's pos_conv_depth=1 is a different module "
                      "(one weight-normalised convolution without layer norm)")
    if kernel < 3:
        raise refused("conv_pos_kernel_size", kernel, "fairseq's positional kernel is max(3, conv_pos // depth)")
    if config.hidden_act not in ACTIVATIONS_FROM_HF:
        raise refused("hidden_act", config.hidden_act, f"mapped: {', '.join(ACTIVATIONS_FROM_HF)}")
    layers = config.num_hidden_layers
    options = dict(PRETRAINING_DEFAULTS, average_top_k_layers=min(PRETRAINING_DEFAULTS["average_top_k_layers"], layers))
    options.update(
        _name="data2vec_audio", data2vec_version=1, extractor_mode="layer_norm", layer_norm_first=False,
        layer_type="transformer",
        conv_feature_layers=conv_layers_spec(config.conv_dim, config.conv_kernel, config.conv_stride),
        conv_bias=bool(config.conv_bias),
        encoder_embed_dim=config.hidden_size, encoder_layers=layers,
        encoder_attention_heads=config.num_attention_heads, encoder_ffn_embed_dim=config.intermediate_size,
        activation_fn=ACTIVATIONS_FROM_HF[config.hidden_act],
        pos_conv_depth=depth, conv_pos=kernel * depth, conv_pos_groups=config.num_conv_pos_embedding_groups,
        dropout=config.hidden_dropout, attention_dropout=config.attention_dropout,
        activation_dropout=config.activation_dropout, dropout_input=config.feat_proj_dropout,
        encoder_layerdrop=config.layerdrop,
    )
    return options


def full_model_config(options: dict) -> dict:
    """``options`` completed with every other ``data2vec_audio`` default, as a plain dict (as checkpoints hold)."""
    from d2v_plugin.audio.model import Data2VecAudioConfig

    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(Data2VecAudioConfig), options),
                                  resolve=True, enum_to_str=True)


def _feature_extractor_options(hf_dir: Path) -> Optional[dict]:
    """The feature extractor's saved options: ``preprocessor_config.json``, or the ``feature_extractor`` entry
    of ``processor_config.json`` (where transformers 5 saves a processor's); None without either."""
    single, processor = hf_dir / "preprocessor_config.json", hf_dir / "processor_config.json"
    if single.is_file():
        return json.loads(single.read_text())
    if processor.is_file():
        return json.loads(processor.read_text()).get("feature_extractor")
    return None


def task_options(hf_dir: Path) -> dict:
    """An ``audio_pretraining`` task config with the feature extractor's normalisation and sampling rate
    (what fairseq's Wav2VecEncoder rebuilds the task from; fine-tuning replaces ``data``)."""
    from fairseq.tasks.audio_pretraining import AudioPretrainingConfig

    normalize, rate = True, 16000
    extractor = _feature_extractor_options(hf_dir)
    if extractor is not None:
        normalize = bool(extractor.get("do_normalize", True))
        rate = int(extractor.get("sampling_rate", rate))
    else:
        logger.warning(f"{hf_dir}: no feature extractor config; assuming normalized 16 kHz input (task.normalize=true)")
    values = dict(_name="audio_pretraining", data=str(hf_dir), normalize=normalize, sample_rate=rate,
                  tpu=False, seed=PRETRAINING_DEFAULTS["seed"])
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(AudioPretrainingConfig), values), resolve=True,
                                  enum_to_str=True)


def _hf_encoder_state(hf_dir: Path, config) -> Dict[str, torch.Tensor]:
    """The Data2VecAudioModel weights in ``hf_dir`` (of a base model or of one with a head, which is dropped)."""
    from transformers import Data2VecAudioModel

    model, info = Data2VecAudioModel.from_pretrained(str(hf_dir), config=config, output_loading_info=True)
    missing = sorted(k for k in info.get("missing_keys", ()) if k != "masked_spec_embed")
    if missing:
        raise HFConversionError(f"{hf_dir}: the weights lack {len(missing)} encoder parameter(s): "
                                f"{', '.join(missing[:8])}; nothing was written")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if "masked_spec_embed" in info.get("missing_keys", ()):
        state.pop("masked_spec_embed", None)
    return state


def pretraining_state(model_cfg: dict, encoder: Dict[str, torch.Tensor],
                      source: str) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Our full ``data2vec_audio`` state dict and the keys freshly initialised (seeded) in it: ``encoder``
    (student keys), the teacher as a copy of the student, the rest of :data:`FRESH_ON_IMPORT` new. Loaded into
    the model built from ``model_cfg`` with ``strict=True``, so a key the model needs and the import lacks
    (or one too many) is an error."""
    from d2v_plugin.audio.model import Data2VecAudioModel
    from d2v_plugin.core.teacher_student import TEACHER

    with torch.random.fork_rng(devices=[]):  # the fresh parts are reproducible; the global generator is left alone
        torch.manual_seed(model_cfg["seed"])
        model = Data2VecAudioModel.build_model(OmegaConf.create(model_cfg))
    teacher, student = f"{TEACHER}.model.", model.tracked_state_prefix
    out, fresh = {}, []
    for key, value in model.state_dict().items():
        if key in encoder:
            out[key] = encoder[key]
        elif key.startswith(teacher) and student + key[len(teacher):] in encoder:
            out[key] = encoder[student + key[len(teacher):]].float().clone()
        elif key == f"{TEACHER}.num_updates":
            out[key] = torch.zeros_like(value)
        elif any(re.fullmatch(p, key) for p in FRESH_ON_IMPORT):
            out[key] = value
            fresh.append(key)
        else:
            raise HFConversionError(f"{source}: no weight for our {key}; nothing was written")
    extra = sorted(set(encoder) - set(out))
    if extra:
        raise HFConversionError(f"{source}: weights our model has no place for: {', '.join(extra[:8])}")
    try:
        model.load_state_dict(out, strict=True)
    except RuntimeError as e:
        raise HFConversionError(f"{source}: the converted weights do not fit data2vec_audio: {e}") from None
    return {k: v.detach().clone().contiguous() for k, v in out.items()}, fresh


def import_(hf_dir: Path, out_path: Path) -> Path:
    """Convert the Data2VecAudio encoder in ``hf_dir`` to our ``data2vec_audio`` pre-training checkpoint."""
    from transformers import Data2VecAudioConfig

    config = Data2VecAudioConfig.from_pretrained(str(hf_dir))
    architectures = config.architectures or ["Data2VecAudioModel"]
    if not all(a.startswith("Data2VecAudio") for a in architectures):
        raise refused("architectures", architectures, "not a Data2VecAudio model")
    model_cfg = full_model_config(model_options(config))
    task_cfg = task_options(hf_dir)
    encoder = rename(_hf_encoder_state(hf_dir, config), ENCODER_KEY_MAP_FROM_HF, str(hf_dir))
    state, fresh = pretraining_state(model_cfg, encoder, str(hf_dir))
    heads = [a for a in architectures if a != "Data2VecAudioModel"]
    logger.info(f"imported the encoder of {', '.join(architectures)}" + (" (its head is dropped)" if heads else "")
                + f"; the EMA teacher is a copy of the student; freshly initialised: {', '.join(fresh)}")
    checkpoint = {
        "cfg": {"common": {"seed": model_cfg["seed"]}, "task": task_cfg, "model": model_cfg},
        "model": state,
        "args": None,
        "criterion": None,
        "optimizer_history": [{"criterion_name": None, "optimizer_name": None, "lr_scheduler_state": {},
                               "num_updates": 0}],
        "task_state": {},
        "extra_state": {"train_iterator": {"epoch": 1},
                        "hf_import": {"source": str(hf_dir), "architectures": list(architectures),
                                      "teacher": "copy of the student", "freshly_initialised": fresh}},
        "last_optimizer_state": None,
    }
    return write_checkpoint(checkpoint, out_path)
