"""data2vec_text_classification.load_pretrained: the fine-tuning dictionary must be the pre-training one,
symbol for symbol (a same-size, reordered dictionary would scramble every token id)."""

import logging

import pytest
import torch
from omegaconf import OmegaConf

from fairseq.data import Dictionary

from d2v_plugin.core.finetune import dictionary_digest
from d2v_plugin.text.classification import Data2VecTextClassificationConfig, Data2VecTextClassificationModel
from d2v_plugin.text.model import Data2VecTextConfig, Data2VecTextEncoder
from tests.reference.text_config import TINY_TEXT, make_dictionary

SWAPPED = (10, 11)  # two symbols swapped in the "other" dictionary: same size, same symbols, other order


def encoder_config():
    return OmegaConf.merge(OmegaConf.structured(Data2VecTextConfig), TINY_TEXT)


def pretraining_state(tmp_path, digest=True, dict_txt=True) -> dict:
    """A pre-training checkpoint as load_checkpoint returns it, on make_dictionary()'s vocabulary.

    ``cfg.task.data`` points to a data-bin whose dict.txt is that dictionary (unless ``dict_txt`` is False).
    """
    dictionary = make_dictionary()
    torch.manual_seed(0)
    encoder = Data2VecTextEncoder(encoder_config(), dictionary)
    data = tmp_path / "pretrain-bin"
    data.mkdir(exist_ok=True)
    if dict_txt:
        (data / "dict.txt").write_text("".join(f"{s} 1\n" for s in dictionary.symbols[dictionary.nspecial:-1]))
    model_cfg = {"_name": "data2vec_text", "dictionary_digest": dictionary_digest(dictionary) if digest else None}
    return {"cfg": OmegaConf.create({"model": model_cfg, "task": {"_name": "masked_lm", "data": str(data)}}),
            "model": {f"encoder.{k}": v for k, v in encoder.state_dict().items()}}


def classifier(dictionary: Dictionary) -> Data2VecTextClassificationModel:
    encoder = Data2VecTextEncoder(encoder_config(), dictionary)
    encoder.remove_pretraining_modules()
    cfg = Data2VecTextClassificationConfig(model_path="unused.pt")
    return Data2VecTextClassificationModel(cfg, encoder)


def reordered_dictionary() -> Dictionary:
    d = make_dictionary()
    i, j = SWAPPED
    d.symbols[i], d.symbols[j] = d.symbols[j], d.symbols[i]
    d.indices = {s: k for k, s in enumerate(d.symbols)}
    return d


def test_same_dictionary_loads_the_weights(tmp_path):
    state = pretraining_state(tmp_path)
    model = classifier(make_dictionary())
    model.load_pretrained(state, "pre.pt")
    key = "encoder.sentence_encoder.layers.0.fc1.weight"
    assert torch.equal(model.state_dict()[key], state["model"][key])


def test_reordered_dictionary_of_the_same_size_is_refused(tmp_path):
    state = pretraining_state(tmp_path)
    model = classifier(reordered_dictionary())
    n = len(make_dictionary())
    with pytest.raises(ValueError) as e:
        model.load_pretrained(state, "pre.pt")
    message = str(e.value)
    assert message.startswith(f"pre.pt was pre-trained with a dictionary of {n} symbols and the fine-tuning "
                              f"data's has {n}, but their symbols differ")
    assert f"index {SWAPPED[0]}: 'w{SWAPPED[0] - 4}' in the pre-training dictionary, 'w{SWAPPED[1] - 4}'" in message
    assert "--spm-model .../spm.model --srcdict .../dict.txt" in message


def test_without_the_pretraining_dict_txt_the_index_is_unknown(tmp_path):
    model = classifier(reordered_dictionary())
    with pytest.raises(ValueError, match="symbols differ.*first differing index is unknown.*--srcdict"):
        model.load_pretrained(pretraining_state(tmp_path, dict_txt=False), "pre.pt")


def test_without_a_digest_only_sizes_are_compared_with_a_warning(tmp_path, caplog):
    model = classifier(reordered_dictionary())
    with caplog.at_level(logging.WARNING):
        model.load_pretrained(pretraining_state(tmp_path, digest=False), "pre.pt")
    assert "pre.pt stores no dictionary_digest" in caplog.text and "not the symbols" in caplog.text
    smaller = make_dictionary()
    smaller.symbols.pop(-2)
    with pytest.raises(ValueError, match=r"vocabulary of 45 symbols but the fine-tuning data's dictionary has 44"):
        classifier(smaller).load_pretrained(pretraining_state(tmp_path, digest=False), "pre.pt")
