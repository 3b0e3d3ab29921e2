"""Images end to end through the real command lines, on digits the test writes as PNG class folders:
manifest script -> fairseq-hydra-train pre-training -> resume -> fine-tuning / linear probe, and
bad inputs failing with the file's name."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils
from PIL import Image

import d2v_plugin  # noqa: F401  (registers the image task and models in this process)
from manifests.toy_images import write_digits

from tests.cli import REPO  # noqa: E402
HYDRA_TRAIN = str(Path(sys.executable).with_name("fairseq-hydra-train"))
PRETRAIN = REPO / "examples" / "image" / "pretraining"
FINETUNE = REPO / "examples" / "image" / "finetuning"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
PER_CLASS = 100  # 1000 digits: 900 train / 100 valid
LOG_RECORD = re.compile(r"\]\[(train_inner|train|valid)\]\[INFO\] - (\{.*\})\s*$")


def manifest_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "manifests.image_manifest", *map(str, args)],
                          cwd=REPO, env=ENV, capture_output=True, text=True)


def hydra_train(config_dir: Path, config: str, data: Path, out: Path, *overrides: str, check: bool = True):
    """Run fairseq-hydra-train; returns (process, {"train_inner"/"train"/"valid": [json records]})."""
    proc = subprocess.run(
        [HYDRA_TRAIN, "--config-dir", str(config_dir), "--config-name", config,
         f"common.user_dir={REPO / 'd2v_plugin'}", f"task.data={data}",
         f"checkpoint.save_dir={out / 'ckpt'}", f"hydra.run.dir={out / 'hydra'}", *overrides],
        cwd=REPO, env=ENV, capture_output=True, text=True,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"fairseq-hydra-train failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    records = {"train_inner": [], "train": [], "valid": []}
    for line in proc.stdout.splitlines():
        m = LOG_RECORD.search(line)
        if m:
            records[m.group(1)].append(json.loads(m.group(2)))
    return proc, records


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Digit PNGs in class folders and their manifests (train/valid/labels.txt)."""
    root = tmp_path_factory.mktemp("digits")
    write_digits(str(root / "images"), per_class=PER_CLASS)
    proc = manifest_cli(root / "images", "--dest", root / "manifests", "--valid-percent", 0.1, "--seed", 1)
    assert proc.returncode == 0, proc.stderr
    return root / "manifests"


@pytest.fixture(scope="module")
def pretrained(digits, tmp_path_factory):
    """The tiny_cpu recipe (100 updates), keeping the checkpoint saved at update 50 as well."""
    out = tmp_path_factory.mktemp("pretrain")
    _, records = hydra_train(PRETRAIN, "tiny_cpu", digits, out, "checkpoint.keep_interval_updates=-1")
    return out / "ckpt", records


def test_manifest_cli_writes_stratified_splits_and_labels(digits):
    labels = (digits / "labels.txt").read_text().split()
    assert labels == [str(d) for d in range(10)]
    for split, per_class in (("train", 90), ("valid", 10)):
        lines = (digits / f"{split}.tsv").read_text().splitlines()
        assert os.path.isdir(lines[0])
        classes = [line.split("\t")[1] for line in lines[1:]]
        assert all(classes.count(c) == per_class for c in labels)


def test_pretraining_loss_goes_down(pretrained):
    _, records = pretrained
    losses = [float(r["loss"]) for r in records["train_inner"]]
    assert len(losses) == 20  # 100 updates logged every 5
    # the first records include the drop from a random regression head; learning goes on after it
    assert np.mean(losses[-4:]) < 0.75 * losses[0] and np.mean(losses[-4:]) < 0.9 * np.mean(losses[2:6]), losses
    assert float(records["valid"][-1]["valid_loss"]) < losses[0]


def test_checkpoints_load_with_weights_only(pretrained):
    ckpt_dir, _ = pretrained
    state = torch.load(ckpt_dir / "checkpoint_last.pt", weights_only=True)
    assert state["cfg"]["model"]["_name"] == "data2vec_image"
    # fairseq steps the teacher when an update starts (task.train_step -> set_num_updates(k)):
    # after 100 updates it has taken 99 EMA steps, and a resumed run takes the 100th first.
    assert int(state["model"]["ema_teacher.num_updates"]) == 99
    teacher = state["model"]["ema_teacher.model.layers.0.fc1.weight"]
    assert not torch.equal(teacher, state["model"]["encoder.layers.0.fc1.weight"])


