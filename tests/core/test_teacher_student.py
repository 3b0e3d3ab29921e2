"""The shared teacher/student core: the optional zero init of the regression head, for every modality."""

import pytest
import torch
from omegaconf import OmegaConf

from d2v_plugin.core.criterion import regression_loss
from d2v_plugin.audio.model import Data2VecAudioConfig, Data2VecAudioModel
from d2v_plugin.image.model import Data2VecImageConfig, Data2VecImageModel
from d2v_plugin.text.model import Data2VecTextConfig, Data2VecTextEncoder, Data2VecTextModel
from tests.reference import audio_config, image_config, text_config


def audio(**overrides):
    model = Data2VecAudioModel(Data2VecAudioConfig(**{**audio_config.TINY_AUDIO, **overrides}))
    source, padding_mask, mask = audio_config.make_batch()
    return model, model.encoder.layers, lambda: model(source, padding_mask, mask_indices=mask)


def image(**overrides):
    model = Data2VecImageModel(Data2VecImageConfig(**{**image_config.TINY_IMAGE, **overrides}))
    images, mask = image_config.make_batch()
    return model, model.encoder.layers, lambda: model(images, mask_indices=mask)


def text(**overrides):
    cfg = OmegaConf.merge(OmegaConf.structured(Data2VecTextConfig), text_config.TINY_TEXT, overrides)
    model = Data2VecTextModel(cfg, Data2VecTextEncoder(cfg, text_config.make_dictionary()))
    src_tokens, target_tokens, _ = text_config.make_batch()
    return model, model.encoder.sentence_encoder.layers, lambda: model(src_tokens, target_tokens)


def loss_of(out, cfg):
    return regression_loss(out["pred"], out["target"], cfg.loss_beta, cfg.loss_scale).sum()


@pytest.mark.parametrize("build", [audio, image, text], ids=["audio", "image", "text"])
def test_zero_init_regression_head_reads_out_before_the_blocks_move(build):
    torch.manual_seed(0)
    model, blocks, forward = build(zero_init_regression_head=True)
    model.train()
    out = forward()
    assert torch.count_nonzero(out["pred"]) == 0 and out["target"].abs().sum() > 0
    loss_of(out, model.cfg).backward()
    head_grads = [p.grad for n, p in model.named_parameters() if "final_proj" in n or "regression_head" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in head_grads)  # the head learns a read-out ...
    for p in blocks.parameters():  # ... and the blocks get no gradient until it reads something
        assert p.grad is None or torch.count_nonzero(p.grad) == 0

    # one optimizer step later the head is no longer zero, and the blocks learn through it
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    loss_of(forward(), model.cfg).backward()
    assert sum(p.grad.abs().sum() for p in blocks.parameters() if p.grad is not None) > 0


@pytest.mark.parametrize("build", [audio, image, text], ids=["audio", "image", "text"])
def test_regression_head_keeps_the_reference_init_by_default(build):
    torch.manual_seed(0)
    model, _, forward = build()
    assert not model.cfg.zero_init_regression_head
    assert torch.count_nonzero(forward()["pred"]) > 0
