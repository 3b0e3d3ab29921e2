"""data2vec_audio: numerical parity with fairseq's bundled reference, and checkpoint compatibility."""

import pytest
import torch

from d2v_plugin.core.criterion import mean_std, regression_loss
from d2v_plugin.audio.model import Data2VecAudioConfig, Data2VecAudioModel
from tests.reference.audio_config import TINY_AUDIO, VARIANTS, make_batch
from tests.reference.runner import run_in_subprocess


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """fairseq.examples.data2vec's audio model run in its own process (it registers our model names)."""
    return run_in_subprocess("audio", tmp_path_factory.mktemp("reference") / "reference_audio.pt")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reference_state_dict_loads_and_gives_the_same_loss(reference, variant):
    reference = reference[variant]
    model = Data2VecAudioModel(Data2VecAudioConfig(**{**TINY_AUDIO, **VARIANTS[variant]}))
    model.train()
    state = dict(reference["state_dict"])
    assert "_ema" in state  # the reference keeps its teacher as a flat dict
    model.load_state_dict(state, strict=True)
    # our teacher holds the reference's EMA weights, not a copy of the student
    ema = reference["state_dict"]["_ema"]
    prefix = "" if model.cfg.ema_transformer_only else "encoder."  # the reference's EMA of the whole model
    assert torch.equal(model.ema_teacher.model.state_dict()[prefix + "layers.0.fc1.weight"],
                       ema[prefix + "layers.0.fc1.weight"])
    assert not torch.equal(model.encoder.layers[0].fc1.weight, ema[prefix + "layers.0.fc1.weight"])
    if not model.cfg.ema_transformer_only:  # the teacher's own feature encoder, with the reference's weights
        conv = "feature_extractor.conv_layers.0.0.weight"
        assert torch.equal(model.ema_teacher.model.state_dict()[conv], ema[conv])
        assert not torch.equal(model.state_dict()[conv], ema[conv])

    source, padding_mask, mask = make_batch()
    out = model(source, padding_mask, mask_indices=mask)
    loss = regression_loss(out["pred"], out["target"], model.cfg.loss_beta, model.cfg.loss_scale).sum()
    assert out["pred"].shape[0] == reference["sample_size"]
    rel = abs(loss.item() - reference["loss"].item()) / abs(reference["loss"].item())
    assert rel <= 1e-5, (loss.item(), reference["loss"].item())
    torch.testing.assert_close(mean_std(out["target"]), reference["target_var"], rtol=1e-5, atol=0)
    torch.testing.assert_close(mean_std(out["pred"]), reference["pred_var"], rtol=1e-5, atol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_checkpoint_round_trip_and_fine_tuning_surgery(tmp_path, variant):
    torch.manual_seed(0)
    cfg = Data2VecAudioConfig(**{**TINY_AUDIO, **VARIANTS[variant]})
    model = Data2VecAudioModel(cfg)
    model.set_num_updates(1)
    path = tmp_path / "m.pt"
    torch.save({"model": model.state_dict()}, path)
    state = torch.load(path, weights_only=True)["model"]
    # every parameter is saved once: the teacher's view of the student's modules adds no keys
    assert len(state) == len(model.state_dict()) == len(dict(model.named_parameters())) + len(dict(model.named_buffers()))
    other = Data2VecAudioModel(cfg)
    other.load_state_dict(dict(state), strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    # fine-tuning drops the teacher and the head, and still loads a pre-training state dict
    other.remove_pretraining_modules()
    other.load_state_dict(dict(state), strict=True)
    assert other.ema_teacher is None and other.final_proj is None
    feats = other.extract_features(torch.randn(1, 3200), None)
    assert feats["x"].shape == (1, 9, TINY_AUDIO["encoder_embed_dim"])


def test_bad_config_values_fail_clearly():
    with pytest.raises(ValueError, match="average_top_k_layers=9"):
        Data2VecAudioModel(Data2VecAudioConfig(**{**TINY_AUDIO, "average_top_k_layers": 9}))
