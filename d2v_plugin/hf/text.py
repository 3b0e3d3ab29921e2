"""Hugging Face export and import for text: ``data2vec_text`` (1.0 and 2.0) and ``data2vec_text_classification``.

**Export** (:func:`export`): the student encoder becomes ``Data2VecTextModel`` (a classification checkpoint:
``Data2VecTextForSequenceClassification``, its RoBERTa head as ``classifier``). Both are post-LN RoBERTa
encoders with learned positions counted from ``padding_idx + 1`` (fairseq's ``make_positions``, which HF
copies), so the weights map one to one:

* data2vec 1.0 is fairseq's ``TransformerEncoder``: separate q/k/v projections, renamed as they are;
* data2vec 2.0 text (``model.data2vec_version=2``) is the same network when ``model.prenet_depth=0`` (no
  context layer norm, see :mod:`d2v_plugin.text.model_v2`): its fused ``attn.qkv`` is split into
  query/key/value (the rows are ordered q, k, v, each head after head), ``norm1``/``norm2`` are the two
  post-LN norms. HF has one ``layer_norm_eps`` for the embedding norm (1e-5 in both our versions) and the
  blocks, so ``model.norm_eps`` must be 1e-5;
* ``embed_scale`` (``no_scale_embedding=false``) is folded into the token embeddings (bit-identical: fairseq
  multiplies the looked-up rows by the same float); HF's token-type embedding is exported as one zero row.

The EMA teacher, the regression head (1.0) and the decoder and ``final_proj`` (2.0) are pre-training
only and are not exported. ``Data2VecTextModel``'s pooler has no counterpart in data2vec and is left out:
transformers initialises it randomly on load (``last_hidden_state`` is the data2vec encoder's output).

**Tokenizer.** Our pipeline is SentencePiece (``manifests.text_manifest``: a unigram model) -> pieces ->
fairseq ``dict.txt`` ids, and ``dict.txt`` lists the pieces by corpus frequency, not in SentencePiece's id
order. The export writes a ``tokenizers`` Unigram model whose vocabulary *is* the fairseq dictionary in
its order (``<s> <pad> </s> <unk>``, the pieces, ``<mask>`` as the task adds it), each piece with its
SentencePiece score, so the Viterbi segmentation and the ids are ours. Normalisation is SentencePiece's
own compiled character map (``Precompiled``), then its whitespace rules (runs collapsed, ends trimmed,
``▁`` in front); ``<s> ... </s>`` come from a template built from the task (``masked_lm`` prepends
``<s>``; ``sentence_prediction`` its ``init_token`` and ``separator_token``). The model and ``dict.txt``
are copied beside it, for binarising more data with ``manifests.text_manifest``. Only a dictionary that
lists exactly the model's pieces (what ``text_manifest`` writes) can be expressed: a piece missing from
``dict.txt`` is segmented by SentencePiece and then read as ``<unk>``, which a Unigram model cannot do.

**Import** (:func:`import_`): an HF data2vec-text directory (the encoder of any of its heads) becomes a
``data2vec_text`` 1.0 pre-training checkpoint for ``model.model_path``: token-type row 0 (what HF adds
when no ``token_type_ids`` are given) is folded into the token embeddings, the teacher starts as a copy
of the student, and the regression head is freshly initialised (it is not part of an HF model).
"""

import json
import logging
import math
import shutil
import struct
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from omegaconf import OmegaConf

from fairseq import utils as fairseq_utils
from fairseq.data import Dictionary

from d2v_plugin.core.finetune import dictionary_digest
from d2v_plugin.hf.common import (HFConversionError, plain_config, refused_on_import, rename, unsupported,
                                  write_checkpoint, write_hf_dir)

logger = logging.getLogger(__name__)

# -- key maps: (our key regex, HF key) -----------------------------------------------------------------------

_LAYER_V1 = r"encoder\.sentence_encoder\.layers\.(\d+)\."
V1_ENCODER_KEYS = (
    (r"encoder\.sentence_encoder\.embed_tokens\.weight", "embeddings.word_embeddings.weight"),
    (r"encoder\.sentence_encoder\.embed_positions\.weight", "embeddings.position_embeddings.weight"),
    (r"encoder\.sentence_encoder\.layernorm_embedding\.(weight|bias)", r"embeddings.LayerNorm.\1"),
    (_LAYER_V1 + r"self_attn\.q_proj\.(weight|bias)", r"encoder.layer.\1.attention.self.query.\2"),
    (_LAYER_V1 + r"self_attn\.k_proj\.(weight|bias)", r"encoder.layer.\1.attention.self.key.\2"),
    (_LAYER_V1 + r"self_attn\.v_proj\.(weight|bias)", r"encoder.layer.\1.attention.self.value.\2"),
    (_LAYER_V1 + r"self_attn\.out_proj\.(weight|bias)", r"encoder.layer.\1.attention.output.dense.\2"),
    (_LAYER_V1 + r"self_attn_layer_norm\.(weight|bias)", r"encoder.layer.\1.attention.output.LayerNorm.\2"),
    (_LAYER_V1 + r"fc1\.(weight|bias)", r"encoder.layer.\1.intermediate.dense.\2"),
    (_LAYER_V1 + r"fc2\.(weight|bias)", r"encoder.layer.\1.output.dense.\2"),
    (_LAYER_V1 + r"final_layer_norm\.(weight|bias)", r"encoder.layer.\1.output.LayerNorm.\2"),
)

