"""Checkpoints written before the package was reorganised (d2v-plugin 0.1) load unchanged with today's code.

Registered names, config keys and the checkpoint format are part of the product: a user's old pre-training
and fine-tuned checkpoints must keep working. The fixtures (tests/fixtures/legacy_0.1/README.md) were made by
that version's recipes; the fine-tuned ones must load without their pre-training checkpoint (long gone).
"""

import pytest
import torch
from fairseq import checkpoint_utils

import d2v_plugin  # noqa: F401
from tests.cli import REPO

LEGACY = REPO / "tests" / "fixtures" / "legacy_0.1"
CASES = {  # checkpoint -> (data folder its task reads, registered model name)
    "audio_pretraining": (LEGACY / "audio_data", "Data2VecAudioModel"),
    "audio_ctc": (LEGACY / "audio_data", "Data2VecAudioCtc"),
    "image_pretraining": (LEGACY / "image_data", "Data2VecImageModel"),
    "image_classification": (LEGACY / "image_data", "Data2VecImageClassificationModel"),
    "text_pretraining": (LEGACY / "text_data", "Data2VecTextModel"),
    "text_classification": (LEGACY / "text_cls_data", "Data2VecTextClassificationModel"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_legacy_checkpoint_loads_with_every_weight(name):
    path = LEGACY / f"{name}.pt"
    data, cls_name = CASES[name]
    saved = torch.load(path, weights_only=True)["model"]
    (model,), cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides={"data": str(data)})
    assert type(model).__name__ == cls_name
    loaded = model.state_dict()
    assert sorted(loaded) == sorted(saved)
    assert all(torch.equal(loaded[k], saved[k].to(loaded[k].dtype)) for k in saved)


def test_legacy_pretraining_checkpoints_still_train():
    """A forward of the data2vec step on each old pre-training checkpoint gives a finite loss."""
    from d2v_plugin.core.criterion import regression_loss

    torch.manual_seed(0)
    inputs = {"audio_pretraining": lambda m: m(torch.randn(2, 8000), sample_ids=torch.tensor([0, 1])),
              "image_pretraining": lambda m: m(torch.randn(2, 3, m.cfg.image_size, m.cfg.image_size),
                                               sample_ids=torch.tensor([0, 1]))}
    for name, forward in inputs.items():
        (model,), _, _ = checkpoint_utils.load_model_ensemble_and_task(
            [str(LEGACY / f"{name}.pt")], arg_overrides={"data": str(CASES[name][0])})
        model.train()
        out = forward(model)
        loss = regression_loss(out["pred"], out["target"], model.cfg.loss_beta, model.cfg.loss_scale).sum()
        assert torch.isfinite(loss) and out["pred"].shape == out["target"].shape, name
