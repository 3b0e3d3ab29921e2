"""Hugging Face export of data2vec_audio_classification (d2v_plugin/hf/audio.py) through the real CLIs: a tiny
classifier fine-tuned from the shared pre-trained checkpoint -> d2v-export-hf -> Data2VecAudioForSequenceClassification
whose logits equal ours on a padded batch, with the label names and a feature extractor; attentive pooling refused."""

import re
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

from d2v_plugin.hf import audio  # noqa: E402
from d2v_plugin.hf.common import HFConversionError  # noqa: E402
from tests.audio.test_classification_cli import write_pitch_labels  # noqa: E402
from tests.cli import BIN, hydra_train, module, run  # noqa: E402
from tests.hf.test_audio_hf import TOLERANCE, padded_batch, tiny_cfg, waveforms  # noqa: E402

FINETUNE_UPDATES = 30  # enough for logits that differ between utterances and classes


@pytest.fixture(scope="module")
def classifier(speech_data, pretrained, tmp_path_factory):
    """(labelled data dir, fine-tuned checkpoint, its HF export)."""
    out = tmp_path_factory.mktemp("hf_audio_cls")
    data = out / "data"
    data.mkdir()
    for split in ("train", "valid", "test"):
        shutil.copy(speech_data / f"{split}.tsv", data)
    module("manifests.utterance_labels", data, "--labels", write_pitch_labels(speech_data, out / "pitch.tsv"))
    hydra_train("examples/audio/classification", "tiny_cpu", out / "run",
                [f"task.data={data}", f"model.w2v_path={pretrained[0] / 'checkpoint_last.pt'}",
                 f"checkpoint.save_dir={out / 'ckpt'}", f"optimization.max_update={FINETUNE_UPDATES}",
                 "checkpoint.save_interval_updates=0", "dataset.validate_interval_updates=0"])
    checkpoint = out / "ckpt" / "checkpoint_last.pt"
    assert f"wrote {out / 'hf'}" in run([BIN / "d2v-export-hf", checkpoint, out / "hf"]).stdout
    return data, checkpoint, out / "hf"


def test_export_logits_and_labels_match_ours(classifier):
    from fairseq import checkpoint_utils

    data, checkpoint, hf_dir = classifier
    hf = transformers.AutoModelForAudioClassification.from_pretrained(str(hf_dir)).eval()
    assert type(hf).__name__ == "Data2VecAudioForSequenceClassification"
    names = (data / "dict.lbl.txt").read_text().split()[::2]  # class i = line i
    assert hf.config.id2label == dict(enumerate(names)) and hf.config.classifier_proj_size == 64
    (ours,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)], arg_overrides={"data": str(data)})
    source, padding = padded_batch(data)
    with torch.no_grad():
        expected = ours.eval()(source, padding)
        got = hf(source, attention_mask=(~padding).long()).logits
    assert padding.any() and expected.shape == got.shape == (2, len(names))
    assert expected.std() > 1e-3  # a trained head, not a constant
    diff = (got - expected).abs().max().item()
    print(f"classification logits max abs diff {diff:.2e}")
    assert diff <= TOLERANCE


def test_hf_feature_extractor_and_model_classify_raw_audio_as_we_do(classifier):
    """HF's own pre-processing (normalisation eps 1e-7 against fairseq's 1e-5, README) -> the same classes."""
    from fairseq import checkpoint_utils

    data, checkpoint, hf_dir = classifier
    extractor = transformers.AutoFeatureExtractor.from_pretrained(str(hf_dir))
    hf = transformers.AutoModelForAudioClassification.from_pretrained(str(hf_dir)).eval()
    (ours,), _, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)],
                                                                     arg_overrides={"data": str(data)})
    task.load_dataset("test")
    ds = task.datasets["test"]
    batch = ds.collater([ds[i] for i in range(8)])
    inputs = extractor(waveforms(data, rows=range(8)), sampling_rate=16000, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = ours.eval()(**batch["net_input"])
        got = hf(**inputs).logits
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert (got - expected).abs().max().item() <= 1e-3


def test_attentive_pooling_is_refused_by_name():
    cfg = {"model": {"_name": "data2vec_audio_classification", "w2v_args": {"model": tiny_cfg()["model"]},
                     "pooling": "attentive", "classifier_proj_size": 8}, "task": {"normalize": True}}
    with pytest.raises(HFConversionError, match=re.escape("model.pooling=attentive")):
        audio.hf_config(cfg)
    cfg["model"]["pooling"] = "mean"
    config = audio.hf_config(cfg, labels=["a", "b"])
    assert config.architectures == ["Data2VecAudioForSequenceClassification"] and config.num_labels == 2
