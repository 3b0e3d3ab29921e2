"""data2vec_audio pre-training through the real fairseq-hydra-train CLI, on the generated corpus."""

import math
import shutil

import pytest
import torch

from d2v_plugin.core.errors import ManifestError
from tests.cli import differing_tensors, USER_DIR, hydra_train, json_logs


def unexplained(record, dim):
    """The logged loss over the loss of predicting zero (~1 for a student that has learnt nothing).

    Predicting zero costs ``sum_c t_c^2 / sqrt(dim)`` per position, and the instance-normalised targets
    have zero mean and std ~``target_var`` per channel. The raw loss is no measure of learning here: the
    teacher's targets grow (target_var ~0.56 -> ~0.9) while the student learns, and the tiny recipe's
    zero-initialised head starts at exactly the predict-zero loss.
    """
    return record["loss"] / (math.sqrt(dim) * record["target_var"] ** 2)


def test_pretraining_learns_and_logs_variances(pretrained):
    ckpt_dir, output = pretrained
    logs = json_logs(output, "train_inner")
    assert len(logs) >= 10, output[-3000:]
    dim = torch.load(ckpt_dir / "checkpoint_last.pt", weights_only=True)["cfg"]["model"]["encoder_embed_dim"]
    ratios = [round(unexplained(r, dim), 3) for r in logs]
    first, last = sum(ratios[:3]) / 3, sum(ratios[-3:]) / 3
    assert 0.9 < first < 1.1 and last < 0.7 * first, ratios
    for key in ("target_var", "pred_var", "ema_decay"):
        assert key in logs[-1]
    assert logs[-1]["ema_decay"] > logs[0]["ema_decay"]  # annealed towards ema_end_decay
    assert json_logs(output, "valid"), "validation did not run"


def tensorboard_scalars(logdir) -> dict:
    """``{run/tag: [(step, value), ...]}`` read back from tensorboardX event files (TFRecord framing)."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars = {}
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4  # length, its CRC, the record, its CRC
            for value in event.summary.value:
                scalars.setdefault(f"{path.parent.name}/{value.tag}", []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_curves_hold_the_metrics_that_matter(pretrained):
    """common.tensorboard_logdir works out of the box (tensorboardX is installed by the set-up command)."""
    ckpt_dir, _ = pretrained
    scalars = tensorboard_scalars(ckpt_dir.parent / "tb")
    for tag in ("loss", "target_var", "pred_var", "ema_decay", "feature_var"):
        curve = scalars.get(f"train_inner/{tag}")
        assert curve and len(curve) >= 10, sorted(scalars)
    steps = [step for step, _ in scalars["train_inner/loss"]]
    assert steps == sorted(steps) and steps[-1] >= 280
    assert "valid/loss" in scalars


def test_checkpoints_load_with_weights_only(pretrained):
    ckpt_dir, _ = pretrained
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        state = torch.load(ckpt_dir / name, weights_only=True)
        model = state["model"]
        assert any(k.startswith("ema_teacher.model.layers.") for k in model)
        # fairseq steps the teacher at the start of the next update: it is one update behind
        assert int(model["ema_teacher.num_updates"]) == state["optimizer_history"][-1]["num_updates"] - 1
    assert not list(ckpt_dir.glob("*.tmp"))


def test_resumed_run_equals_uninterrupted_run_bitwise(speech_data, tmp_path):
    common = [f"task.data={speech_data}", "checkpoint.save_interval_updates=15",
              "dataset.validate_interval_updates=15"]
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    hydra_train("examples/audio/pretraining", "tiny_cpu", tmp_path / "r1",
                common + [f"checkpoint.save_dir={resumed}", "optimization.max_update=15"])
    saved = torch.load(resumed / "checkpoint_last.pt", weights_only=True)["model"]
    # (the second invocation also loads the plugin through a user_dir with a trailing slash)
    out = hydra_train("examples/audio/pretraining", "tiny_cpu", tmp_path / "r2",
                      common + [f"checkpoint.save_dir={resumed}", "optimization.max_update=30"],
                      user_dir=USER_DIR + "/")
    assert "Loaded checkpoint" in out.stdout + out.stderr
    hydra_train("examples/audio/pretraining", "tiny_cpu", tmp_path / "r3",
                common + [f"checkpoint.save_dir={straight}", "optimization.max_update=30"])
    a = torch.load(resumed / "checkpoint_last.pt", weights_only=True)["model"]
    different = differing_tensors(resumed / "checkpoint_last.pt", straight / "checkpoint_last.pt")
    assert not different, different[:5]
    # and the teacher did move on from the one saved at update 15
    assert not torch.equal(a["ema_teacher.model.layers.0.fc1.weight"], saved["ema_teacher.model.layers.0.fc1.weight"])


def test_missing_audio_file_fails_with_manifest_row(speech_data, tmp_path):
    """Checked when fairseq's audio_pretraining builds its dataset (the plugin's fix), before any update."""
    from fairseq.data.audio.raw_audio_dataset import FileAudioDataset

    data = tmp_path / "data"
    shutil.copytree(speech_data, data)
    with open(data / "train.tsv", "a") as f:
        f.write("no_such_file.wav\t16000\n")
    rows = len((data / "train.tsv").read_text().splitlines())
    with pytest.raises(ManifestError, match=rf"train.tsv:{rows}: audio file not found: .*no_such_file.wav"):
        FileAudioDataset(str(data / "train.tsv"), sample_rate=16000, min_sample_size=8000)


def test_wrong_user_dir_is_reported(speech_data, tmp_path):
    proc = hydra_train("examples/audio/pretraining", "tiny_cpu", tmp_path / "run",
                       [f"task.data={speech_data}"], user_dir=str(tmp_path / "not_the_plugin"), check=False)
    assert proc.returncode != 0
    assert str(tmp_path / "not_the_plugin") in proc.stdout + proc.stderr