def test_resume_continues_exactly_like_an_uninterrupted_run(pretrained, digits, tmp_path):
    """Stop at update 30, resume to 50: model, teacher and its update count equal the 100-update
    run's checkpoint at update 50 (same schedules: the stopping point is the only difference)."""
    ckpt_dir, _ = pretrained
    same_schedule = ("+lr_scheduler.max_update=100", "+model.ema_anneal_end_step=100")  # "+": not in the yaml
    hydra_train(PRETRAIN, "tiny_cpu", digits, tmp_path, "optimization.max_update=30", *same_schedule)
    proc, records = hydra_train(PRETRAIN, "tiny_cpu", digits, tmp_path, "optimization.max_update=50", *same_schedule)
    assert re.search(r"Loaded checkpoint \S+checkpoint_last.pt \(epoch \d+ @ 30 updates\)", proc.stdout)
    assert records["train_inner"][0]["num_updates"] == "35"

    resumed = torch.load(tmp_path / "ckpt" / "checkpoint_last.pt", weights_only=True)["model"]
    (straight_path,) = ckpt_dir.glob("checkpoint_*_50.pt")
    straight = torch.load(straight_path, weights_only=True)["model"]
    assert int(resumed["ema_teacher.num_updates"]) == 49  # see test_checkpoints_load_with_weights_only
    assert resumed.keys() == straight.keys()
    for key in resumed:
        assert torch.equal(resumed[key], straight[key]), key


def test_fine_tuning_reaches_accuracy_well_above_chance(pretrained, digits, tmp_path):
    ckpt_dir, _ = pretrained
    _, records = hydra_train(FINETUNE, "tiny_cpu", digits, tmp_path,
                             f"model.model_path={ckpt_dir / 'checkpoint_last.pt'}")
    accuracy = max(float(r["valid_accuracy"]) for r in records["valid"])
    assert accuracy >= 30.0, records["valid"]  # chance: 10%
    best = tmp_path / "ckpt" / "checkpoint_best.pt"
    state = torch.load(best, weights_only=True)
    assert state["cfg"]["model"]["pretrained_model_cfg"]["_name"] == "data2vec_image"
    assert not any("ema_teacher" in k or "final_proj" in k for k in state["model"])

    # fairseq's loader rebuilds it from the checkpoint alone (the encoder config travels with it), and
    # it scores the valid split as logged for the best checkpoint
    (model,), _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(best)], arg_overrides={"model_path": "/nonexistent.pt"})
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    batch = dataset.collater([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        logits, _ = model.eval()(**batch["net_input"])
    assert 100.0 * (logits.argmax(-1) == batch["target"]).float().mean().item() == pytest.approx(accuracy, abs=0.05)


def test_linear_probe_trains_only_the_classifier(pretrained, digits, tmp_path):
    ckpt_dir, _ = pretrained
    pre = torch.load(ckpt_dir / "checkpoint_last.pt", weights_only=True)["model"]
    _, records = hydra_train(FINETUNE, "tiny_cpu_linear_probe", digits, tmp_path,
                             f"model.model_path={ckpt_dir / 'checkpoint_last.pt'}", "optimization.max_update=30")
    assert records["valid"] and "valid_accuracy" in records["valid"][-1]
    probed = torch.load(tmp_path / "ckpt" / "checkpoint_last.pt", weights_only=True)["model"]
    encoder = [k for k in probed if k.startswith("backbone.")]
    assert encoder and all(torch.equal(probed[k], pre[k[len("backbone."):]]) for k in encoder)
    head = probed["classification_heads.sentence_classification_head.proj.weight"]
    assert head.shape == (10, 64) and head.abs().max() > 1e-3  # moved from its 1e-3-scaled init


# -- bad inputs ------------------------------------------------------------------------------------
@pytest.fixture
def bad_images(tmp_path):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / label / f"{i}.jpg")
    whole = (root / "a" / "0.jpg").read_bytes()
    (root / "a" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "b" / "notes.png").write_text("this is text, not a PNG\n")
    return root


def test_manifest_cli_names_each_bad_image_and_writes_nothing(bad_images, tmp_path):
    dest = tmp_path / "manifests"
    proc = manifest_cli(bad_images, "--dest", dest)
    assert proc.returncode == 2
    assert re.search(r"a/truncated.jpg: cannot decode: OSError: .*[Tt]runcated", proc.stderr)
    assert re.search(r"b/notes.png: cannot decode: UnidentifiedImageError", proc.stderr)
    assert "2 unreadable image(s)" in proc.stderr and "--skip-bad" in proc.stderr
    assert not dest.exists()


def test_manifest_cli_skip_bad_leaves_them_out(bad_images, tmp_path):
    (bad_images / "b" / "empty.png").write_bytes(b"")
    dest = tmp_path / "manifests"
    proc = manifest_cli(bad_images, "--dest", dest, "--valid-percent", 0, "--skip-bad")
    assert proc.returncode == 0, proc.stderr
    assert "skipped 3 unreadable image(s)" in proc.stdout and "b/empty.png: empty file" in proc.stderr
    rows = (dest / "train.tsv").read_text().splitlines()[1:]
    assert sorted(rows) == [f"{c}/{i}.jpg\t{c}" for c in "ab" for i in range(3)]
    assert not (dest / "valid.tsv").exists() and sorted(os.listdir(dest)) == ["labels.txt", "train.tsv"]
