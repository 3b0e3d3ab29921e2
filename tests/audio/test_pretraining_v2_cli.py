"""data2vec 2.0 speech (``tiny_cpu_v2.yaml``) through the real CLIs: pre-train, resume, CTC fine-tune, decode."""

import math

import pytest
import torch

from tests.audio.test_asr_cli import generate, wer_line
from tests.cli import differing_tensors, hydra_train, json_logs

PRETRAIN_UPDATES = 150


@pytest.fixture(scope="module")
def pretrained_v2(speech_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain_v2")
    proc = hydra_train("examples/audio/pretraining", "tiny_cpu_v2", out / "run",
                       [f"task.data={speech_data}", f"checkpoint.save_dir={out / 'ckpt'}",
                        f"optimization.max_update={PRETRAIN_UPDATES}"])
    return out / "ckpt", proc.stdout + proc.stderr


def test_v2_pretraining_learns_with_clones_and_a_decoder(pretrained_v2):
    ckpt_dir, output = pretrained_v2
    logs = json_logs(output, "train_inner")
    assert len(logs) >= 10, output[-3000:]
    state = torch.load(ckpt_dir / "checkpoint_last.pt", weights_only=True)
    cfg = state["cfg"]["model"]
    assert cfg["data2vec_version"] == 2 and cfg["clone_batch"] == 4
    dim = cfg["encoder_embed_dim"]
    # the loss over the loss of predicting zero (the zero-initialised head starts there, ~1)
    ratios = [r["loss"] / (math.sqrt(dim) * r["target_var"] ** 2) for r in logs]
    first, last = sum(ratios[:3]) / 3, sum(ratios[-3:]) / 3
    assert 0.9 < first < 1.1 and last < 0.7 * first, ratios
    # every sample is masked clone_batch times: more masked frames than one copy of the batch has
    assert all(r["sample_size"] > r["bsz"] * 20 for r in logs), logs[-1]
    model = state["model"]
    assert any(k.startswith("decoder.convs.") for k in model)
    assert any(k.startswith("ema_teacher.model.encoder.blocks.") for k in model)
    assert any(k.startswith("ema_teacher.model.pos_conv.") for k in model)  # the paper's teacher scope
    assert not any(k.startswith("ema_teacher.model.feature_extractor") for k in model)  # shared


def test_v2_resumed_run_equals_uninterrupted_run_bitwise(speech_data, tmp_path):
    common = [f"task.data={speech_data}", "checkpoint.save_interval_updates=10", "dataset.validate_interval_updates=10"]
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    hydra_train("examples/audio/pretraining", "tiny_cpu_v2", tmp_path / "r1",
                common + [f"checkpoint.save_dir={resumed}", "optimization.max_update=10"])
    out = hydra_train("examples/audio/pretraining", "tiny_cpu_v2", tmp_path / "r2",
                      common + [f"checkpoint.save_dir={resumed}", "optimization.max_update=20"])
    assert "Loaded checkpoint" in out.stdout + out.stderr
    hydra_train("examples/audio/pretraining", "tiny_cpu_v2", tmp_path / "r3",
                common + [f"checkpoint.save_dir={straight}", "optimization.max_update=20"])
    different = differing_tensors(resumed / "checkpoint_last.pt", straight / "checkpoint_last.pt")
    assert not different, different[:5]


def test_v2_checkpoint_fine_tunes_with_ctc_and_decodes(speech_data, pretrained_v2, tmp_path):
    """CTC fine-tuning from a v2 checkpoint learns, and fairseq-generate decodes every utterance.

    No WER threshold here: whether the tiny CTC recipe leaves the all-blank plateau within a few hundred
    updates depends on the random init of fairseq's CTC output layer, for v1 as for v2. Measured in one
    process: with the same encoder weights and the same output layer, v1 and v2 fine-tune to the same losses
    step by step; with other output-layer draws, v1 too stalls for 2 of 4 seeds (README, data2vec 2.0).
    """
    ckpt_dir, _ = pretrained_v2
    proc = hydra_train("examples/audio/finetuning", "tiny_cpu", tmp_path / "run",
                       [f"task.data={speech_data}", f"model.w2v_path={ckpt_dir / 'checkpoint_last.pt'}",
                        f"checkpoint.save_dir={tmp_path / 'ckpt'}", "optimization.max_update=200"])
    train = [r["loss"] for r in json_logs(proc.stdout + proc.stderr, "train_inner")]
    assert sum(train[-3:]) / 3 < 0.5 * train[0], train
    tuned = torch.load(tmp_path / "ckpt" / "checkpoint_last.pt", weights_only=True)
    assert not any("ema_teacher" in k or "decoder.convs" in k or "final_proj" in k for k in tuned["model"])
    # the encoder is the pre-trained one (frozen for freeze_finetune_updates, then trained)
    assert any(k.startswith("w2v_encoder.w2v_model.encoder.blocks.") for k in tuned["model"])
    text = generate(speech_data, tmp_path / "ckpt" / "checkpoint_best.pt", "--results-path", tmp_path / "decode")
    _, _, n = wer_line(text)
    assert n == len((speech_data / "test.tsv").read_text().splitlines()) - 1