_BLOCK_V2 = r"encoder\.encoder\.blocks\.(\d+)\."
V2_ENCODER_KEYS = (
    (r"encoder\.local_encoder\.embed_tokens\.weight", "embeddings.word_embeddings.weight"),
    (r"encoder\.local_encoder\.embed_positions\.weight", "embeddings.position_embeddings.weight"),
    (r"encoder\.local_encoder\.layernorm_embedding\.(weight|bias)", r"embeddings.LayerNorm.\1"),
    # fused q/k/v: split into query/key/value by split_fused_qkv
    (_BLOCK_V2 + r"attn\.qkv\.(weight|bias)", r"encoder.layer.\1.attention.self.qkv.\2"),
    (_BLOCK_V2 + r"attn\.proj\.(weight|bias)", r"encoder.layer.\1.attention.output.dense.\2"),
    (_BLOCK_V2 + r"norm1\.(weight|bias)", r"encoder.layer.\1.attention.output.LayerNorm.\2"),
    (_BLOCK_V2 + r"mlp\.fc1\.(weight|bias)", r"encoder.layer.\1.intermediate.dense.\2"),
    (_BLOCK_V2 + r"mlp\.fc2\.(weight|bias)", r"encoder.layer.\1.output.dense.\2"),
    (_BLOCK_V2 + r"norm2\.(weight|bias)", r"encoder.layer.\1.output.LayerNorm.\2"),
)

HEAD_KEYS = ((r"classification_heads\.[^.]+\.(dense|out_proj)\.(weight|bias)", r"classifier.\1.\2"),)

# pre-training only (teacher, 1.0 regression head, 2.0 decoder and head) and fairseq's version buffer
NOT_EXPORTED = (r"encoder\.ema_teacher\..*", r"encoder\.regression_head\..*", r"encoder\.decoder\..*",
                r"encoder\.final_proj\..*", r"encoder\.sentence_encoder\.version")

# import: (HF key regex, our data2vec_text 1.0 key); token_type_embeddings are folded in before renaming
_LAYER_HF, _OURS = r"encoder\.layer\.(\d+)\.", r"encoder.sentence_encoder."
HF_TO_V1_KEYS = (
    (r"embeddings\.word_embeddings\.weight", _OURS + "embed_tokens.weight"),
    (r"embeddings\.position_embeddings\.weight", _OURS + "embed_positions.weight"),
    (r"embeddings\.LayerNorm\.(weight|bias)", _OURS + r"layernorm_embedding.\1"),
    (_LAYER_HF + r"attention\.self\.query\.(weight|bias)", _OURS + r"layers.\1.self_attn.q_proj.\2"),
    (_LAYER_HF + r"attention\.self\.key\.(weight|bias)", _OURS + r"layers.\1.self_attn.k_proj.\2"),
    (_LAYER_HF + r"attention\.self\.value\.(weight|bias)", _OURS + r"layers.\1.self_attn.v_proj.\2"),
    (_LAYER_HF + r"attention\.output\.dense\.(weight|bias)", _OURS + r"layers.\1.self_attn.out_proj.\2"),
    (_LAYER_HF + r"attention\.output\.LayerNorm\.(weight|bias)", _OURS + r"layers.\1.self_attn_layer_norm.\2"),
    (_LAYER_HF + r"intermediate\.dense\.(weight|bias)", _OURS + r"layers.\1.fc1.\2"),
    (_LAYER_HF + r"output\.dense\.(weight|bias)", _OURS + r"layers.\1.fc2.\2"),
    (_LAYER_HF + r"output\.LayerNorm\.(weight|bias)", _OURS + r"layers.\1.final_layer_norm.\2"),
)
# HF heads and buffers that older transformers saved; none is part of our encoder
HF_NOT_IMPORTED = (r"pooler\..*", r"classifier\..*", r"lm_head\..*", r"qa_outputs\..*",
                   r"embeddings\.(position_ids|token_type_ids)")
HF_BASE_PREFIX = "data2vec_text."  # the encoder's keys inside an HF model with a head

# fairseq activation_fn -> HF hidden_act (fairseq's gelu is exact; gelu_fast/gelu_accurate are the tanh form)
ACTIVATIONS = (("relu", "relu"), ("gelu", "gelu"), ("gelu_accurate", "gelu_new"), ("gelu_fast", "gelu_new"),
               ("tanh", "tanh"), ("linear", "linear"))
# HF hidden_act -> fairseq activation_fn
HF_ACTIVATIONS = (("relu", "relu"), ("gelu", "gelu"), ("gelu_new", "gelu_accurate"), ("gelu_fast", "gelu_accurate"),
                  ("gelu_pytorch_tanh", "gelu_accurate"), ("tanh", "tanh"), ("linear", "linear"))

