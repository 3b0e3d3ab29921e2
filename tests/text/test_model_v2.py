"""data2vec_text with data2vec_version=2: parity with fairseq's data2vec_multi, its state dict, our masks,
the teacher's input, checkpoints and fine-tuning surgery."""

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from d2v_plugin.core.criterion import mean_std, regression_loss
from d2v_plugin.text.classification import Data2VecTextClassificationConfig
from d2v_plugin.text.model import Data2VecTextConfig, Data2VecTextModel
from d2v_plugin.text.model_v2 import Data2Vec2TextEncoder, Data2Vec2TextModel, config_from_data2vec_multi
from tests.reference.runner_v2 import run_v2_in_subprocess
from tests.reference.v2_config import CLONE_BATCH, TINY_V2, make_batch_v2, make_dictionary_v2


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """fairseq's data2vec_multi text model, run in its own process (shims and colliding names stay there)."""
    return run_v2_in_subprocess("text", tmp_path_factory.mktemp("reference") / "reference_v2_text.pt")


def task(skip_masking=True):
    return SimpleNamespace(source_dictionary=make_dictionary_v2(), cfg=SimpleNamespace(skip_masking=skip_masking))


def config(reference_cfg: dict, **overrides):
    return OmegaConf.merge(OmegaConf.structured(Data2VecTextConfig), config_from_data2vec_multi(reference_cfg),
                           overrides)


def ours_from(reference) -> Data2Vec2TextModel:
    model = Data2VecTextModel.build_model(config(reference["cfg"]), task())
    assert isinstance(model, Data2Vec2TextModel)
    model.train()
    model.load_state_dict(dict(reference["state_dict"]), strict=True)
    return model


def tiny(**overrides) -> Data2Vec2TextModel:
    """Our model from the reference's tiny text architecture, without the reference."""
    cfg = dict(TINY_V2["text"], max_update=10)
    return Data2VecTextModel.build_model(config(cfg, **overrides), task())


def test_data2vec_multi_state_dict_loads_with_its_teacher(reference):
    model = ours_from(reference)
    ema = reference["state_dict"]["_ema"]  # text: the blocks only, "0.attn.qkv.weight" ...
    teacher = model.encoder.ema_teacher.model.state_dict()
    assert set(teacher) == {f"encoder.blocks.{k}" for k in ema}
    for k, v in ema.items():
        assert torch.equal(teacher[f"encoder.blocks.{k}"], v), k
    # the student was moved away from the teacher: a copied student would hide a wrong mapping
    assert not torch.equal(model.encoder.encoder.blocks[0].mlp.fc1.weight, ema["0.mlp.fc1.weight"])
    embed = reference["state_dict"]["modality_encoders.TEXT.local_encoder.embed_tokens.weight"]
    assert torch.equal(model.encoder.local_encoder.embed_tokens.weight, embed)
    # no layer norm in front of the blocks: the reference's text context encoder has none without a prenet
    assert model.encoder.encoder.context_norm is None


def test_loss_equals_data2vec_multi_with_the_same_weights_masks_and_noise(reference):
    model = ours_from(reference)
    inputs = reference["inputs"]
    mask = inputs["precomputed_mask"]
    torch.manual_seed(reference["noise_seed"])  # the decoder's noise tokens: the one random draw
    out = model(inputs["source"], mask_indices=mask)
    assert out["pred"].shape[0] == reference["sample_size"] == int(mask.sum())
    # the targets: the reference's (B, T, C), one copy per clone, at the masked tokens
    expected = reference["targets"].repeat_interleave(CLONE_BATCH, 0)[mask]
    torch.testing.assert_close(out["target"], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["pred"], reference["predictions"][mask], rtol=1e-4, atol=1e-5)
    loss = regression_loss(out["pred"], out["target"], model.cfg.loss_beta, model.cfg.loss_scale).sum()
    rel = abs(loss.item() - reference["loss"].item()) / abs(reference["loss"].item())
    assert rel <= 1e-5, (loss.item(), reference["loss"].item())
    torch.testing.assert_close(mean_std(out["target"]), reference["target_var"], rtol=1e-5, atol=0)
    torch.testing.assert_close(mean_std(out["pred"]), reference["pred_var"], rtol=1e-5, atol=0)
    # other noise, other loss: the test sees the decoder's input
    torch.manual_seed(reference["noise_seed"] + 1)
    other = model(inputs["source"], mask_indices=mask)
    other_loss = regression_loss(other["pred"], other["target"], model.cfg.loss_beta, model.cfg.loss_scale).sum()
    assert abs(other_loss.item() - loss.item()) / loss.item() > 1e-5


