"""Shared fixtures: a generated toy speech corpus with manifests and labels, and a tiny pre-trained model.

Both are built once per test session through the real command-line tools, as a user would.
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
    """A tiny data2vec_audio pre-trained for PRETRAIN_UPDATES updates: (checkpoint dir, CLI output)."""
    out = tmp_path_factory.mktemp("pretrain")
    proc = hydra_train("examples/audio/pretraining", "tiny_cpu", out / "run",
                       [f"task.data={speech_data}", f"checkpoint.save_dir={out / 'ckpt'}",
                        f"optimization.max_update={PRETRAIN_UPDATES}"])
    return out / "ckpt", proc.stdout + proc.stderr
