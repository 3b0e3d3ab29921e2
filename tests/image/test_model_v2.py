"""data2vec_image with data2vec_version=2: parity with fairseq's data2vec_multi, its checkpoints, our masks,
the teacher's scope and fine-tuning surgery."""

import pytest
import torch

from d2v_plugin.core.criterion import mean_std, regression_loss
from d2v_plugin.image.model import Data2VecImageConfig, Data2VecImageModel
from d2v_plugin.image.model_v2 import Data2Vec2ImageModel, config_from_data2vec_multi, sincos_positions_2d
from tests.reference.runner_v2 import run_v2_in_subprocess

IMAGE = "modality_encoders.IMAGE."


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """fairseq's data2vec_multi image model, run in its own process (shims and colliding names stay there)."""
    return run_v2_in_subprocess("image", tmp_path_factory.mktemp("reference") / "reference_v2_image.pt")


def build(reference, **overrides) -> Data2Vec2ImageModel:
    cfg = Data2VecImageConfig(**{**config_from_data2vec_multi(reference["cfg"]), **overrides})
    model = Data2VecImageModel.build_model(cfg)
    assert isinstance(model, Data2Vec2ImageModel)
    return model.train()


def ours_from(reference) -> Data2Vec2ImageModel:
    model = build(reference)
    model.load_state_dict(dict(reference["state_dict"]), strict=True)
    return model


def losses(model, out) -> dict:
    cfg = model.cfg
    regression = regression_loss(out["pred"], out["target"], cfg.loss_beta, cfg.loss_scale).sum()
    return {"IMAGE_regression": regression, **out.get("extra_losses", {})}


def rel(a, b) -> float:
    a, b = (float(torch.as_tensor(v).detach()) for v in (a, b))
    return abs(a - b) / abs(b)


def test_fixed_positions_equal_the_reference_ones(reference):
    model = build(reference)  # before loading anything: ours are computed
    assert torch.equal(model.positions, reference["state_dict"][IMAGE + "fixed_positional_encoder.positions"])
    assert "positions" not in dict(model.named_parameters())  # a buffer, never trained


def test_data2vec_multi_state_dict_loads_with_its_teacher(reference):
    model = ours_from(reference)
    ema = reference["state_dict"]["_ema"]
    teacher = model.ema_teacher.model.state_dict()
    # the paper's teacher scope: its own patch embedding and [CLS] (ema_local_encoder), prenet and blocks
    for ours, theirs in (("patch_embed.weight", "local_encoder.proj.weight"), ("extra_tokens", "extra_tokens"),
                         ("encoder.prenet.0.attn.qkv.weight", "context_encoder.blocks.0.attn.qkv.weight"),
                         ("encoder.context_norm.weight", "context_encoder.norm.weight")):
        assert torch.equal(teacher[ours], ema[IMAGE + theirs]), ours
    assert torch.equal(teacher["encoder.blocks.1.mlp.fc2.weight"], ema["blocks.1.mlp.fc2.weight"])
    assert not any(k.startswith(("decoder", "final_proj", "positions")) for k in teacher)
    # the student was moved away from the teacher: a copied student would hide a wrong mapping
    assert not torch.equal(model.patch_embed.weight, ema[IMAGE + "local_encoder.proj.weight"])
    assert not torch.equal(model.extra_tokens, ema[IMAGE + "extra_tokens"])
    assert torch.equal(model.final_proj.weight, reference["state_dict"][IMAGE + "decoder.proj.weight"])


