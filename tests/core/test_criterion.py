"""The shared data2vec criterion: loss math, sample size, variance logging and the collapse guard."""

import math

import pytest
import torch

from d2v_plugin.core.criterion import Data2VecCriterion, RepresentationCollapseError, mean_std, regression_loss
from d2v_plugin.audio.model import Data2VecAudioConfig, Data2VecAudioModel
from tests.reference.audio_config import TINY_AUDIO, make_batch


def test_l2_loss_when_beta_is_zero():
    torch.manual_seed(0)
    pred, target = torch.randn(5, 16), torch.randn(5, 16)
    got = regression_loss(pred, target, beta=0.0, scale=None)
    expected = [sum((pred[i, j] - target[i, j]) ** 2 for j in range(16)) / math.sqrt(16) for i in range(5)]
    torch.testing.assert_close(got, torch.stack(expected))


@pytest.mark.parametrize("beta", [0.25, 2.0, 4.0])
def test_smooth_l1_loss_when_beta_is_positive(beta):
    torch.manual_seed(0)
    pred, target = torch.randn(4, 8) * 3, torch.randn(4, 8)
    got = regression_loss(pred, target, beta=beta, scale=0.5)

    def smooth_l1(d):
        d = abs(d)
        return 0.5 * d * d / beta if d < beta else d - 0.5 * beta

    expected = [0.5 * sum(smooth_l1(float(pred[i, j] - target[i, j])) for j in range(8)) for i in range(4)]
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_mean_std_is_mean_channel_std():
    x = torch.randn(100, 6) * torch.arange(1, 7)
    torch.testing.assert_close(mean_std(x), torch.sqrt(x.var(dim=0) + 1e-6).mean())


def tiny_model(**overrides):
    torch.manual_seed(0)
    model = Data2VecAudioModel(Data2VecAudioConfig(**{**TINY_AUDIO, **overrides}))
    model.train()
    return model


def test_criterion_normalises_by_masked_positions_and_logs():
    model = tiny_model()
    source, padding_mask, mask = make_batch()
    sample = {"id": torch.arange(2), "net_input": {"source": source, "padding_mask": padding_mask, "mask_indices": mask}}
    crit = Data2VecCriterion(task=None)
    loss, sample_size, log = crit(model, sample)
    assert sample_size == int(mask.sum())
    out = model(source, padding_mask, mask_indices=mask)
    expected = regression_loss(out["pred"], out["target"], 0.0, None).sum()
    torch.testing.assert_close(loss, expected)
    assert set(log) >= {"loss", "sample_size", "target_var", "pred_var", "ema_decay"}
    assert log["ema_decay"] == pytest.approx(0.99)
    loss.backward()
    assert model.final_proj.weight.grad is not None
    assert all(p.grad is None for p in model.ema_teacher.parameters())


@pytest.mark.parametrize("which", ["target", "pred"])
def test_collapse_stops_training_with_a_clear_error(which):
    model = tiny_model(**{f"min_{which}_var": 100.0, "var_check_start_update": 3})
    source, padding_mask, mask = make_batch()
    sample = {"net_input": {"source": source, "padding_mask": padding_mask, "mask_indices": mask}}
    crit = Data2VecCriterion(task=None)
    crit(model, sample)  # before var_check_start_update: no check
    model.set_num_updates(3)
    with pytest.raises(RepresentationCollapseError, match=f"{which}_var = .* below model.min_{which}_var"):
        crit(model, sample)
