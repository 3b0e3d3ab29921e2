"""Hugging Face export/import of data2vec text (d2v_plugin/hf/text.py), through the real command-line tools.

toy corpus -> a few pre-training updates (fairseq-hydra-train) -> d2v-export-hf -> transformers gives our
student's hidden states and our pipeline's token ids -> d2v-import-hf -> fine-tuning on the imported
checkpoint (fairseq-hydra-train) -> its export gives our logits. Plus the 2.0 encoder and every option the
conversion refuses, on configs alone.
"""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import transformers  # noqa: E402,F401  (the set-up command installs it; a missing one is an error)

from fairseq import checkpoint_utils  # noqa: E402
from fairseq.data import Dictionary  # noqa: E402

import d2v_plugin  # noqa: E402,F401  (registers the models fairseq's checkpoint loader rebuilds)
from d2v_plugin.hf import text as hf_text  # noqa: E402
from d2v_plugin.hf.common import HFConversionError, read_checkpoint  # noqa: E402
from tests.cli import BIN, REPO, hydra_train, run  # noqa: E402
from tests.reference.text_config import TINY_TEXT  # noqa: E402

UPDATES = 5
TOL = 1e-4
HEAD = "sentence_classification_head"
# two sentences of different lengths: the batch is padded
BATCH = ["the young owl hides under the yard .", "a owl can climb ."]
# raw text as a user would type it: odd spacing (no TAB: it separates a pair's sentences in our data),
# upper case and symbols SentencePiece never saw (-> <unk>), NFKC-normalised characters
RAW = ["the young owl hides under the yard .", "  The   Young owl\u00a0hides\u3000under  the YARD .  ",
       "Owls \u20ac\u20ac sleep \u00e7a va ?", "\ufb01ne \u00bd barn", "a"]


def hf_load(cls, path):
    """A plain ``from_pretrained`` of the exported directory, offline."""
    return cls.from_pretrained(path, local_files_only=True).eval()


def tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def our_model(checkpoint: Path, data: Path):
    (model,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)], arg_overrides={"data": str(data)})
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return (a - b)[mask.bool()].abs().max().item()