def test_loss_equals_data2vec_multi_with_the_same_weights_masks_and_noise(reference):
    model = ours_from(reference)
    inputs = reference["inputs"]
    mask = inputs["precomputed_mask"]
    torch.manual_seed(reference["noise_seed"])  # the decoder's noise tokens: the one random draw
    out = model(inputs["source"], mask_indices=mask)
    assert out["pred"].shape[0] == reference["sample_size"] == int(mask.sum())
    # the targets: the reference's (B, N, D), one copy per clone, at the masked patches; its predictions too
    clones = model.cfg.clone_batch
    torch.testing.assert_close(out["target"], reference["targets"].repeat_interleave(clones, 0)[mask],
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["pred"], reference["predictions"][mask], rtol=1e-5, atol=1e-5)
    ours = losses(model, out)
    assert ours.keys() == reference["losses"].keys() == {"IMAGE_regression", "cls"}
    for name, value in ours.items():
        assert rel(value, reference["losses"][name]) <= 1e-5, (name, value.item(), reference["losses"][name])
    assert rel(sum(ours.values()), reference["loss"]) <= 1e-5
    assert rel(mean_std(out["target"]), reference["target_var"]) <= 1e-5
    assert rel(mean_std(out["pred"]), reference["pred_var"]) <= 1e-5
    # and with other noise the regression loss differs: the test sees the decoder's input
    torch.manual_seed(reference["noise_seed"] + 1)
    other = losses(model, model(inputs["source"], mask_indices=mask))
    assert rel(other["IMAGE_regression"], ours["IMAGE_regression"]) > 1e-5
    assert rel(other["cls"], ours["cls"]) < 1e-6  # the [CLS] loss reads the encoder, never the noise


def test_cls_loss_weight_and_off_switch(reference):
    inputs = reference["inputs"]
    model = ours_from(reference)
    torch.manual_seed(0)
    weighted = model(inputs["source"], mask_indices=inputs["precomputed_mask"])["extra_losses"]["cls"]
    model.cfg.cls_loss = 0.0
    torch.manual_seed(0)
    assert "extra_losses" not in model(inputs["source"], mask_indices=inputs["precomputed_mask"])
    # the weight scales linearly (times the masked patches)
    model.cfg.cls_loss = 0.02
    torch.manual_seed(0)
    doubled = model(inputs["source"], mask_indices=inputs["precomputed_mask"])["extra_losses"]["cls"]
    assert rel(doubled, 2 * weighted) < 1e-6


def test_unsupported_data2vec_multi_options_are_named(reference):
    cfg = reference["cfg"]

    def image_option(**changes):
        return {**cfg, "modalities": {"image": {**cfg["modalities"]["image"], **changes}}}

    for changes, pattern in (
        (dict(use_alibi_encoder=True), r"model\.modalities\.image\.use_alibi_encoder=True is not supported"),
        (dict(num_extra_tokens=0), r"model\.modalities\.image\.num_extra_tokens=0 is not supported"),
        (dict(inverse_mask=False), r"model\.modalities\.image\.inverse_mask=False is not supported"),
        (dict(embed_dim=32), r"model\.modalities\.image\.embed_dim=32 is not supported"),
        (dict(transformer_decoder=True), r"model\.modalities\.image\.transformer_decoder=True"),
        (dict(keep_masked_pct=0.1), r"model\.modalities\.image\.keep_masked_pct=0\.1 is not supported"),
    ):
        with pytest.raises(ValueError, match=pattern):
            config_from_data2vec_multi(image_option(**changes))
    with pytest.raises(ValueError, match=r"model\.ema_encoder_only=true"):
        config_from_data2vec_multi({**cfg, "ema_encoder_only": True})
    with pytest.raises(ValueError, match=r"model\.recon_loss=0\.5 is not supported"):
        config_from_data2vec_multi({**cfg, "recon_loss": 0.5})
    # init_extra_token_zero only sets the initial [CLS]: accepted
    assert config_from_data2vec_multi(image_option(init_extra_token_zero=True))["cls_loss"] == 0.01


def test_sampled_masks_are_inverse_block_masks_per_clone(reference):
    model = build(reference, seed=1)
    model.set_num_updates(3)
    images = reference["inputs"]["source"]
    out = model(images, sample_ids=torch.tensor([5, 6]))
    rows = 2 * model.cfg.clone_batch
    masked_per_row = 64 - int(64 * (1 - model.cfg.mask_prob))  # 12 of the 64 patches kept
    assert out["pred"].shape == (rows * masked_per_row, model.cfg.embed_dim)
    masks = model.sample_mask(rows, torch.tensor([10, 11, 12, 13]))
    assert masks.shape == (rows, 64) and (masks.sum(1) == masked_per_row).all()
    assert len({tuple(m.tolist()) for m in masks}) == rows  # every copy of every image its own mask
    assert torch.equal(masks, model.sample_mask(rows, torch.tensor([10, 11, 12, 13])))
    out["extra_losses"]["cls"].backward()  # the [CLS] loss trains the student's [CLS] and encoder
    assert model.extra_tokens.grad.abs().sum() > 0 and model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_teacher_follows_the_student_patch_embedding_and_cls_by_ema(reference):
    model = ours_from(reference)
    teacher = model.ema_teacher.model
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    model.set_num_updates(1)
    d = model.ema_teacher.decay_at(1)
    for name, student in (("patch_embed.weight", model.patch_embed.weight), ("extra_tokens", model.extra_tokens),
                          ("encoder.blocks.0.attn.qkv.weight", model.encoder.blocks[0].attn.qkv.weight)):
        torch.testing.assert_close(teacher.state_dict()[name], d * before[name] + (1 - d) * student.detach())