def test_unsupported_data2vec_multi_options_are_named(reference):
    cfg = reference["cfg"]

    def with_text(**text):
        return {**cfg, "modalities": {"text": {**cfg["modalities"]["text"], **text}}}

    with pytest.raises(ValueError, match=r"model\.modalities\.text\.learned_alibi=True is not supported"):
        config_from_data2vec_multi(with_text(learned_alibi=True))
    with pytest.raises(ValueError, match=r"model\.modalities\.text\.mask_length=3 is not supported"):
        config_from_data2vec_multi(with_text(mask_length=3))
    with pytest.raises(ValueError, match=r"model\.modalities\.text\.dropout=0\.2 .*encoder_dropout"):
        config_from_data2vec_multi(with_text(dropout=0.2))
    with pytest.raises(ValueError, match=r"model\.modalities\.text\.ema_local_encoder=True"):
        config_from_data2vec_multi(with_text(ema_local_encoder=True))
    with pytest.raises(ValueError, match=r"model\.ema_encoder_only=true with model\.modalities\.text\.prenet_depth=1"):
        config_from_data2vec_multi(with_text(prenet_depth=1))
    with pytest.raises(ValueError, match=r"model\.end_of_block_targets=True"):
        config_from_data2vec_multi({**cfg, "end_of_block_targets": True})
    with pytest.raises(ValueError, match=r"model\.mae_init=True"):
        config_from_data2vec_multi({**cfg, "mae_init": True})


# -- our masks -------------------------------------------------------------------------------------------
def test_model_masks_each_copy_differently_and_never_padding():
    torch.manual_seed(0)
    model = tiny()
    model.train()
    batch = make_batch_v2("text")
    tokens, padding = batch["source"], batch["padding_mask"]
    seen = {}
    original = model.encoder.sample_mask

    def recording(*args, **kwargs):
        seen["mask"] = original(*args, **kwargs)
        return seen["mask"]

    model.encoder.sample_mask = recording
    out = model(tokens, sample_ids=torch.tensor([3, 4]))
    mask = seen["mask"]
    assert mask.shape == (2 * CLONE_BATCH, tokens.size(1))
    assert not (mask & padding.repeat_interleave(CLONE_BATCH, 0)).any()
    assert len(set(mask.sum(1).tolist())) == 1 and out["pred"].shape[0] == int(mask.sum())
    assert not torch.equal(mask[0], mask[1])  # the copies of a sample are masked differently


def test_teacher_sees_the_embeddings_without_the_students_dropout():
    """The reference's teacher gets the student's dropped-out embeddings; ours the clean ones, so the targets
    do not depend on the student's dropout draw."""
    torch.manual_seed(0)
    model = tiny(transformer={"dropout": 0.3})
    model.train()
    batch = make_batch_v2("text")
    targets, preds = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        out = model(batch["source"], mask_indices=batch["precomputed_mask"])
        targets.append(out["target"])
        preds.append(out["pred"])
    assert not torch.allclose(preds[0], preds[1])  # the student's dropout is on
    torch.testing.assert_close(targets[0], targets[1], rtol=0, atol=0)


