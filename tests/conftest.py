"""Shared fixtures: a generated toy speech corpus with manifests and labels, a tiny pre-trained model, and
the toy text corpus (used by the text tests and the Hugging Face text tests).

All are built once per test session through the real command-line tools, as a user would.
"""

import shutil
from pathlib import Path

import pytest

from tests.cli import hydra_train, module

TRAIN_UTTS, TEST_UTTS = 400, 60
PRETRAIN_UPDATES = 300


@pytest.fixture(scope="session")
def speech_data(tmp_path_factory) -> Path:
    """``data/`` with train/valid/test manifests, .wrd/.ltr labels and dict.ltr.txt."""
    root = tmp_path_factory.mktemp("speech")
    module("manifests.toy_speech", root / "audio_train", "--num-utts", TRAIN_UTTS, "--seed", 1)
    module("manifests.toy_speech", root / "audio_test", "--num-utts", TEST_UTTS, "--seed", 2, "--prefix", "test")
    data = root / "data"
    module("manifests.audio_manifest", root / "audio_train", "--dest", data, "--ext", "wav",
           "--valid-percent", 0.1, "--seed", 1)
    module("manifests.audio_manifest", root / "audio_test", "--dest", root / "test_manifest", "--ext", "wav",
           "--valid-percent", 0)
    shutil.copy(root / "test_manifest" / "train.tsv", data / "test.tsv")
    module("manifests.labels", data, "--transcripts", root / "audio_train" / "transcripts.tsv",
           root / "audio_test" / "transcripts.tsv")
    return data


@pytest.fixture(scope="session")
def pretrained(speech_data, tmp_path_factory):
    """A tiny data2vec_audio pre-trained for PRETRAIN_UPDATES updates: (checkpoint dir, CLI output).

    Its TensorBoard curves are in the checkpoint dir's sibling ``tb/``."""
    out = tmp_path_factory.mktemp("pretrain")
    proc = hydra_train("examples/audio/pretraining", "tiny_cpu", out / "run",
                       [f"task.data={speech_data}", f"checkpoint.save_dir={out / 'ckpt'}",
                        f"optimization.max_update={PRETRAIN_UPDATES}", f"common.tensorboard_logdir={out / 'tb'}"])
    return out / "ckpt", proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def text_data(tmp_path_factory):
    """``(pre-training data-bin, classification data-bin)``, made as a user would."""
    root = tmp_path_factory.mktemp("text")
    module("manifests.toy_text", root / "raw", "--docs", 1500, "--cls-train", 320, "--cls-valid", 100, "--seed", 1)
    data, cls = root / "data-bin", root / "cls-bin"
    module("manifests.text_manifest", root / "raw" / "pretrain.txt", "--dest", data, "--vocab-size", 200,
           "--valid-percent", 0.05, "--workers", 1)
    module("manifests.text_manifest", root / "raw" / "cls_train.txt", "--labels", root / "raw" / "cls_train.labels",
           "--valid-input", root / "raw" / "cls_valid.txt", "--valid-labels", root / "raw" / "cls_valid.labels",
           "--spm-model", data / "spm.model", "--srcdict", data / "dict.txt", "--dest", cls, "--workers", 1)
    return data, cls