FAIRSEQ_LAYER_NORM_EPS = 1e-5  # fairseq's LayerNorm (1.0 everywhere, 2.0's embedding norm)
FAIRSEQ_PAD = 1  # fairseq Dictionary: <s> 0, <pad> 1, </s> 2, <unk> 3

# data2vec options of an imported checkpoint: the paper's text recipe (examples/text/pretraining/base.yaml).
# They only matter if pre-training continues from it; fine-tuning reads the architecture.
IMPORTED_DATA2VEC_OPTIONS = (
    ("head_layers", 2), ("average_top_k_layers", 10), ("layer_norm_target_layer", True), ("loss_beta", 4.0),
    ("loss_scale", 1.0), ("ema_decay", 0.999), ("ema_end_decay", 0.9999), ("ema_anneal_end_step", 100000),
    ("ema_transformer_layers_only", True), ("loss_positions", "selected"),
)
IMPORT_SEED = 1  # the fresh regression head of an import is drawn from this seed (a private generator state)

SPACE = "\u2581"  # SentencePiece's escaped whitespace


# -- export ----------------------------------------------------------------------------------------------------

def export(cfg, state: Dict[str, torch.Tensor], out_dir: Path, checkpoint_path: Path, *,
           spm_model: Optional[Path] = None, dictionary: Optional[Path] = None,
           label_dictionary: Optional[Path] = None) -> Path:
    """Write the HF model directory of our text checkpoint (``cfg``, model ``state``) to ``out_dir``.

    The SentencePiece model and ``dict.txt`` are taken from the data-bin the checkpoint was trained on
    (``cfg.task.data``: ``spm.model`` and ``dict.txt``, or ``input0/dict.txt`` for classification, whose
    ``label/dict.txt`` names the classes) unless given. Everything is converted and checked before
    anything is written.
    """
    classification = cfg.model.get("_name") == "data2vec_text_classification"
    encoder_cfg = encoder_model_config(cfg.model) if classification else cfg.model
    values = hf_config_values(encoder_cfg)
    tensors = hf_state(encoder_cfg, state, classification)
    files = tokenizer_files(cfg, checkpoint_path, classification, spm_model, dictionary, label_dictionary)
    if classification:
        values.update(classification_config_values(cfg, state, files.get("label_dictionary")))
    symbols = dictionary_symbols(files["dictionary"])
    check_dictionary(encoder_cfg, symbols, state, files["dictionary"])
    values["vocab_size"] = len(symbols)
    tokenizer = build_tokenizer(files["spm_model"], symbols, template_of(cfg.task, symbols),
                                values["max_position_embeddings"] - FAIRSEQ_PAD - 1)
    model = build_hf_model(values, tensors, classification)

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.copyfile(files["spm_model"], tmp / "spm.model")
        shutil.copyfile(files["dictionary"], tmp / "dict.txt")

    return write_hf_dir(out_dir, save)


def encoder_model_config(cls_cfg):
    """The encoder's config of a classification checkpoint: its pre-training config with the fine-tuning
    dropouts, as :class:`~d2v_plugin.text.classification.Data2VecTextClassificationModel` builds it."""
    pretrained = cls_cfg.get("pretrained_model_cfg")
    if pretrained is None:
        raise HFConversionError("model.pretrained_model_cfg is missing: not a checkpoint saved by "
                                "data2vec_text_classification; nothing was written")
    enc = OmegaConf.create(plain_config(pretrained))
    for key in ("dropout", "attention_dropout"):
        if cls_cfg.get(key) is not None:
            enc.transformer[key] = cls_cfg[key]
    return enc


def version_of(model_cfg) -> int:
    version = model_cfg.get("data2vec_version", 1)
    if version not in (1, 2):
        raise unsupported("model.data2vec_version", version, "only data2vec 1.0 and 2.0 text encoders exist")
    return version


def hf_config_values(model_cfg) -> dict:
    """``Data2VecTextConfig`` keyword arguments for our ``data2vec_text`` model config (1.0 or 2.0).

    Raises :func:`~d2v_plugin.hf.common.unsupported` naming the first option transformers cannot express.
    """
    from d2v_plugin.text.model import encoder_config

    version = version_of(model_cfg)
    tcfg = encoder_config(model_cfg.transformer)
    check_encoder_options(tcfg)
    if version == 2:
        check_v2_options(model_cfg)
    activations = dict(ACTIVATIONS)
    if tcfg.activation_fn not in activations:
        raise unsupported("model.transformer.activation_fn", tcfg.activation_fn,
                          f"mapped: {', '.join(activations)}")
    enc = tcfg.encoder
    return dict(
        hidden_size=enc.embed_dim, num_hidden_layers=enc.layers, num_attention_heads=enc.attention_heads,
        intermediate_size=enc.ffn_embed_dim, hidden_act=activations[tcfg.activation_fn],
        hidden_dropout_prob=tcfg.dropout, attention_probs_dropout_prob=tcfg.attention_dropout,
        # fairseq's learned positions have padding_idx + 1 extra rows: positions start at pad + 1
        max_position_embeddings=tcfg.max_source_positions + FAIRSEQ_PAD + 1,
        type_vocab_size=1, layer_norm_eps=FAIRSEQ_LAYER_NORM_EPS, pad_token_id=FAIRSEQ_PAD, bos_token_id=0,
        eos_token_id=2,
        initializer_range=0.02, is_decoder=False, add_cross_attention=False,
    )


