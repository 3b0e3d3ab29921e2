"""ConvFeatureExtractor: same parameters, outputs and gradients as fairseq's ConvFeatureExtractionModel."""

import pytest
import torch

from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel

from d2v_plugin.audio.conv_features import ConvFeatureExtractor

LAYERS = [(16, 10, 5)] + [(16, 3, 2)] * 3 + [(16, 2, 2)]


@pytest.mark.parametrize("mode,conv_bias", [("layer_norm", False), ("layer_norm", True), ("default", False)])
def test_matches_fairseq_forward_and_backward(mode, conv_bias):
    torch.manual_seed(0)
    ref = ConvFeatureExtractionModel(LAYERS, dropout=0.0, mode=mode, conv_bias=conv_bias)
    ours = ConvFeatureExtractor(LAYERS, dropout=0.0, mode=mode, conv_bias=conv_bias)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ours.load_state_dict(ref.state_dict())
    with torch.no_grad():  # non-trivial norm parameters, so their gradients are checked too
        for m in (ref, ours):
            for name, p in m.named_parameters():
                if ".2." in name:
                    p.copy_(torch.linspace(0.5, 1.5, p.numel()).view_as(p) if name.endswith("weight")
                            else torch.linspace(-0.2, 0.2, p.numel()).view_as(p))
    x = torch.randn(3, 2000)
    grad = torch.randn_like(ref(x))
    outputs = []
    for m in (ref, ours):
        y = m(x)
        y.backward(grad)
        outputs.append(y.detach())
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    assert outputs[1].is_contiguous()
    ref_grads = {name: p.grad for name, p in ref.named_parameters()}
    scale = max(g.abs().max() for g in ref_grads.values())  # the early layers' gradients are tiny here
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad / scale, ref_grads[name] / scale, rtol=0, atol=1e-5, msg=name)


# -- conv_feature_layers is parsed, never evaluated -----------------------------------------------------
def test_conv_layer_string_parses_fairseqs_format():
    from d2v_plugin.audio.conv_features import parse_conv_layers

    assert parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2") == (
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2)
    assert parse_conv_layers("[(64, 10, 5)] + 2 * [(64, 3, 2), (32, 2, 2)]") == [(64, 10, 5)] + 2 * [(64, 3, 2), (32, 2, 2)]


@pytest.mark.parametrize("spec", ["__import__('os').system('true')", "[(512, 10, 5)] * (lambda: 2)()",
                                  "[(512, 10)]", "[(512.0, 10, 5)]", "[(512, 10, 5)] * 10**9", "[]", "[(1, 2, -3)]"])
def test_conv_layer_strings_that_are_not_layer_lists_are_refused(spec):
    from d2v_plugin.audio.conv_features import parse_conv_layers

    with pytest.raises(ValueError, match=r"model\.conv_feature_layers=.*never\s+evaluated"):
        parse_conv_layers(spec)


def test_checkpoint_whose_conv_layers_hold_code_is_refused_and_runs_nothing(pretrained, tmp_path):
    from fairseq import checkpoint_utils

    marker = tmp_path / "payload_ran"
    state = torch.load(pretrained[0] / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    state["cfg"]["model"]["conv_feature_layers"] = (
        f"__import__('pathlib').Path({str(marker)!r}).touch() or [(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2")
    evil = tmp_path / "evil.pt"
    torch.save(state, evil)
    with pytest.raises(ValueError, match=r"model\.conv_feature_layers=.*is not allowed"):
        checkpoint_utils.load_model_ensemble_and_task([str(evil)])
    assert not marker.exists()