def test_shared_patch_embedding_teacher(reference):
    """``ema_transformer_only=true`` (data2vec_multi's ema_local_encoder=false): the teacher has no patch
    embedding of its own and encodes the student's patch embeddings, with its own [CLS]."""
    cfg = {**reference["cfg"]}
    cfg["modalities"] = {"image": {**cfg["modalities"]["image"], "ema_local_encoder": False}}
    model = Data2VecImageModel.build_model(Data2VecImageConfig(**config_from_data2vec_multi(cfg)))
    assert model.cfg.ema_transformer_only
    keys = model.ema_teacher.model.state_dict().keys()
    assert "extra_tokens" in keys and not any(k.startswith("patch_embed") for k in keys)
    model.load_state_dict(dict(reference["state_dict"]), strict=True)  # its EMA patch embedding left out
    inputs = reference["inputs"]
    torch.manual_seed(reference["noise_seed"])
    out = model(inputs["source"], mask_indices=inputs["precomputed_mask"])
    # the only difference from the paper's scope: the student's patch embedding feeds the teacher
    assert out["target"].shape == (reference["sample_size"], 48)
    assert not torch.allclose(out["target"], reference["targets"].repeat_interleave(2, 0)[inputs["precomputed_mask"]])


def test_fine_tuning_surgery_keeps_the_student_encoder(reference):
    model = ours_from(reference).eval()
    images = reference["inputs"]["source"]
    with torch.no_grad():
        before = model.extract_features(images)
    assert before["x"].shape == (2, 65, 48)  # [CLS] first, then the 64 patches; no masking
    assert len(before["layer_results"]) == model.cfg.depth

    tuned = build(reference).eval()
    tuned.remove_pretraining_modules()
    assert tuned.ema_teacher is None and tuned.decoder is None and tuned.final_proj is None
    # a pre-training state dict (ours, or the reference's) loads without its teacher, decoder and head
    tuned.load_state_dict(model.state_dict(), strict=True)
    assert not any(k.startswith(("ema_teacher", "decoder", "final_proj")) for k in tuned.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(tuned.extract_features(images)["x"], before["x"])
    reference_loaded = build(reference).eval()
    reference_loaded.remove_pretraining_modules()
    reference_loaded.load_state_dict(dict(reference["state_dict"]), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(reference_loaded.extract_features(images)["x"], before["x"])


def test_sincos_positions_layout():
    pos = sincos_positions_2d(8, 2, 3)  # 2 frequencies per quarter
    assert pos.shape == (6, 8)
    # patch (row 1, column 2) = index 5: columns first (sin, cos), then rows
    f = torch.tensor([1.0, 0.01])
    expected = torch.cat([torch.sin(2 * f), torch.cos(2 * f), torch.sin(1 * f), torch.cos(1 * f)])
    torch.testing.assert_close(pos[5], expected)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_positions_2d(6, 2, 2)


def test_version_1_is_still_the_default():
    cfg = Data2VecImageConfig(image_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=4,
                              average_top_k_layers=2, num_mask_patches=20, min_mask_patches_per_block=4)
    assert type(Data2VecImageModel.build_model(cfg)) is Data2VecImageModel
    with pytest.raises(ValueError, match=r"model\.data2vec_version=3 must be 1 or 2"):
        Data2VecImageModel.build_model(Data2VecImageConfig(data2vec_version=3))