def check_encoder_options(tcfg) -> None:
    """Refuse what Data2VecText's embeddings and post-LN blocks cannot express (both versions)."""
    enc = tcfg.encoder
    refused = (
        ("model.transformer.encoder.normalize_before", enc.normalize_before, False,
         "pre-LN blocks; Data2VecText's are post-LN"),
        ("model.transformer.layernorm_embedding", tcfg.layernorm_embedding, True,
         "Data2VecText always layer-normalises the embeddings"),
        ("model.transformer.no_token_positional_embeddings", tcfg.no_token_positional_embeddings, False,
         "Data2VecText always adds position embeddings"),
        ("model.transformer.encoder.learned_pos", enc.learned_pos, True,
         "sinusoidal positions; Data2VecText's are learned"),
        ("model.transformer.encoder.layers_to_keep", enc.layers_to_keep, None, "a pruned encoder"),
        ("model.transformer.encoder.xformers_att_config", enc.xformers_att_config, None,
         "xformers attention variants"),
    )
    for option, value, expressible, why in refused:
        if value != expressible:
            raise unsupported(option, value, why)


def check_v2_options(model_cfg) -> None:
    """data2vec 2.0 text is Data2VecText only without prenet blocks (they bring a context layer norm)
    and with the embedding norm's epsilon in the blocks."""
    prenet = model_cfg.get("prenet_depth", 0)
    if prenet != 0:
        raise unsupported("model.prenet_depth", prenet, "data2vec 2.0's prenet adds a second layer norm after the "
                          "embeddings' (context_norm), which Data2VecText has not")
    eps = model_cfg.get("norm_eps", FAIRSEQ_LAYER_NORM_EPS)
    if eps != FAIRSEQ_LAYER_NORM_EPS:
        raise unsupported("model.norm_eps", eps, f"Data2VecText has one layer_norm_eps for the embedding layer "
                          f"norm ({FAIRSEQ_LAYER_NORM_EPS} in data2vec 2.0) and the blocks")


def classification_config_values(cfg, state: Dict[str, torch.Tensor], label_dictionary: Optional[Path]) -> dict:
    """num_labels, labels, classifier_dropout and problem_type of a classification checkpoint."""
    model_cfg = cfg.model
    if model_cfg.get("pooling", "first") != "first":
        raise unsupported("model.pooling", model_cfg.pooling, "Data2VecTextForSequenceClassification reads the "
                          "first token's output (<s>), not a mean")
    if model_cfg.get("pooler_activation_fn", "tanh") != "tanh":
        raise unsupported("model.pooler_activation_fn", model_cfg.pooler_activation_fn,
                          "Data2VecText's classification head uses tanh")
    dense, out = head_weights(state)
    if dense.shape[0] != dense.shape[1]:
        raise unsupported("classification head inner_dim", dense.shape[0], f"Data2VecText's head is "
                          f"hidden_size ({dense.shape[1]}) wide")
    values = dict(classifier_dropout=model_cfg.get("pooler_dropout", 0.0))
    if cfg.task.get("regression_target", False):
        return dict(values, num_labels=out.shape[0], problem_type="regression")
    names = class_names(label_dictionary, out.shape[0])
    return dict(values, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
                problem_type="single_label_classification")


