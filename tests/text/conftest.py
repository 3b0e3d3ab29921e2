"""Text CLI fixtures: the generated toy corpus, shared by the data2vec 1.0 and 2.0 CLI tests (built once)."""

import pytest

from tests.cli import module


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
