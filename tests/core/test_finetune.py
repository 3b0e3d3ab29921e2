"""core.finetune: safe checkpoint loading, and fine-tuned checkpoints that reload without the pre-training one.

The end-to-end tests fine-tune a tiny pre-training checkpoint (built here, not trained) for two updates
through the real ``fairseq-hydra-train``, delete the pre-training checkpoint and reload the fine-tuned one
with fairseq's own loader, for images and for text.
"""

import os
import shlex

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from fairseq import checkpoint_utils
from fairseq.data import Dictionary, indexed_dataset
from fairseq.dataclass.utils import merge_with_parent

import d2v_plugin  # noqa: F401  (registers the models and tasks fairseq's loader rebuilds)
from d2v_plugin.core.finetune import dictionary_digest, load_checkpoint, pretrained_config
from d2v_plugin.image.classification import Data2VecImageClassificationConfig
from d2v_plugin.image.model import Data2VecImageConfig, Data2VecImageModel
from d2v_plugin.text.model import Data2VecTextConfig, Data2VecTextEncoder, Data2VecTextModel
from manifests.image_manifest import main as image_manifest
from manifests.toy_images import write_digits
from tests.cli import hydra_train
from tests.reference.image_config import TINY_IMAGE
from tests.reference.text_config import TINY_TEXT, make_dictionary

FAST = ["optimization.max_update=2", "common.log_interval=1", "checkpoint.no_save_optimizer_state=true"]


def save_checkpoint(path, model_cfg: dict, state_dict: dict) -> None:
    """What fairseq's trainer writes and its loader needs, minus the optimizer state."""
    torch.save({"cfg": {"model": model_cfg}, "model": state_dict, "extra_state": {"train_iterator": None},
                "optimizer_history": [{"num_updates": 1, "optimizer_name": "Adam", "lr_scheduler_state": {}}]},
               path)


def resolved(model_cfg) -> dict:
    """A model config as the trainer saves it: interpolations (``${common.seed}``) resolved."""
    run = OmegaConf.create({"common": {"seed": 1}, "model": model_cfg})
    return OmegaConf.to_container(run.model, resolve=True, enum_to_str=True)


def image_checkpoint(path) -> None:
    torch.manual_seed(0)
    model = Data2VecImageModel(Data2VecImageConfig(**TINY_IMAGE))
    save_checkpoint(path, {**resolved(OmegaConf.structured(model.cfg)), "_name": "data2vec_image"},
                    model.state_dict())


# -- load_checkpoint ---------------------------------------------------------------------------------------
def test_load_checkpoint_returns_what_fairseq_loads(tmp_path):
    path = tmp_path / "pre.pt"
    image_checkpoint(path)
    ours, theirs = load_checkpoint(str(path)), checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert isinstance(ours["cfg"], DictConfig) and ours.keys() == theirs.keys()
    assert OmegaConf.to_container(ours["cfg"]) == OmegaConf.to_container(theirs["cfg"])
    assert ours["optimizer_history"] == theirs["optimizer_history"]
    assert all(torch.equal(ours["model"][k], v) for k, v in theirs["model"].items())


def test_missing_checkpoint_names_the_option_and_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"model.w2v_path={tmp_path / 'nope.pt'}: no such checkpoint"):
        load_checkpoint(str(tmp_path / "nope.pt"), option="model.w2v_path")


class Payload:
    """Unpickling it runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


@pytest.mark.parametrize("force_unsafe", [False, True])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch, force_unsafe):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": {}, "cfg": Payload(marker)}, path)
    if force_unsafe:  # overrides torch's default weights_only, never an explicit one
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError, match=f"model.model_path={path}: torch refuses") as e:
        load_checkpoint(str(path))
    assert e.value.__cause__ is not None and not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: a plain unpickling does run it
    assert marker.exists()


@pytest.mark.parametrize("force_unsafe", [False, True])
def test_fairseqs_own_loader_refuses_it_too(tmp_path, monkeypatch, force_unsafe):
    """fairseq's load_checkpoint_to_cpu (resume, fairseq-generate --path, w2v_path) goes through ours."""
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": {}, "cfg": Payload(marker)}, path)
    if force_unsafe:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError, match=f"^{path}: torch refuses"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert not marker.exists()


def test_fairseqs_ctc_checkpoint_with_its_pickled_dictionary_loads(tmp_path):
    """fairseq's audio_finetuning task saves its target Dictionary object in ``task_state``: allowed, as data."""
    path = tmp_path / "ctc.pt"
    image_checkpoint(path)
    state = torch.load(path, weights_only=True)
    letters = Dictionary()
    for symbol in "ABC|":
        letters.add_symbol(symbol)
    state["task_state"] = {"target_dictionary": letters}
    torch.save(state, path)
    loaded = checkpoint_utils.load_checkpoint_to_cpu(str(path))["task_state"]["target_dictionary"]
    assert isinstance(loaded, Dictionary) and loaded.symbols == letters.symbols and loaded.indices == letters.indices


