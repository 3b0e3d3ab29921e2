"""data2vec_audio with data2vec_version=2: parity with fairseq's data2vec_multi, its checkpoints, our masks."""

import pytest
import torch

from d2v_plugin.audio.model import Data2VecAudioConfig, Data2VecAudioModel
from d2v_plugin.audio.model_v2 import Data2Vec2AudioModel, config_from_data2vec_multi
from d2v_plugin.core.criterion import mean_std, regression_loss
from tests.reference.runner_v2 import run_v2_in_subprocess


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """fairseq's data2vec_multi audio model, run in its own process (shims and colliding names stay there)."""
    return run_v2_in_subprocess("audio", tmp_path_factory.mktemp("reference") / "reference_v2_audio.pt")


def ours_from(reference) -> Data2Vec2AudioModel:
    cfg = Data2VecAudioConfig(**config_from_data2vec_multi(reference["cfg"]))
    model = Data2VecAudioModel.build_model(cfg)
    assert isinstance(model, Data2Vec2AudioModel)
    model.train()
    model.load_state_dict(dict(reference["state_dict"]), strict=True)
    return model


def test_data2vec_multi_state_dict_loads_with_its_teacher(reference):
    model = ours_from(reference)
    ema = reference["state_dict"]["_ema"]
    teacher = model.ema_teacher.model.state_dict()
    assert torch.equal(teacher["encoder.blocks.0.mlp.fc1.weight"], ema["blocks.0.mlp.fc1.weight"])
    assert torch.equal(teacher["pos_conv.convs.1.weight"],
                       ema["modality_encoders.AUDIO.relative_positional_encoder.2.0.weight"])
    assert torch.equal(teacher["encoder.alibi.scale"], ema["modality_encoders.AUDIO.alibi_scale"].view(-1))
    # the student was moved away from the teacher: a copied student would hide a wrong mapping
    assert not torch.equal(model.encoder.blocks[0].mlp.fc1.weight, ema["blocks.0.mlp.fc1.weight"])


def test_loss_equals_data2vec_multi_with_the_same_weights_masks_and_noise(reference):
    model = ours_from(reference)
    inputs = reference["inputs"]
    torch.manual_seed(reference["noise_seed"])  # the decoder's noise tokens: the one random draw
    out = model(inputs["source"], inputs["padding_mask"], mask_indices=inputs["precomputed_mask"])
    assert out["pred"].shape[0] == reference["sample_size"] == int(inputs["precomputed_mask"].sum())
    # the targets: the reference's (B, T, D), one copy per clone, at the masked frames
    expected = reference["targets"].repeat_interleave(2, 0)[inputs["precomputed_mask"]]
    torch.testing.assert_close(out["target"], expected, rtol=1e-5, atol=1e-5)
    loss = regression_loss(out["pred"], out["target"], model.cfg.loss_beta, model.cfg.loss_scale).sum()
    rel = abs(loss.item() - reference["loss"].item()) / abs(reference["loss"].item())
    assert rel <= 1e-5, (loss.item(), reference["loss"].item())
    torch.testing.assert_close(mean_std(out["target"]), reference["target_var"], rtol=1e-5, atol=0)
    torch.testing.assert_close(mean_std(out["pred"]), reference["pred_var"], rtol=1e-5, atol=0)
    # and without the noise (or with other noise) the loss differs: the test sees the decoder's input
    torch.manual_seed(reference["noise_seed"] + 1)
    other = model(inputs["source"], inputs["padding_mask"], mask_indices=inputs["precomputed_mask"])
    other_loss = regression_loss(other["pred"], other["target"], model.cfg.loss_beta, model.cfg.loss_scale).sum()
    assert abs(other_loss.item() - loss.item()) / loss.item() > 1e-5


def test_unsupported_data2vec_multi_options_are_named(reference):
    cfg = dict(reference["cfg"])
    cfg["modalities"] = {"audio": {**cfg["modalities"]["audio"], "learned_alibi": True}}
    with pytest.raises(ValueError, match=r"model\.modalities\.audio\.learned_alibi=True is not supported"):
        config_from_data2vec_multi(cfg)
    with pytest.raises(ValueError, match=r"model\.ema_encoder_only=true"):
        config_from_data2vec_multi({**reference["cfg"], "ema_encoder_only": True})
    with pytest.raises(ValueError, match=r"model\.end_of_block_targets=True"):
        config_from_data2vec_multi({**reference["cfg"], "end_of_block_targets": True})