def head_weights(state: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The (dense, out_proj) weights of the checkpoint's only classification head."""
    heads = sorted({k.split(".")[1] for k in state if k.startswith("classification_heads.")})
    if len(heads) != 1:
        raise unsupported("classification_heads", heads or None, "Data2VecTextForSequenceClassification has "
                          "exactly one head")
    prefix = f"classification_heads.{heads[0]}."
    return state[prefix + "dense.weight"], state[prefix + "out_proj.weight"]


def class_names(label_dictionary: Optional[Path], num_labels: int) -> List[str]:
    """Class i is the label dictionary's (nspecial + i)-th symbol, as sentence_prediction encodes labels;
    without the dictionary, transformers' default names."""
    if label_dictionary is None:
        logger.warning("no label dictionary: the exported classes are named LABEL_0, LABEL_1, ...")
        return [f"LABEL_{i}" for i in range(num_labels)]
    d = Dictionary.load(str(label_dictionary))
    names = d.symbols[d.nspecial:d.nspecial + num_labels]
    if len(names) != num_labels:
        raise HFConversionError(f"label_dictionary={label_dictionary} has {len(names)} labels, the checkpoint's "
                                f"head {num_labels}; nothing was written")
    return names


def hf_state(encoder_cfg, state: Dict[str, torch.Tensor], classification: bool) -> Dict[str, torch.Tensor]:
    """Our model state -> the HF model's (prefixed for the classification model)."""
    from d2v_plugin.text.model import encoder_config

    version = version_of(encoder_cfg)
    key_map = V1_ENCODER_KEYS if version == 1 else V2_ENCODER_KEYS
    if classification:
        key_map = key_map + HEAD_KEYS
    out = rename(state, key_map, "data2vec_text checkpoint", drop=NOT_EXPORTED)
    out = split_fused_qkv(out)
    tcfg = encoder_config(encoder_cfg.transformer)
    words = out["embeddings.word_embeddings.weight"].float()
    if not tcfg.no_scale_embedding:  # fairseq multiplies the looked-up rows by sqrt(dim): the same products
        out["embeddings.word_embeddings.weight"] = words * math.sqrt(tcfg.encoder.embed_dim)
    out["embeddings.token_type_embeddings.weight"] = torch.zeros(1, words.size(1))
    if classification:
        out = {(k if k.startswith("classifier.") else HF_BASE_PREFIX + k): v for k, v in out.items()}
    return out


def split_fused_qkv(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``attention.self.qkv.*`` (data2vec 2.0: rows q, k, v) -> ``attention.self.{query,key,value}.*``."""
    out = {}
    for key, value in state.items():
        if ".attention.self.qkv." not in key:
            out[key] = value
            continue
        for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
            out[key.replace(".qkv.", f".{name}.")] = part.clone()
    return out


def build_hf_model(values: dict, tensors: Dict[str, torch.Tensor], classification: bool):
    """The HF model with ``tensors`` loaded strictly (every HF parameter from our checkpoint)."""
    from transformers import Data2VecTextConfig, Data2VecTextForSequenceClassification, Data2VecTextModel

    config = Data2VecTextConfig(**values)
    with torch.random.fork_rng(devices=[]):  # HF's random init must not move the caller's generator
        if classification:
            model = Data2VecTextForSequenceClassification(config)
        else:
            model = Data2VecTextModel(config, add_pooling_layer=False)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise HFConversionError(f"the converted weights do not fit the converted Data2VecTextConfig: {e}; "
                                f"nothing was written") from None
    return model.eval()


# -- which spm.model / dict.txt ---------------------------------------------------------------------------------

def tokenizer_files(cfg, checkpoint_path: Path, classification: bool, spm_model, dictionary,
                    label_dictionary) -> Dict[str, Path]:
    """``spm_model``, ``dictionary`` (and ``label_dictionary``): given, or in the checkpoint's data-bin."""
    data = cfg.task.get("data") if cfg.get("task") is not None else None
    root = Path(fairseq_utils.split_paths(data)[0]) if isinstance(data, str) and data else None
    defaults = {"spm_model": "spm.model", "dictionary": "input0/dict.txt" if classification else "dict.txt"}
    given = {"spm_model": spm_model, "dictionary": dictionary}
    files = {}
    for name, default in defaults.items():
        path = Path(given[name]) if given[name] is not None else (root / default if root else None)
        if path is None or not path.is_file():
            where = "given" if given[name] is not None else f"from cfg.task.data={data!r} of {checkpoint_path}"
            raise HFConversionError(f"{name}={path}: no such file ({where}); the tokenizer needs the SentencePiece "
                                    f"model and fairseq dict.txt the model was trained with: pass them as "
                                    f"spm_model= / dictionary=; nothing was written")
        files[name] = path
    if classification:
        labels = Path(label_dictionary) if label_dictionary is not None else (root / "label/dict.txt" if root else None)
        if label_dictionary is not None and not labels.is_file():
            raise HFConversionError(f"label_dictionary={labels}: no such file; nothing was written")
        if labels is not None and labels.is_file():
            files["label_dictionary"] = labels
    return files


def dictionary_symbols(path: Path) -> List[str]:
    """The task's dictionary: ``dict.txt`` after fairseq's 4 specials, ``<mask>`` added as masked_lm and
    sentence_prediction add it."""
    d = Dictionary.load(str(path))
    d.add_symbol("<mask>")
    return list(d.symbols)


def check_dictionary(encoder_cfg, symbols: List[str], state: Dict[str, torch.Tensor], path: Path) -> None:
    """``dict.txt`` must be the one the checkpoint was trained with: same size, same digest if it stored one."""
    if symbols[:4] != ["<s>", "<pad>", "</s>", "<unk>"]:
        raise HFConversionError(f"dictionary={path}: not a fairseq dictionary (specials {symbols[:4]}); "
                                f"nothing was written")
    rows = next(v.size(0) for k, v in state.items() if k.endswith("embed_tokens.weight") and "ema_teacher" not in k)
    if rows != len(symbols):
        raise HFConversionError(f"dictionary={path} has {len(symbols)} symbols (with <mask>) but the checkpoint's "
                                f"embedding {rows}: not its dictionary; nothing was written")
    digest = encoder_cfg.get("dictionary_digest")
    if digest is not None and digest != dictionary_digest(symbols):
        raise HFConversionError(f"dictionary={path} lists other symbols (or another order) than the checkpoint "
                                f"was trained with (model.dictionary_digest); nothing was written")


# -- tokenizer ----------------------------------------------------------------------------------------------------

def protobuf_fields(buf: bytes) -> Iterator[Tuple[int, object]]:
    """``(field number, value)`` of a protobuf message: ints for varints, bytes otherwise.

    Enough of the wire format to read a SentencePiece model without the protobuf package.
    """
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = buf[i:i + size], i + size
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        else:
            raise HFConversionError(f"not a SentencePiece model (protobuf wire type {wire})")
        yield key >> 3, value


def _varint(buf: bytes, i: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


# SentencePiece ModelProto: pieces = 1 (piece = 1, score = 2, type = 3), trainer_spec = 2 (model_type = 3,
# treat_whitespace_as_suffix = 24), normalizer_spec = 3 (precompiled_charsmap = 2, add_dummy_prefix = 3,
# remove_extra_whitespaces = 4, escape_whitespaces = 5). Piece types: 1 normal, 2 unknown, 3 control.
PIECE_NORMAL, PIECE_UNKNOWN, PIECE_CONTROL = 1, 2, 3
MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


def read_spm(path: Path) -> dict:
    """What the tokenizer needs from a SentencePiece model: pieces ``(piece, score, type)``, model type and
    normaliser settings (proto2 defaults where a field is absent)."""
    top = list(protobuf_fields(Path(path).read_bytes()))
    pieces = []
    for _, raw in (f for f in top if f[0] == 1):
        p = dict(protobuf_fields(raw))
        score = struct.unpack("<f", p[2])[0] if 2 in p else 0.0
        pieces.append((p[1].decode("utf-8"), score, p.get(3, PIECE_NORMAL)))
    trainer = dict(protobuf_fields(next((v for f, v in top if f == 2), b"")))
    norm = dict(protobuf_fields(next((v for f, v in top if f == 3), b"")))
    return dict(pieces=pieces, model_type=MODEL_TYPES.get(trainer.get(3, 1), str(trainer.get(3))),
                whitespace_suffix=bool(trainer.get(24, 0)), charsmap=norm.get(2, b""),
                dummy_prefix=bool(norm.get(3, 1)), remove_extra_whitespaces=bool(norm.get(4, 1)),
                escape_whitespaces=bool(norm.get(5, 1)))


def check_spm(spm: dict, path: Path) -> None:
    """Refuse SentencePiece settings the exported Unigram tokenizer would not reproduce exactly."""
    if spm["model_type"] != "unigram":
        raise unsupported(f"{path}: model_type", spm["model_type"], "the exported tokenizer reproduces "
                          "SentencePiece unigram models only (manifests.text_manifest --model-type unigram)")
    if spm["whitespace_suffix"]:
        raise unsupported(f"{path}: treat_whitespace_as_suffix", True, "the tokenizer puts \u2581 in front")
    if not spm["escape_whitespaces"]:
        raise unsupported(f"{path}: escape_whitespaces", False, "the tokenizer escapes spaces as \u2581")
    odd = sorted({t for _, _, t in spm["pieces"]} - {PIECE_NORMAL, PIECE_UNKNOWN, PIECE_CONTROL})
    if odd:
        raise unsupported(f"{path}: piece types", odd, "user-defined, byte or unused pieces")


def unigram_vocab(spm: dict, symbols: List[str], spm_path: Path) -> List[Tuple[str, float]]:
    """``(symbol, score)`` in fairseq dictionary order: the SentencePiece score of each piece, 0 for the
    specials (which are matched as special tokens, never by the Unigram lattice's scores)."""
    scores = {p: s for p, s, t in spm["pieces"] if t == PIECE_NORMAL}
    specials = {"<s>", "<pad>", "</s>", "<unk>", "<mask>"}
    ordinary = [s for s in symbols if s not in specials]
    missing = sorted(set(scores) - set(ordinary))
    extra = sorted(set(ordinary) - set(scores))
    if missing or extra:
        raise unsupported("dictionary", f"{len(missing)} pieces of {spm_path} missing, {len(extra)} symbols that "
                          f"are not its pieces (e.g. {(missing + extra)[:3]})", "our pipeline segments with every "
                          "piece and reads one outside dict.txt as <unk>; a tokenizers Unigram vocabulary must be "
                          "exactly the pieces")
    return [(s, scores.get(s, 0.0)) for s in symbols]


def template_of(task_cfg, symbols: List[str]) -> Tuple[List[str], List[str]]:
    """The special symbols around a sentence ``(before, between a pair's sentences)``; ``</s>`` ends each
    sentence (binarisation appends it). masked_lm prepends ``<s>``; sentence_prediction its ``init_token``
    and ``separator_token`` (ids)."""
    if task_cfg.get("_name") == "sentence_prediction":
        init, sep = task_cfg.get("init_token"), task_cfg.get("separator_token")
        return ([symbols[init]] if init is not None else []), ([symbols[sep]] if sep is not None else [])
    return ["<s>"], ["</s>"]  # masked_lm has no pairs: RoBERTa's convention


def build_tokenizer(spm_path: Path, symbols: List[str], template: Tuple[List[str], List[str]], max_length: int):
    """A ``PreTrainedTokenizerFast`` giving our pipeline's ids for raw text (module docstring)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    spm = read_spm(spm_path)
    check_spm(spm, spm_path)
    tok = Tokenizer(models.Unigram(unigram_vocab(spm, symbols, spm_path), unk_id=symbols.index("<unk>"),
                                   byte_fallback=False))
    steps = [normalizers.Precompiled(spm["charsmap"])] if spm["charsmap"] else []
    if spm["remove_extra_whitespaces"]:  # SentencePiece collapses runs of spaces and trims both ends
        steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Replace(Regex(r"\A +| +\z"), "")]
    tok.normalizer = normalizers.Sequence(steps)
    prepend = "always" if spm["dummy_prefix"] else "never"
    # split=False: one Viterbi lattice over the whole sentence, as SentencePiece encodes
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme=prepend, split=False)
    tok.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme=prepend, split=False)
    tok.post_processor = template_processor(template, symbols, processors)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        mask_token="<mask>", cls_token="<s>", sep_token="</s>", model_max_length=max_length,
        model_input_names=["input_ids", "attention_mask"])  # no token_type_ids: one segment embedding


def template_processor(template: Tuple[List[str], List[str]], symbols: List[str], processors):
    before, between = template
    single = before + ["$A:0", "</s>"]
    pair = single + between + ["$B:0", "</s>"]
    used = sorted(set(before + between + ["</s>"]))
    return processors.TemplateProcessing(single=" ".join(single), pair=" ".join(pair),
                                         special_tokens=[(s, symbols.index(s)) for s in used])


# -- import -----------------------------------------------------------------------------------------------------

def import_(hf_dir: Path, out_path: Path) -> Path:
    """Convert the HF data2vec-text model in ``hf_dir`` into a ``data2vec_text`` 1.0 checkpoint ``out_path``."""
    from transformers import Data2VecTextConfig

    config = Data2VecTextConfig.from_pretrained(hf_dir)
    model_cfg = our_config_values(config)
    symbols = tokenizer_symbols(hf_dir, config.vocab_size)
    if symbols is not None:
        model_cfg["dictionary_digest"] = dictionary_digest(symbols)
    student = our_student_state(read_hf_weights(hf_dir))
    model = build_our_model(model_cfg, symbols or placeholder_symbols(config.vocab_size))
    state = full_state(model, student)
    model.load_state_dict(state, strict=True)  # proves the checkpoint complete
    task = {"_name": "masked_lm", "tokens_per_sample": model_cfg["max_positions"]}
    if (hf_dir / "dict.txt").is_file():  # what fine-tuning's dictionary check names differences from
        task["data"] = str(hf_dir.resolve())
    checkpoint = {
        "args": None, "cfg": {"model": dict(model_cfg, _name="data2vec_text"), "task": task},
        "model": model.state_dict(), "criterion": None, "last_optimizer_state": None, "task_state": {},
        "optimizer_history": [{"criterion_name": "Data2VecCriterion", "optimizer_name": None,
                               "lr_scheduler_state": {}, "num_updates": 0}],
        "extra_state": {"train_iterator": None, "hf_import": {"source": str(hf_dir), "note": (
            "EMA teacher = copy of the student; regression head freshly initialised")}},
    }
    logger.info("imported %s: the teacher starts as a copy of the student, the regression head is freshly "
                "initialised (HF models have none)", hf_dir)
    return write_checkpoint(checkpoint, out_path)


def our_config_values(config) -> dict:
    """Our ``data2vec_text`` 1.0 model options for an HF ``Data2VecTextConfig`` (all concrete values)."""
    check_hf_options(config)
    activation = dict(HF_ACTIVATIONS)[config.hidden_act]
    max_positions = config.max_position_embeddings - config.pad_token_id - 1
    values = dict(IMPORTED_DATA2VEC_OPTIONS)
    values.update(
        data2vec_version=1, max_positions=max_positions,
        average_top_k_layers=min(values["average_top_k_layers"], config.num_hidden_layers),
        transformer=dict(
            dropout=config.hidden_dropout_prob, attention_dropout=config.attention_probs_dropout_prob,
            activation_dropout=0.0, activation_fn=activation, layernorm_embedding=True, no_scale_embedding=True,
            no_token_positional_embeddings=False, max_source_positions=max_positions,
            encoder=dict(embed_dim=config.hidden_size, ffn_embed_dim=config.intermediate_size,
                         layers=config.num_hidden_layers, attention_heads=config.num_attention_heads,
                         normalize_before=False, learned_pos=True, layerdrop=0.0),
        ),
    )
    return values


def check_hf_options(config) -> None:
    """Refuse HF options our data2vec_text encoder cannot express."""
    if config.hidden_act not in dict(HF_ACTIVATIONS):
        raise refused_on_import("data2vec_text", "hidden_act", config.hidden_act,
                                f"our encoder has {', '.join(dict(HF_ACTIVATIONS))}")
    refused = (
        ("layer_norm_eps", config.layer_norm_eps, FAIRSEQ_LAYER_NORM_EPS, "fairseq's layer norms use 1e-5"),
        ("pad_token_id", config.pad_token_id, FAIRSEQ_PAD,
         "fairseq dictionaries pad with index 1, and positions start after it"),
        ("type_vocab_size", config.type_vocab_size, 1,
         "our encoder has no token types (type 0, HF's default, is folded into the token embeddings)"),
        ("is_decoder", config.is_decoder, False, "a causal decoder"),
        ("add_cross_attention", config.add_cross_attention, False, "cross-attention"),
        ("position_embedding_type", getattr(config, "position_embedding_type", "absolute"), "absolute",
         "relative position embeddings"),
    )
    for option, value, expressible, why in refused:
        if value != expressible:
            raise refused_on_import("data2vec_text", option, value, why)


def read_hf_weights(hf_dir: Path) -> Dict[str, torch.Tensor]:
    """The encoder tensors saved in ``hf_dir`` (safetensors, sharded or not, or pytorch_model.bin), fp32,
    without the ``data2vec_text.`` prefix of models with a head."""
    from safetensors.torch import load_file

    index = hf_dir / "model.safetensors.index.json"
    if (hf_dir / "model.safetensors").is_file():
        tensors = load_file(str(hf_dir / "model.safetensors"))
    elif index.is_file():
        tensors = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            tensors.update(load_file(str(hf_dir / shard)))
    elif (hf_dir / "pytorch_model.bin").is_file():
        tensors = torch.load(hf_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise HFConversionError(f"{hf_dir}: no model.safetensors or pytorch_model.bin; nothing was written")
    return {k[len(HF_BASE_PREFIX):] if k.startswith(HF_BASE_PREFIX) else k: v.float() for k, v in tensors.items()}


def our_student_state(tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """HF encoder tensors -> our student's (``encoder.sentence_encoder.*``), token type 0 folded in.

    HF adds ``token_type_embeddings[0]`` to every token's embedding when no ``token_type_ids`` are given;
    adding it to the token embedding rows first gives the same sums in the same order.
    """
    tensors = dict(tensors)
    token_type = tensors.pop("embeddings.token_type_embeddings.weight", None)
    if token_type is not None:
        words = tensors["embeddings.word_embeddings.weight"]
        tensors["embeddings.word_embeddings.weight"] = words + token_type[0]
    return rename(tensors, HF_TO_V1_KEYS, "Hugging Face data2vec-text model", drop=HF_NOT_IMPORTED)


def tokenizer_symbols(hf_dir: Path, vocab_size: int) -> Optional[List[str]]:
    """The fairseq dictionary of an exported tokenizer (a Unigram vocabulary laid out as ours: 4 specials
    first, ``<mask>`` last), or None (another tokenizer: fine-tuning then compares vocabulary sizes only)."""
    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        return None
    model = json.loads(path.read_text(encoding="utf-8")).get("model", {})
    if model.get("type") != "Unigram":
        return None
    symbols = [piece for piece, _ in model.get("vocab", [])]
    if len(symbols) != vocab_size or symbols[:4] != ["<s>", "<pad>", "</s>", "<unk>"] or symbols[-1] != "<mask>":
        return None
    return symbols


def placeholder_symbols(vocab_size: int) -> List[str]:
    """A dictionary of ``vocab_size`` symbols laid out as fairseq's (only its size and specials matter to
    build the model)."""
    d = Dictionary()
    for i in range(vocab_size - len(d) - 1):
        d.add_symbol(f"madeupword{i:04d}")
    d.add_symbol("<mask>")
    return d.symbols


def build_our_model(model_cfg: dict, symbols: List[str]):
    """Our ``data2vec_text`` 1.0 model for ``model_cfg``, its fresh parts drawn from :data:`IMPORT_SEED`."""
    from d2v_plugin.text.model import Data2VecTextConfig, Data2VecTextEncoder, Data2VecTextModel

    d = Dictionary()
    for s in symbols[d.nspecial:]:
        d.add_symbol(s)
    cfg = OmegaConf.merge(OmegaConf.structured(Data2VecTextConfig), model_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(IMPORT_SEED)
        return Data2VecTextModel(cfg, Data2VecTextEncoder(cfg, d))


def full_state(model, student: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``model``'s state with the imported student and a teacher that is a copy of it."""
    state = model.state_dict()
    prefix, teacher = "encoder.sentence_encoder.", "encoder.ema_teacher.model."
    params = {k for k, _ in model.encoder.sentence_encoder.named_parameters(prefix=prefix[:-1])}
    unknown, missing = sorted(set(student) - set(state)), sorted(params - set(student))
    if unknown or missing:
        raise HFConversionError(f"the HF weights do not fill our encoder: unknown {unknown[:5]}, missing "
                                f"{missing[:5]}; nothing was written")
    for key, value in student.items():
        if state[key].shape != value.shape:
            raise HFConversionError(f"{key}: HF shape {tuple(value.shape)}, ours {tuple(state[key].shape)}; "
                                    f"nothing was written")
        state[key] = value.clone()
        state[teacher + key[len(prefix):]] = value.clone()
    return state
