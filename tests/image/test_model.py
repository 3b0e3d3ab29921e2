"""data2vec_image: numerical parity with fairseq's bundled data2vec_vision, checkpoints, config errors."""

import pytest
import torch

from d2v_plugin.core.criterion import mean_std, regression_loss
from d2v_plugin.image.model import (
    Data2VecImageConfig,
    Data2VecImageModel,
    convert_reference_state_dict,
)
from tests.reference.image_config import TINY_IMAGE, VARIANTS, make_batch
from tests.reference.runner import run_in_subprocess

PARITY_EPS = dict(layer_norm_eps=1e-5)  # the port uses torch's default LayerNorm epsilon


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """fairseq.examples.data2vec's image model run in its own process (it registers our model names)."""
    return run_in_subprocess("image", tmp_path_factory.mktemp("reference") / "reference_image.pt")


def build(**overrides) -> Data2VecImageModel:
    return Data2VecImageModel(Data2VecImageConfig(**{**TINY_IMAGE, **PARITY_EPS, **overrides}))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reference_state_dict_loads_and_gives_the_same_loss(reference, variant):
    ref = reference[variant]
    model = build(**VARIANTS[variant])
    model.train()
    model.load_state_dict(dict(ref["state_dict"]), strict=True)

    # the teacher holds the reference's EMA weights (fused qkv split into q/k/v), not the student's
    ema = ref["state_dict"]["_ema"]
    teacher_attn = model.ema_teacher.model.layers[0].self_attn
    assert torch.equal(teacher_attn.v_proj.weight, ema["blocks.0.attn.qkv.weight"][2 * TINY_IMAGE["embed_dim"]:])
    assert not torch.equal(model.encoder.layers[0].self_attn.v_proj.weight, teacher_attn.v_proj.weight)

    # The port regresses the normed encoder output without its final_proj: an identity head
    # makes our prediction the same function (see the model docstring).
    with torch.no_grad():
        model.final_proj.weight.copy_(torch.eye(TINY_IMAGE["embed_dim"]))
        model.final_proj.bias.zero_()

    images, mask = make_batch()
    out = model(images, mask_indices=mask)
    loss = regression_loss(out["pred"], out["target"], model.cfg.loss_beta, model.cfg.loss_scale).sum()
    assert out["pred"].shape[0] == ref["sample_size"] == int(mask.sum())
    rel = abs(loss.item() - ref["loss"].item()) / abs(ref["loss"].item())
    assert rel <= 1e-5, (variant, loss.item(), ref["loss"].item())
    torch.testing.assert_close(mean_std(out["target"]), ref["target_var"], rtol=1e-5, atol=0)
    torch.testing.assert_close(mean_std(out["pred"]), ref["pred_var"].detach(), rtol=1e-5, atol=0)
    # every token, [CLS] included (the loss barely depends on the [CLS] attention-bias entries)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.extract_features(images)["x"], ref["features"], rtol=1e-5, atol=1e-5)


def test_reference_key_map_rejects_unknown_keys():
    state = {"encoder.blocks.0.attn.unknown": torch.zeros(1)}
    with pytest.raises(KeyError, match="encoder.blocks.0.attn.unknown"):
        convert_reference_state_dict(state)


def test_checkpoint_round_trip_and_fine_tuning_surgery(tmp_path):
    torch.manual_seed(0)
    model = build()
    model.set_num_updates(1)
    path = tmp_path / "m.pt"
    torch.save({"model": model.state_dict()}, path)
    state = torch.load(path, weights_only=True)["model"]
    other = build()
    other.load_state_dict(dict(state), strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    assert int(other.ema_teacher.num_updates) == 1

    # fine-tuning drops the teacher, the head, the mask embedding and the final norm
    other.remove_pretraining_modules()
    other.load_state_dict(dict(state), strict=True)
    assert other.ema_teacher is None and other.final_proj is None and other.mask_emb is None
    feats = other.extract_features(torch.randn(2, 3, 32, 32))["x"]
    assert feats.shape == (2, 1 + 64, TINY_IMAGE["embed_dim"])


def test_sampled_masks_have_the_configured_size():
    torch.manual_seed(0)
    model = build()
    mask = model.sample_mask(16)
    assert mask.shape == (16, 64)
    assert (mask.sum(1) <= TINY_IMAGE["num_mask_patches"]).all()
    out = model(torch.randn(16, 3, 32, 32))
    assert out["pred"].shape[0] == out["target"].shape[0] > 0


@pytest.mark.parametrize("overrides, message", [
    (dict(average_top_k_layers=5), "average_top_k_layers=5"),
    (dict(num_mask_patches=65), "num_mask_patches=65"),
    (dict(patch_size=5), "not a multiple of model.patch_size=5"),
    (dict(ema_transformer_only=False), "ema_transformer_only"),
])
def test_bad_config_values_fail_clearly(overrides, message):
    with pytest.raises(ValueError, match=message):
        build(**overrides)


def test_wrong_image_size_fails_clearly():
    with pytest.raises(ValueError, match="expected 32x32 images"):
        build()(torch.randn(1, 3, 48, 48))