def test_a_payload_inside_an_allowed_dictionary_is_still_refused(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    smuggler = Dictionary()
    smuggler.symbols.append(Payload(marker))
    torch.save({"model": {}, "task_state": {"target_dictionary": smuggler}}, path)
    with pytest.raises(ValueError, match=f"^{path}: torch refuses"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert not marker.exists()


def test_a_truncated_checkpoint_names_the_intact_ones_beside_it(tmp_path):
    image_checkpoint(tmp_path / "checkpoint_best.pt")
    data = (tmp_path / "checkpoint_best.pt").read_bytes()
    (tmp_path / "checkpoint_last.pt").write_bytes(data[: len(data) - 100])  # cut short by a kill or a full disk
    (tmp_path / "checkpoint_2_100.pt").write_bytes(data[:1000])
    with pytest.raises(ValueError) as e:
        checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "checkpoint_last.pt"))
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'checkpoint_last.pt'}: torch refuses")
    assert f"look intact: {tmp_path / 'checkpoint_best.pt'} (resume from one with checkpoint.restore_file" in message
    assert "checkpoint_2_100.pt" not in message


def test_fairseqs_loader_applies_arg_overrides(tmp_path):
    image_checkpoint(tmp_path / "pre.pt")
    state = checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "pre.pt"), {"drop_path": 0.25})
    assert state["cfg"].model.drop_path == 0.25


