"""d2v-options: the README's way to list a model's options prints every one of ours with a help text."""

import dataclasses

import pytest

from d2v_plugin.core.options import main
from d2v_plugin.audio.model import Data2VecAudioConfig
from d2v_plugin.core.config import Data2VecConfig, ModelMaskedConfig
from d2v_plugin.image.model import Data2VecImageConfig
from d2v_plugin.text.model import Data2VecTextConfig


def test_lists_options_with_defaults_and_help(capsys):
    assert main(["data2vec_audio"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "model.ema_decay = 0.999  initial EMA decay of the teacher" in out
    assert any(line.startswith("model.conv_feature_layers = ") for line in out)  # fairseq's wav2vec options too
    assert main(["data2vec_text"]) == 0
    assert "model.transformer.encoder.layers = 6  number of layers" in capsys.readouterr().out.splitlines()
    assert main(["no_such_model"]) == 2


@pytest.mark.parametrize("config", [Data2VecConfig, ModelMaskedConfig, Data2VecAudioConfig, Data2VecTextConfig,
                                    Data2VecImageConfig])
def test_every_option_we_define_has_help(config):
    ours = [f for f in dataclasses.fields(config) if f.name in config.__dict__.get("__annotations__", {})]
    assert ours and all(f.metadata.get("help") for f in ours), [f.name for f in ours if not f.metadata.get("help")]