def test_d2v2_multi_batches_give_the_same_result():
    """masked_lm with d2v2_multi=true (the reference's recipe) hands over source / id / padding_mask."""
    torch.manual_seed(0)
    model = tiny()
    model.eval()  # no dropout: only the decoder's noise is drawn, under the same seed below
    batch = make_batch_v2("text")
    torch.manual_seed(5)
    ours = model(batch["source"], mask_indices=batch["precomputed_mask"])
    torch.manual_seed(5)
    theirs = model(source=batch["source"], id=torch.tensor([0, 1]), padding_mask=batch["padding_mask"],
                   mask_indices=batch["precomputed_mask"])
    torch.testing.assert_close(theirs["pred"], ours["pred"], rtol=0, atol=0)


def test_build_refuses_bert_masked_input():
    with pytest.raises(ValueError, match=r"task\.skip_masking=true"):
        Data2VecTextModel.build_model(config(dict(TINY_V2["text"], max_update=10)), task(skip_masking=False))


# -- checkpoints and fine-tuning ----------------------------------------------------------------------------
def test_checkpoint_round_trip_and_fine_tuning_surgery(tmp_path):
    torch.manual_seed(0)
    model = tiny()
    model.set_num_updates(1)
    path = tmp_path / "m.pt"
    torch.save({"model": model.state_dict()}, path)
    state = torch.load(path, weights_only=True)["model"]
    assert int(state["encoder.ema_teacher.num_updates"]) == 1
    assert "encoder.ema_teacher.model.encoder.blocks.0.mlp.fc1.weight" in state
    other = tiny()
    other.load_state_dict(dict(state), strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    other.remove_pretraining_modules()
    other.load_state_dict(dict(state), strict=True)  # teacher, decoder and head dropped on the way
    assert other.encoder.ema_teacher is None and other.encoder.decoder is None and other.encoder.final_proj is None
    assert not any(k.split(".")[1] in ("ema_teacher", "decoder", "final_proj") for k in other.state_dict())
    other.eval()
    tokens = make_batch_v2("text")["source"]
    x, extra = other(tokens, features_only=True)
    assert x.shape == (*tokens.shape, TINY_V2["text"]["embed_dim"]) and torch.isfinite(x).all()
    # the whole sentence, nothing masked: the same as the pre-training student's transformer on it
    model.eval()
    torch.testing.assert_close(x, model.encoder.extract_features(tokens)[0])


def test_classification_model_builds_the_v2_encoder(tmp_path):
    from d2v_plugin.text.classification import Data2VecTextClassificationModel

    torch.manual_seed(0)
    pretrained = tiny()
    path = tmp_path / "pre.pt"
    model_cfg = OmegaConf.to_container(pretrained.cfg, resolve=True, enum_to_str=True)
    torch.save({"cfg": {"model": {**model_cfg, "_name": "data2vec_text"}, "task": {"_name": "masked_lm"}},
                "model": pretrained.state_dict(), "extra_state": {"train_iterator": None},
                "optimizer_history": [{"num_updates": 1, "optimizer_name": "Adam", "lr_scheduler_state": {}}]},
               path)
    cfg = OmegaConf.structured(Data2VecTextClassificationConfig(model_path=str(path)))
    cls_task = SimpleNamespace(source_dictionary=make_dictionary_v2())
    model = Data2VecTextClassificationModel.build_model(cfg, cls_task)
    assert isinstance(model.encoder, Data2Vec2TextEncoder)
    key = "encoder.encoder.blocks.0.mlp.fc1.weight"
    assert torch.equal(model.state_dict()[key], pretrained.state_dict()[key])
    model.register_classification_head("head", num_classes=3)
    model.eval()
    logits, _ = model(make_batch_v2("text")["source"], classification_head_name="head")
    assert logits.shape == (2, 3)
    assert model.max_positions() == TINY_V2["text"]["modalities"]["text"]["max_source_positions"]