@pytest.mark.parametrize("damage", ["truncated", "text"])
def test_damaged_checkpoint_is_a_value_error_naming_it(tmp_path, damage):
    path = tmp_path / "pre.pt"
    image_checkpoint(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a checkpoint\n")
    with pytest.raises(ValueError, match=f"model.model_path={path}: torch refuses") as e:
        load_checkpoint(str(path))
    assert e.value.__cause__ is not None


def test_a_dict_of_tensors_is_not_a_fairseq_checkpoint(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="w.pt: not a fairseq checkpoint"):
        load_checkpoint(str(tmp_path / "w.pt"))


# -- pretrained_config -------------------------------------------------------------------------------------
def run_model_cfg(**model) -> DictConfig:
    """``cfg.model`` as fairseq's build_model sees it: a merged copy whose parent is the run's config."""
    run = OmegaConf.create({"model": {"_name": "data2vec_image_classification", **model}})
    return run, merge_with_parent(Data2VecImageClassificationConfig(), run.model)


def test_first_build_remembers_the_config_in_the_run_config(tmp_path):
    image_checkpoint(tmp_path / "pre.pt")
    run, cfg = run_model_cfg(model_path=str(tmp_path / "pre.pt"))
    state, pretrained = pretrained_config(cfg, "data2vec_image")
    assert state is not None and pretrained["_name"] == "data2vec_image"
    assert pretrained["embed_dim"] == TINY_IMAGE["embed_dim"]
    assert run.model.pretrained_model_cfg == pretrained == cfg.pretrained_model_cfg  # what fairseq saves


def test_no_pretrained_weights_still_remembers_the_architecture(tmp_path):
    image_checkpoint(tmp_path / "pre.pt")
    run, cfg = run_model_cfg(model_path=str(tmp_path / "pre.pt"), no_pretrained_weights=True)
    state, pretrained = pretrained_config(cfg, "data2vec_image")
    assert state is None and run.model.pretrained_model_cfg == pretrained


def test_a_remembered_config_never_reads_model_path():
    saved = {"_name": "data2vec_image", "embed_dim": 8}
    _, cfg = run_model_cfg(model_path="/nonexistent.pt", pretrained_model_cfg=saved)
    assert pretrained_config(cfg, "data2vec_image") == (None, saved)


def test_another_model_is_refused_naming_path_and_name(tmp_path):
    image_checkpoint(tmp_path / "pre.pt")
    _, cfg = run_model_cfg(model_path=str(tmp_path / "pre.pt"))
    with pytest.raises(ValueError, match=f"pre.pt: expected a data2vec_text or d2 pre-training checkpoint, "
                                         f"found model 'data2vec_image'"):
        pretrained_config(cfg, ["data2vec_text", "d2"])


def test_dictionary_digest_compares_symbols_in_order():
    d = make_dictionary()
    assert dictionary_digest(d) == dictionary_digest(list(d.symbols))
    other = make_dictionary()
    other.symbols[5], other.symbols[6] = other.symbols[6], other.symbols[5]
    assert len(other) == len(d) and dictionary_digest(other) != dictionary_digest(d)


# -- fine-tune, delete the pre-training checkpoint, reload ---------------------------------------------------
def finetune_and_reload(tmp_path, config_dir: str, overrides: list) -> tuple:
    """Fine-tune ``tmp_path/pre.pt`` (2 updates), delete it, reload: (saved state, reloaded model, task)."""
    hydra_train(config_dir, "tiny_cpu", tmp_path / "run", [f"model.model_path={tmp_path / 'pre.pt'}",
                f"checkpoint.save_dir={tmp_path / 'ckpt'}", *FAST, *overrides])
    (tmp_path / "pre.pt").unlink()
    path = str(tmp_path / "ckpt" / "checkpoint_last.pt")
    (model,), _, task = checkpoint_utils.load_model_ensemble_and_task([path])
    state = torch.load(path, weights_only=True)
    reloaded = model.state_dict()
    assert reloaded.keys() == state["model"].keys()
    assert all(torch.equal(reloaded[k], v) for k, v in state["model"].items())
    return state, model, task


def test_image_fine_tuned_checkpoint_reloads_without_the_pretraining_one(tmp_path):
    write_digits(str(tmp_path / "images"), per_class=4)
    assert image_manifest([str(tmp_path / "images"), "--dest", str(tmp_path / "data"), "--valid-percent", "0.25",
                           "--seed", "1"]) == 0
    image_checkpoint(tmp_path / "pre.pt")
    state, model, task = finetune_and_reload(tmp_path, "examples/image/finetuning", [f"task.data={tmp_path / 'data'}"])
    saved = state["cfg"]["model"]["pretrained_model_cfg"]
    assert saved["_name"] == "data2vec_image" and saved["embed_dim"] == TINY_IMAGE["embed_dim"]
    logits, _ = model.eval()(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, task.num_classes)


def write_split(path, lines, dictionary: Dictionary) -> None:
    """Binarize ``lines`` with ``dictionary`` into ``path.{bin,idx}`` (what fairseq-preprocess writes)."""
    builder = indexed_dataset.make_builder(f"{path}.bin", "mmap", vocab_size=len(dictionary))
    for line in lines:
        builder.add_item(dictionary.encode_line(line, add_if_not_exist=False, append_eos=True).long())
    builder.finalize(f"{path}.idx")


def classification_bin(root, dictionary: Dictionary):
    """A sentence_prediction data-bin (train/valid) on the tiny vocabulary: w1-w9 sentences are "a"."""
    (root / "input0").mkdir(parents=True)
    (root / "label").mkdir()
    symbols = dictionary.symbols[dictionary.nspecial:-1]  # without <mask>: the task adds it
    (root / "input0" / "dict.txt").write_text("".join(f"{s} 1\n" for s in symbols))
    labels = Dictionary()
    for label in ("a", "b"):
        labels.add_symbol(label)
    labels.save(str(root / "label" / "dict.txt"))
    sentences = [" ".join(f"w{(i * 7 + j) % 10 + 10 * (i % 2)}" for j in range(6)) for i in range(8)]
    for split in ("train", "valid"):
        write_split(root / "input0" / split, sentences, Dictionary.load(str(root / "input0" / "dict.txt")))
        write_split(root / "label" / split, ["a" if i % 2 == 0 else "b" for i in range(8)], labels)


def test_text_fine_tuned_checkpoint_reloads_without_the_pretraining_one(tmp_path):
    dictionary = make_dictionary()
    classification_bin(tmp_path / "cls", dictionary)
    torch.manual_seed(0)
    cfg = OmegaConf.merge(OmegaConf.structured(Data2VecTextConfig), TINY_TEXT)
    model = Data2VecTextModel(cfg, Data2VecTextEncoder(cfg, dictionary))
    model_cfg = {**resolved(cfg), "_name": "data2vec_text",
                 "dictionary_digest": dictionary_digest(dictionary)}  # what data2vec_text's build_model stores
    save_checkpoint(tmp_path / "pre.pt", model_cfg, model.state_dict())
    state, _, task = finetune_and_reload(tmp_path, "examples/text/finetuning",
                                         [f"task.data={tmp_path / 'cls'}", "task.max_positions=24"])
    saved = state["cfg"]["model"]["pretrained_model_cfg"]
    assert saved["_name"] == "data2vec_text" and saved["dictionary_digest"] == dictionary_digest(task.source_dictionary)
    assert not any("ema_teacher" in k or "regression_head" in k for k in state["model"])
