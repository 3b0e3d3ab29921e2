"""Utterance classification end to end through the real CLIs: manifests.utterance_labels -> fairseq-hydra-train
(data2vec_audio_classification from the tiny pre-trained checkpoint) -> validation accuracy well above chance,
bit-identical resume, checkpoints that load with weights_only=True and without the pre-training checkpoint; a
multi-label run logging mAP; a data2vec 2.0 encoder, built in-process.

The label: how high the utterance is whistled, the mean pitch rank of its letters (manifests/toy_speech.py) cut
into three equal-sized classes on the training split. A global property of the utterance, as a speaker's pitch or
an accent is; mean pooling can see it.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fairseq import checkpoint_utils, tasks

import d2v_plugin  # noqa: F401  (registers the models fairseq's checkpoint loader rebuilds)
from manifests import utterance_labels
from manifests.toy_speech import ALPHABET
from tests.cli import REPO, differing_tensors, hydra_train, json_logs, module

FINETUNE_UPDATES = 120
RESUME_FROM = 110  # a saved update (save_interval_updates) ten updates before the end
RECIPE = ("examples/audio/classification", "tiny_cpu")
CLASSES = ("low", "mid", "high")


def mean_pitch_rank(text: str) -> float:
    ranks = [ALPHABET.index(c) for c in text if c in ALPHABET]
    return sum(ranks) / len(ranks)


def write_pitch_labels(data: Path, out: Path) -> Path:
    """``ID<TAB>low|mid|high`` for every row of ``data``'s manifests (transcripts from ``SPLIT.wrd``)."""
    rows = {}
    for split in ("train", "valid", "test"):
        paths = [line.split("\t")[0] for line in (data / f"{split}.tsv").read_text().splitlines()[1:]]
        rows[split] = list(zip(paths, (data / f"{split}.wrd").read_text().splitlines()))
    cuts = np.quantile([mean_pitch_rank(t) for _, t in rows["train"]], [1 / 3, 2 / 3])
    with open(out, "w") as f:
        for split_rows in rows.values():
            for path, text in split_rows:
                f.write(f"{Path(path).stem}\t{CLASSES[int(np.searchsorted(cuts, mean_pitch_rank(text), 'right'))]}\n")
    return out


@pytest.fixture(scope="module")
def labelled(speech_data, tmp_path_factory) -> Path:
    """The shared corpus's manifests in a folder of their own, labelled with manifests.utterance_labels."""
    data = tmp_path_factory.mktemp("cls") / "data"
    data.mkdir()
    for split in ("train", "valid", "test"):
        shutil.copy(speech_data / f"{split}.tsv", data)
    labels = write_pitch_labels(speech_data, data.parent / "pitch.tsv")
    out = module("manifests.utterance_labels", data, "--labels", labels).stdout
    assert "labelled 460 rows in 3 split(s) (test, train, valid) with 3 classes" in out
    return data


@pytest.fixture(scope="module")
def finetuned(labelled, pretrained, tmp_path_factory):
    """(checkpoint dir, CLI output, the copy of the pre-training checkpoint it started from)."""
    out = tmp_path_factory.mktemp("cls_ft")
    start = out / "pretrained.pt"  # a copy: later removed, the fine-tuned checkpoint must not need it
    shutil.copy(pretrained[0] / "checkpoint_last.pt", start)
    proc = hydra_train(*RECIPE, out / "run", [
        f"task.data={labelled}", f"model.w2v_path={start}", f"checkpoint.save_dir={out / 'ckpt'}",
        f"optimization.max_update={FINETUNE_UPDATES}", f"checkpoint.save_interval_updates={RESUME_FROM // 2}"])
    return out / "ckpt", proc.stdout + proc.stderr, start


def test_finetuning_classifies_well_above_chance(labelled, finetuned):
    _, output, _ = finetuned
    valid = json_logs(output, "valid")
    labels = (labelled / "valid.lbl").read_text().split()
    chance = 100 * max(labels.count(c) for c in CLASSES) / len(labels)  # always the most frequent class
    assert valid and valid[-1]["valid_num_updates"] == FINETUNE_UPDATES
    assert valid[-1]["valid_accuracy"] >= max(60.0, chance + 25), (chance, [r["valid_accuracy"] for r in valid])
    train = [r["loss"] for r in json_logs(output, "train_inner")]
    assert train[-1] < 0.8 * train[0], train


def test_resumed_run_equals_uninterrupted_run_bitwise(labelled, finetuned, tmp_path):
    ckpt_dir, _, start = finetuned
    (middle,) = ckpt_dir.glob(f"checkpoint_*_{RESUME_FROM}.pt")
    proc = hydra_train(*RECIPE, tmp_path / "run", [
        f"task.data={labelled}", f"model.w2v_path={start}", f"checkpoint.save_dir={tmp_path / 'ckpt'}",
        f"optimization.max_update={FINETUNE_UPDATES}", f"checkpoint.restore_file={middle}"])
    assert "Loaded checkpoint" in proc.stdout + proc.stderr
    assert torch.load(tmp_path / "ckpt" / "checkpoint_last.pt", weights_only=True)["optimizer_history"][-1][
        "num_updates"] == FINETUNE_UPDATES
    different = differing_tensors(ckpt_dir / "checkpoint_last.pt", tmp_path / "ckpt" / "checkpoint_last.pt")
    assert not different, different[:5]