# -- the pipeline, once per module ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained(text_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf_pretrain")
    hydra_train("examples/text/pretraining", "tiny_cpu", out / "run",
                [f"task.data={text_data[0]}", f"checkpoint.save_dir={out}", f"optimization.max_update={UPDATES}",
                 "dataset.validate_interval_updates=0", "dataset.disable_validation=true"])
    return out / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def exported(pretrained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf_export") / "hf"
    run([BIN / "d2v-export-hf", pretrained, out])
    return out


@pytest.fixture(scope="module")
def imported(exported, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf_import") / "imported.pt"
    run([BIN / "d2v-import-hf", exported, out])
    return out


@pytest.fixture(scope="module")
def finetuned(imported, text_data, tmp_path_factory):
    """The imported checkpoint fine-tuned with our classification recipe: (checkpoint, CLI output)."""
    out = tmp_path_factory.mktemp("hf_finetune")
    proc = hydra_train("examples/text/finetuning", "tiny_cpu", out / "run",
                       [f"task.data={text_data[1]}", f"model.model_path={imported}", f"checkpoint.save_dir={out}",
                        f"optimization.max_update={UPDATES}", "dataset.validate_interval_updates=0"])
    return out / "checkpoint_last.pt", proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def exported_classifier(finetuned, tmp_path_factory) -> Path:
    from d2v_plugin.hf import export_to_hf

    return export_to_hf(finetuned[0], tmp_path_factory.mktemp("hf_cls") / "hf")


# -- export ----------------------------------------------------------------------------------------------------

def test_exported_encoder_gives_our_hidden_states_on_a_padded_batch(pretrained, exported, text_data):
    from safetensors.torch import load_file
    from transformers import AutoModel

    assert {"config.json", "model.safetensors", "tokenizer.json", "spm.model", "dict.txt"} <= {
        p.name for p in exported.iterdir()}
    assert not any("ema" in k or "regression" in k for k in load_file(str(exported / "model.safetensors")))
    batch = tokenizer(exported)(BATCH, padding=True, return_tensors="pt")
    assert batch["attention_mask"].eq(0).any()  # padded
    with torch.no_grad():
        theirs = hf_load(AutoModel, exported)(**batch).last_hidden_state
        ours, _ = our_model(pretrained, text_data[0])(batch["input_ids"], features_only=True)
    assert max_diff(theirs, ours, batch["attention_mask"]) <= TOL


def pipeline_ids(data: Path, dict_txt: Path, line: str):
    """Our ids for one raw example: text_manifest (strip, SentencePiece, dict.txt, </s>), then <s> in front
    (masked_lm and sentence_prediction's init_token)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(data / "spm.model"))
    d = Dictionary.load(str(dict_txt))
    d.add_symbol("<mask>")
    pieces = " ".join(sp.encode(line.strip(), out_type=str))
    return [d.bos()] + d.encode_line(pieces, append_eos=True, add_if_not_exist=False).tolist()


def test_tokenizer_gives_our_pipeline_ids_for_raw_text(exported, text_data):
    tok = tokenizer(exported)
    data = text_data[0]
    ids = [pipeline_ids(data, data / "dict.txt", line) for line in RAW]
    assert [tok(line)["input_ids"] for line in RAW] == ids
    assert any(3 in x for x in ids)  # <unk> for what SentencePiece does not know
    d = Dictionary.load(str(data / "dict.txt"))
    assert (tok.pad_token_id, tok.unk_token_id, tok.mask_token_id) == (d.pad(), d.unk(), len(d))


def test_classifier_tokenizer_builds_pairs_as_sentence_prediction(exported_classifier, text_data):
    """init_token <s>, then each sentence with its </s>, separator_token </s> before the second."""
    tok = tokenizer(exported_classifier)
    a, b = (pipeline_ids(text_data[1], text_data[1] / "input0" / "dict.txt", s) for s in RAW[:2])
    assert tok(RAW[0], RAW[1])["input_ids"] == a + [2] + b[1:]


def test_exported_classifier_gives_our_logits(finetuned, exported_classifier, text_data):
    from transformers import AutoModelForSequenceClassification

    model = hf_load(AutoModelForSequenceClassification, exported_classifier)
    assert model.config.id2label == {0: "tool", 1: "animal"}  # label/dict.txt order, as sentence_prediction
    batch = tokenizer(exported_classifier)(BATCH, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = model(**batch).logits
        ours, _ = our_model(finetuned[0], text_data[1])(batch["input_ids"], classification_head_name=HEAD)
    assert theirs.shape == (2, 2)
    assert max_diff(theirs, ours, torch.ones(2)) <= TOL


# -- import ----------------------------------------------------------------------------------------------------

def test_import_round_trip_gives_the_same_hf_model(exported, imported, tmp_path):
    from transformers import AutoModel

    state = torch.load(imported, weights_only=True)
    assert state["cfg"]["model"]["_name"] == "data2vec_text"
    model = state["model"]
    for key in ("embed_tokens.weight", "layers.3.fc2.weight"):  # the teacher starts as the student
        assert torch.equal(model[f"encoder.ema_teacher.model.{key}"], model[f"encoder.sentence_encoder.{key}"])
    assert "encoder.regression_head.2.weight" in model  # freshly initialised

    again = hf_text.export(*read_checkpoint(imported)[:2], tmp_path / "again", imported)
    batch = tokenizer(again)(BATCH, padding=True, return_tensors="pt")
    with torch.no_grad():
        a = hf_load(AutoModel, exported)(**batch).last_hidden_state
        b = hf_load(AutoModel, again)(**batch).last_hidden_state
    assert max_diff(a, b, batch["attention_mask"]) <= TOL
    assert (again / "tokenizer.json").read_text() == (exported / "tokenizer.json").read_text()


def test_imported_checkpoint_finetunes_with_our_recipe(finetuned):
    path, output = finetuned
    assert "loaded pre-trained encoder weights" in output
    assert "stores no dictionary_digest" not in output  # the tokenizer's vocabulary gave the digest
    assert torch.load(path, weights_only=True)["optimizer_history"][-1]["num_updates"] == UPDATES


# -- data2vec 1.0 and 2.0 encoders with random weights (every parameter away from its init) ----------------------

def perturbed_encoder(version: int, dictionary: Dictionary):
    from d2v_plugin.text.model import Data2VecTextConfig, Data2VecTextEncoder, Data2VecTextModel
    from d2v_plugin.text.model_v2 import Data2Vec2TextEncoder, Data2Vec2TextModel

    v2 = OmegaConf.load(REPO / "examples/text/pretraining/tiny_cpu_v2.yaml").model if version == 2 else {}
    options = OmegaConf.merge(TINY_TEXT, v2, {"max_positions": 64, "ema_anneal_end_step": 10, "seed": 1,
                                              "average_top_k_layers": 3, "transformer": {"max_source_positions": 64}})
    options.pop("_name", None)
    cfg = OmegaConf.merge(OmegaConf.structured(Data2VecTextConfig), options)
    gen = torch.Generator().manual_seed(version)
    encoder = (Data2Vec2TextEncoder if version == 2 else Data2VecTextEncoder)(cfg, dictionary)
    model = (Data2Vec2TextModel if version == 2 else Data2VecTextModel)(cfg, encoder).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return cfg, model


@pytest.mark.parametrize("version", [1, 2])
def test_encoder_maps_exactly_with_random_weights(version, text_data, tmp_path):
    """data2vec 2.0's fused qkv is split, its norm1/norm2 are the post-LN norms; 1.0's names map one to one."""
    from transformers import AutoModel

    data = text_data[0]
    d = Dictionary.load(str(data / "dict.txt"))
    d.add_symbol("<mask>")
    cfg, model = perturbed_encoder(version, d)
    full = OmegaConf.create({"model": dict(OmegaConf.to_container(cfg), _name="data2vec_text"),
                             "task": {"_name": "masked_lm", "data": str(data)}})
    out = hf_text.export(full, model.state_dict(), tmp_path / "hf", Path("in-memory.pt"))
    batch = tokenizer(out)(BATCH, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = hf_load(AutoModel, out)(**batch).last_hidden_state
        ours, _ = model(batch["input_ids"], features_only=True)
    assert max_diff(theirs, ours, batch["attention_mask"]) <= TOL


# -- what the conversion refuses (configs only) ------------------------------------------------------------------

def model_config(**overrides):
    cfg = OmegaConf.create(dict(TINY_TEXT, _name="data2vec_text"))
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def test_the_tiny_config_converts():
    values = hf_text.hf_config_values(model_config())
    assert (values["hidden_size"], values["max_position_embeddings"], values["hidden_act"]) == (32, 26, "gelu")


@pytest.mark.parametrize("option, value", [
    ("transformer.encoder.normalize_before", True),
    ("transformer.layernorm_embedding", False),
    ("transformer.no_token_positional_embeddings", True),
    ("transformer.encoder.learned_pos", False),
    ("transformer.encoder.layers_to_keep", "0,1"),
    ("transformer.encoder.xformers_att_config", "{}"),
    ("data2vec_version", 3),
])
def test_export_refuses_option(option, value):
    with pytest.raises(HFConversionError, match=rf"^model\.{option}={value}: cannot be expressed"):
        hf_text.hf_config_values(model_config(**{option: value}))


@pytest.mark.parametrize("option, value", [("prenet_depth", 1), ("norm_eps", 1e-6)])
def test_export_refuses_v2_option(option, value):
    with pytest.raises(HFConversionError, match=rf"^model\.{option}={value}: cannot be expressed"):
        hf_text.hf_config_values(model_config(data2vec_version=2, **{option: value}))


def classification_case(**model):
    cfg = OmegaConf.create({"model": dict({"_name": "data2vec_text_classification", "pooling": "first",
                                           "pooler_activation_fn": "tanh"}, **model),
                            "task": {"_name": "sentence_prediction"}})
    head = {f"classification_heads.{HEAD}.dense.weight": torch.zeros(4, 4),
            f"classification_heads.{HEAD}.out_proj.weight": torch.zeros(2, 4)}
    return cfg, head


@pytest.mark.parametrize("option, value", [("pooling", "mean"), ("pooler_activation_fn", "relu")])
def test_classification_export_refuses_option(option, value):
    cfg, state = classification_case(**{option: value})
    with pytest.raises(HFConversionError, match=rf"^model\.{option}={value}: cannot be expressed"):
        hf_text.classification_config_values(cfg, state, None)


def test_classification_export_refuses_two_heads():
    cfg, state = classification_case()
    state.update({k.replace(HEAD, "other"): v for k, v in state.items()})
    with pytest.raises(HFConversionError, match=r"^classification_heads=\['other', 'sentence_classification_head'\]"):
        hf_text.classification_config_values(cfg, state, None)


@pytest.mark.parametrize("option, value", [
    ("layer_norm_eps", 1e-12), ("pad_token_id", 0), ("type_vocab_size", 2), ("is_decoder", True),
    ("add_cross_attention", True), ("hidden_act", "silu"),
])
def test_import_refuses_option(option, value):
    from transformers import Data2VecTextConfig

    config = Data2VecTextConfig(**dict(dict(layer_norm_eps=1e-5, type_vocab_size=1), **{option: value}))
    with pytest.raises(HFConversionError, match=rf"^config.json {option}={value}: our data2vec_text cannot express"):
        hf_text.our_config_values(config)


def test_tokenizer_refuses_a_bpe_sentencepiece_model(text_data, tmp_path):
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(input=str(text_data[0].parent / "raw" / "pretrain.txt"), model_type="bpe",
                                   model_prefix=str(tmp_path / "bpe"), vocab_size=60, minloglevel=2,
                                   input_sentence_size=2000, num_threads=1)
    with pytest.raises(HFConversionError, match=r"model_type=bpe: cannot be expressed.*--model-type unigram"):
        hf_text.build_tokenizer(tmp_path / "bpe.model", hf_text.dictionary_symbols(text_data[0] / "dict.txt"),
                                (["<s>"], ["</s>"]), 64)


def test_export_without_the_spm_model_names_the_option_and_writes_nothing(pretrained, tmp_path):
    cfg, state, _ = read_checkpoint(pretrained)
    cfg.task.data = str(tmp_path / "gone")
    with pytest.raises(HFConversionError, match=r"^spm_model=.*gone/spm\.model: no such file.*spm_model="):
        hf_text.export(cfg, state, tmp_path / "hf", pretrained)
    cfg.model.transformer.encoder.normalize_before = True
    with pytest.raises(HFConversionError, match=r"normalize_before=True"):
        hf_text.export(cfg, state, tmp_path / "hf", pretrained)
    assert not list(tmp_path.glob("*hf*"))


def test_cli_takes_tokenizer_files_from_elsewhere_when_the_data_bin_moved(pretrained, exported, text_data,
                                                                          tmp_path):
    """``--spm-model`` / ``--dictionary``: the same tokenizer as from the checkpoint's own data-bin."""
    import shutil

    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("spm.model", "dict.txt"):
        shutil.copy(text_data[0] / name, moved / name)
    out = tmp_path / "hf"
    run([BIN / "d2v-export-hf", pretrained, out, "--spm-model", moved / "spm.model", "--dictionary",
         moved / "dict.txt"])
    assert (out / "tokenizer.json").read_text() == (exported / "tokenizer.json").read_text()
    proc = run([BIN / "d2v-export-hf", pretrained, tmp_path / "hf2", "--spm-model", tmp_path / "nowhere.model"],
               check=False)
    assert proc.returncode == 1 and "nowhere.model" in proc.stderr and not (tmp_path / "hf2").exists()
