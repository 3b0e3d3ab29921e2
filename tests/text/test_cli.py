"""data2vec_text end to end through the real command-line tools, on a generated toy corpus.

toy corpus -> manifests.text_manifest -> fairseq-hydra-train pre-training (loss goes down) -> resume
from checkpoint_last.pt (teacher restored, bit-identical to an uninterrupted run) -> sentence
classification fine-tuning with fairseq's sentence_prediction task (accuracy well above chance).
"""

import shutil

import pytest
import torch

from fairseq import checkpoint_utils

import d2v_plugin  # noqa: F401  (registers the models fairseq's checkpoint loader rebuilds)
from d2v_plugin.core.finetune import dictionary_digest
from tests.cli import differing_tensors, hydra_train, json_logs, module

PRETRAIN_UPDATES = 100
FINETUNE_UPDATES = 60


@pytest.fixture(scope="module")
def pretrained(text_data, tmp_path_factory):
    """A tiny data2vec_text pre-trained for PRETRAIN_UPDATES updates: (checkpoint dir, CLI output)."""
    out = tmp_path_factory.mktemp("pretrain")
    proc = hydra_train("examples/text/pretraining", "tiny_cpu", out / "run",
                       [f"task.data={text_data[0]}", f"checkpoint.save_dir={out / 'ckpt'}",
                        f"optimization.max_update={PRETRAIN_UPDATES}"])
    return out / "ckpt", proc.stdout + proc.stderr


def test_pretraining_loss_goes_down_and_logs_variances(pretrained):
    _, output = pretrained
    logs = json_logs(output, "train_inner")
    assert len(logs) >= 8, output[-3000:]
    losses = [r["loss"] for r in logs]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, losses
    for key in ("target_var", "pred_var", "ema_decay"):
        assert key in logs[-1]
    assert logs[-1]["ema_decay"] > logs[0]["ema_decay"]  # annealed towards ema_end_decay
    assert json_logs(output, "valid"), "validation did not run"


def test_checkpoint_loads_with_weights_only_and_restores_the_teacher(pretrained, text_data):
    ckpt_dir, _ = pretrained
    path = ckpt_dir / "checkpoint_last.pt"
    saved = torch.load(path, weights_only=True)
    teacher_keys = [k for k in saved["model"] if k.startswith("encoder.ema_teacher.model.")]
    assert teacher_keys
    # fairseq's own loader rebuilds the model and loads the teacher as saved (not a copy of the student)
    (model,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides={"data": str(text_data[0])})
    loaded = model.state_dict()
    for k in teacher_keys + ["encoder.ema_teacher.num_updates"]:
        assert torch.equal(loaded[k], saved["model"][k]), k
    fc1 = "layers.0.fc1.weight"
    assert not torch.equal(loaded[f"encoder.ema_teacher.model.{fc1}"], loaded[f"encoder.sentence_encoder.{fc1}"])
    assert int(saved["model"]["encoder.ema_teacher.num_updates"]) == saved["optimizer_history"][-1]["num_updates"] - 1
    # the dictionary's symbols, in order, are remembered for fine-tuning to check against
    assert saved["cfg"]["model"]["dictionary_digest"] == dictionary_digest(model.encoder.dictionary)


def test_resumed_run_equals_uninterrupted_run_bitwise(text_data, tmp_path):
    common = [f"task.data={text_data[0]}", "checkpoint.save_interval_updates=10"]
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    hydra_train("examples/text/pretraining", "tiny_cpu", tmp_path / "r1",
                common + [f"checkpoint.save_dir={resumed}", "optimization.max_update=10"])
    saved = torch.load(resumed / "checkpoint_last.pt", weights_only=True)["model"]
    out = hydra_train("examples/text/pretraining", "tiny_cpu", tmp_path / "r2",
                      common + [f"checkpoint.save_dir={resumed}", "optimization.max_update=20"])
    assert "Loaded checkpoint" in out.stdout + out.stderr
    hydra_train("examples/text/pretraining", "tiny_cpu", tmp_path / "r3",
                common + [f"checkpoint.save_dir={straight}", "optimization.max_update=20"])
    a = torch.load(resumed / "checkpoint_last.pt", weights_only=True)["model"]
    different = differing_tensors(resumed / "checkpoint_last.pt", straight / "checkpoint_last.pt")
    assert not different, different[:5]
    # and the teacher did move on from the one saved at update 10
    key = "encoder.ema_teacher.model.layers.0.fc1.weight"
    assert not torch.equal(a[key], saved[key])


def test_finetuning_classifies_well_above_chance(pretrained, text_data, tmp_path):
    ckpt_dir, _ = pretrained
    # a copy, removed after fine-tuning: the fine-tuned checkpoint must not need it
    pretrain_ckpt = tmp_path / "pretrained.pt"
    shutil.copy(ckpt_dir / "checkpoint_last.pt", pretrain_ckpt)
    proc = hydra_train("examples/text/finetuning", "tiny_cpu", tmp_path / "run",
                       [f"task.data={text_data[1]}", f"model.model_path={pretrain_ckpt}",
                        f"checkpoint.save_dir={tmp_path / 'ckpt'}", f"optimization.max_update={FINETUNE_UPDATES}"])
    output = proc.stdout + proc.stderr
    assert "loaded pre-trained encoder weights" in output
    accuracy = max(r["valid_accuracy"] for r in json_logs(output, "valid"))
    assert accuracy >= 75, output[-3000:]  # two balanced classes: chance is 50

    pretrain_ckpt.unlink()
    path = tmp_path / "ckpt" / "checkpoint_best.pt"
    state = torch.load(path, weights_only=True)
    assert not any("ema_teacher" in k or "regression_head" in k for k in state["model"])
    assert state["cfg"]["model"]["pretrained_model_cfg"]["_name"] == "data2vec_text"
    (model,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides={"data": str(text_data[1])})
    head = "classification_heads.sentence_classification_head.out_proj.weight"
    assert torch.equal(model.state_dict()[head], state["model"][head])


def test_non_utf8_line_is_reported_with_file_and_line(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"a good line\nanother one\n\nna\xefve latin-1\nfine again\n")
    proc = module("manifests.text_manifest", corpus, "--dest", tmp_path / "data-bin", check=False)
    assert proc.returncode == 2
    assert f"{corpus}:4: not valid UTF-8" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "data-bin").exists()