def test_checkpoint_loads_safely_without_the_pretraining_checkpoint(labelled, finetuned, tmp_path):
    ckpt_dir, _, start = finetuned
    path = ckpt_dir / "checkpoint_best.pt"
    state = torch.load(path, weights_only=True)
    assert not any("ema_teacher" in k or "final_proj" in k for k in state["model"])
    assert {"projector.weight", "classifier.weight"} <= set(state["model"])
    assert state["cfg"]["model"]["w2v_args"]["model"]["_name"] == "data2vec_audio"  # the encoder's own config
    names = (labelled / "dict.lbl.txt").read_text().split()[::2]
    assert state["task_state"]["target_dictionary"]["symbols"][4:] == names
    start.unlink(missing_ok=True)  # the resume test has run (module order); nothing may need it now
    (model,), _, task = checkpoint_utils.load_model_ensemble_and_task([str(path)],
                                                                      arg_overrides={"data": str(labelled)})
    assert torch.equal(model.state_dict()["classifier.weight"], state["model"]["classifier.weight"])
    task.load_dataset("test")
    ds = task.datasets["test"]
    batch = ds.collater([ds[i] for i in range(8)])
    with torch.no_grad():
        logits = model.eval()(**batch["net_input"])
    assert logits.shape == (8, 3) and torch.isfinite(logits).all()


def test_data2vec2_encoder_builds_and_trains(labelled, tmp_path):
    """A data2vec 2.0 pre-training checkpoint as model.w2v_path: built as fairseq builds it, a loss that trains."""
    from d2v_plugin.audio.classification_task import UtteranceClassificationConfig
    from d2v_plugin.audio.model import Data2VecAudioConfig, Data2VecAudioModel
    from fairseq.tasks.audio_pretraining import AudioPretrainingConfig

    recipe = OmegaConf.load(REPO / "examples/audio/pretraining/tiny_cpu_v2.yaml")
    model_cfg = OmegaConf.merge(OmegaConf.structured(Data2VecAudioConfig), recipe.model, {"seed": 1})
    encoder = Data2VecAudioModel.build_model(model_cfg)
    task_cfg = OmegaConf.merge(OmegaConf.structured(AudioPretrainingConfig),
                               {"_name": "audio_pretraining", "data": str(labelled), "normalize": True, "tpu": False,
                                "seed": 1})
    checkpoint = {"cfg": {"common": {"seed": 1},
                          "task": OmegaConf.to_container(task_cfg, resolve=True, enum_to_str=True),
                          "model": OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True)},
                  "model": encoder.state_dict(), "args": None, "optimizer_history": [
                      {"criterion_name": None, "optimizer_name": None, "lr_scheduler_state": {}, "num_updates": 0}],
                  "task_state": {}, "extra_state": {}, "last_optimizer_state": None}
    torch.save(checkpoint, tmp_path / "v2.pt")
    run_cfg = OmegaConf.load(REPO / "examples/audio/classification/tiny_cpu.yaml")
    task = tasks.setup_task(OmegaConf.merge(OmegaConf.structured(UtteranceClassificationConfig), {
        "_name": "utterance_classification", "data": str(labelled), "normalize": True, "tpu": False, "seed": 1}))
    model_node = OmegaConf.merge(run_cfg.model, {"w2v_path": str(tmp_path / "v2.pt"), "normalize": True,
                                                 "data": str(labelled), "pooling": "attentive",
                                                 "ddp_backend": "legacy_ddp"})
    model = task.build_model(model_node)
    assert model.w2v_encoder.w2v_model.cfg.data2vec_version == 2 and model.attention is not None
    task.load_dataset("valid")
    ds = task.datasets["valid"]
    batch = ds.collater([ds[i] for i in range(6)])
    criterion = task.build_criterion(OmegaConf.create({"_name": "utterance_classification"}))
    loss, sample_size, logs = criterion(model.train(), batch)
    loss.backward()
    assert sample_size == 6 and torch.isfinite(loss)
    assert model.classifier.weight.grad.abs().sum() > 0
    assert model.w2v_encoder.w2v_model.post_extract_proj.weight.grad is not None  # the encoder trains too


def test_multi_label_run_logs_map_and_keeps_the_best_checkpoint_by_it(speech_data, pretrained, tmp_path):
    """Every letter of the transcript as a label (AudioSet-style rows): validation logs mAP, the best checkpoint
    follows it. 10 updates: the pipeline, not the score (the criterion's mAP is checked by hand in
    tests/audio/test_classification.py)."""
    data = tmp_path / "data"
    data.mkdir()
    with open(tmp_path / "letters.tsv", "w") as f:
        for split in ("train", "valid", "test"):
            shutil.copy(speech_data / f"{split}.tsv", data)
            paths = [line.split("\t")[0] for line in (data / f"{split}.tsv").read_text().splitlines()[1:]]
            for path, text in zip(paths, (speech_data / f"{split}.wrd").read_text().splitlines()):
                f.write(f"{Path(path).stem}\t{','.join(sorted(set(text.replace(' ', ''))))}\n")
    assert utterance_labels.main([str(data), "--labels", str(tmp_path / "letters.tsv"), "--multi-label"]) == 0
    assert len((data / "train.lbl").read_text().splitlines()[0].split()) > 1
    proc = hydra_train(*RECIPE, tmp_path / "run", [
        f"task.data={data}", "task.multi_label=true", "checkpoint.best_checkpoint_metric=mAP",
        f"model.w2v_path={pretrained[0] / 'checkpoint_last.pt'}", f"checkpoint.save_dir={tmp_path / 'ckpt'}",
        "optimization.max_update=10", "checkpoint.save_interval_updates=0", "dataset.validate_interval_updates=0"])
    valid = json_logs(proc.stdout + proc.stderr, "valid")
    assert valid and 0 < valid[-1]["valid_mAP"] <= 100
    best = torch.load(tmp_path / "ckpt" / "checkpoint_best.pt", weights_only=True)["extra_state"]["best"]
    assert best == pytest.approx(valid[-1]["valid_mAP"])  # the metric fairseq kept the best checkpoint by
