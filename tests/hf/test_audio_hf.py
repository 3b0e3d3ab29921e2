"""Hugging Face export/import for speech (d2v_plugin/hf/audio.py) through the real CLIs.

Export: the tiny pre-trained checkpoint -> Data2VecAudioModel, and a CTC model fine-tuned from it -> Data2VecAudioForCTC
+ processor; their outputs equal ours on a padded batch, and HF's transcriptions equal fairseq-generate's. Import: a
random Data2VecAudioForCTC with non-default options -> our pre-training checkpoint -> equal outputs, the same HF
weights when exported again, and our CTC recipe fine-tunes it. Refusals are checked on configs, without training.
"""

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

transformers = pytest.importorskip("transformers")
sf = pytest.importorskip("soundfile")

from d2v_plugin.hf import audio, export_to_hf, import_from_hf  # noqa: E402
from d2v_plugin.hf.common import HFConversionError  # noqa: E402
from tests.cli import BIN, REPO, USER_DIR, hydra_train, json_logs, run  # noqa: E402

# Enough for the tiny CTC model to leave the all-blank stage: non-empty, non-trivial hypotheses to compare.
FINETUNE_UPDATES = 120
TOLERANCE = 1e-4
TINY_RECIPE = REPO / "examples/audio/pretraining/tiny_cpu.yaml"


def hf_load(auto_class, path):
    return auto_class.from_pretrained(str(path)).eval()


def waveforms(speech_data: Path, rows=None):
    """The test split's waveforms (float32 numpy arrays), in manifest order."""
    lines = (speech_data / "test.tsv").read_text().splitlines()
    root, entries = lines[0], lines[1:]
    picked = entries if rows is None else [entries[r] for r in rows]
    return [sf.read(f"{root}/{e.split(chr(9))[0]}", dtype="float32")[0] for e in picked]


def padded_batch(speech_data: Path):
    """Two utterances of different lengths, normalised as our task does, zero-padded: (source, padding_mask)."""
    wavs = [F.layer_norm(w, w.shape) for w in map(torch.from_numpy, waveforms(speech_data, rows=(0, 1)))]
    assert len(wavs[0]) != len(wavs[1])
    source = torch.zeros(2, max(map(len, wavs)))
    padding = torch.ones(2, source.size(1), dtype=torch.bool)
    for i, w in enumerate(wavs):
        source[i, : len(w)], padding[i, : len(w)] = w, False
    return source, padding


def our_encoder(checkpoint_or_state):
    """Our data2vec_audio student from a pre-training checkpoint (path or loaded dict), eval mode."""
    from d2v_plugin.audio.model import Data2VecAudioModel

    state = checkpoint_or_state
    if not isinstance(state, dict):
        state = torch.load(state, weights_only=True)
    model = Data2VecAudioModel.build_model(OmegaConf.create(state["cfg"]["model"]))
    model.load_state_dict(state["model"], strict=True)
    return model.eval()


def max_diff_unpadded(a: torch.Tensor, b: torch.Tensor, frame_padding) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    keep = torch.ones(a.shape[:2], dtype=torch.bool) if frame_padding is None else ~frame_padding
    return (a - b).abs()[keep].max().item()


# -- export ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(pretrained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf_audio") / "pretrained"
    proc = run([BIN / "d2v-export-hf", pretrained[0] / "checkpoint_last.pt", out])
    assert f"wrote {out}" in proc.stdout
    return out


def test_export_pretrained_matches_our_student(exported, pretrained, speech_data):
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in exported.iterdir()}
    extractor = transformers.AutoFeatureExtractor.from_pretrained(str(exported))
    assert extractor.do_normalize and extractor.return_attention_mask and extractor.sampling_rate == 16000
    hf = hf_load(transformers.AutoModel, exported)
    assert type(hf).__name__ == "Data2VecAudioModel"
    ours = our_encoder(pretrained[0] / "checkpoint_last.pt")
    source, padding = padded_batch(speech_data)
    with torch.no_grad():
        expected = ours.extract_features(source, padding)
        got = hf(source, attention_mask=(~padding).long()).last_hidden_state
    assert expected["padding_mask"] is not None and expected["padding_mask"].any()  # the batch is padded
    diff = max_diff_unpadded(got, expected["x"], expected["padding_mask"])
    print(f"encoder max abs diff {diff:.2e}")
    assert diff <= TOLERANCE


@pytest.fixture(scope="module")
def ctc(speech_data, pretrained, tmp_path_factory):
    """(fine-tuned checkpoint, its HF export) after FINETUNE_UPDATES updates of the tiny CTC recipe."""
    out = tmp_path_factory.mktemp("hf_audio_ctc")
    hydra_train("examples/audio/finetuning", "tiny_cpu", out / "run",
                [f"task.data={speech_data}", f"model.w2v_path={pretrained[0] / 'checkpoint_last.pt'}",
                 f"checkpoint.save_dir={out / 'ckpt'}", f"optimization.max_update={FINETUNE_UPDATES}",
                 "checkpoint.save_interval_updates=0", "dataset.validate_interval_updates=0"])
    checkpoint = out / "ckpt" / "checkpoint_last.pt"
    run([BIN / "d2v-export-hf", checkpoint, out / "hf"])
    return checkpoint, out / "hf"


def test_export_ctc_logits_match_ours(ctc, speech_data):
    from fairseq import checkpoint_utils

    checkpoint, hf_dir = ctc
    vocab = json.loads((hf_dir / "vocab.json").read_text())
    symbols = torch.load(checkpoint, weights_only=True)["task_state"]["target_dictionary"]["symbols"]
    # same ids; fairseq's blank (<s>, id 0) is HF's pad token, fairseq's unused <pad> (id 1) is named <s>
    assert vocab == {"<pad>": 0, "<s>": 1, **{s: i for i, s in enumerate(symbols) if i >= 2}}
    processor = transformers.AutoProcessor.from_pretrained(str(hf_dir))
    assert processor.tokenizer.pad_token_id == 0 and processor.tokenizer.word_delimiter_token == "|"
    hf = hf_load(transformers.AutoModelForCTC, hf_dir)
    assert type(hf).__name__ == "Data2VecAudioForCTC" and hf.config.pad_token_id == 0

    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)],
                                                                 arg_overrides={"data": str(speech_data)})
    ours = models[0].eval()
    source, padding = padded_batch(speech_data)
    with torch.no_grad():
        net = ours(source=source, padding_mask=padding)
        got = hf(source, attention_mask=(~padding).long()).logits
    assert net["padding_mask"] is not None and net["padding_mask"].any()
    diff = max_diff_unpadded(got, net["encoder_out"].transpose(0, 1), net["padding_mask"])
    print(f"CTC logits max abs diff {diff:.2e}")
    assert diff <= TOLERANCE


def test_hf_transcriptions_equal_fairseq_generate(ctc, speech_data, tmp_path):
    """HF's processor -> model -> argmax -> batch_decode gives fairseq-generate's greedy text, for every test
    utterance (HF decodes each one's own frames: padded frames are not forced to blank as in fairseq)."""
    checkpoint, hf_dir = ctc
    run([BIN / "fairseq-generate", speech_data, "--user-dir", USER_DIR, "--task", "audio_ctc", "--path", checkpoint,
         "--gen-subset", "test", "--labels", "ltr", "--post-process", "letter", "--max-tokens", 400000,
         "--results-path", tmp_path])
    generated = (tmp_path / "generate-test.txt").read_text()
    expected = {int(i): text for i, text in re.findall(r"^D-(\d+)\t[^\t]*\t(.*)$", generated, re.M)}

    processor = transformers.AutoProcessor.from_pretrained(str(hf_dir))
    model = hf_load(transformers.AutoModelForCTC, hf_dir)
    wavs = waveforms(speech_data)
    batch = processor(wavs, sampling_rate=16000, return_tensors="pt", padding=True)
    with torch.no_grad():
        ids = model(batch["input_values"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
    frames = model._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1))
    got = processor.batch_decode([ids[i, :n] for i, n in enumerate(frames.tolist())])

    assert sorted(expected) == list(range(len(wavs)))
    # a few updates: the model emits letters, not only blanks, so equal texts say something
    assert sum(bool(expected[i].strip()) for i in expected) >= len(expected) // 2, generated[-1500:]
    mismatches = [(i, got[i], expected[i]) for i in expected if got[i] != expected[i]]
    assert not mismatches, mismatches[:5]


# -- import ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_hf_ctc(tmp_path_factory) -> Path:
    """A random Data2VecAudioForCTC with options unlike our tiny recipe's (conv bias, tanh GELU, odd positional
    kernel, 3 positional layers, no masked_spec_embed), layer norms perturbed so they matter."""
    config = transformers.Data2VecAudioConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, conv_dim=(32,) * 7,
        conv_bias=True, hidden_act="gelu_new", num_conv_pos_embeddings=3, conv_pos_kernel_size=5,
        num_conv_pos_embedding_groups=4, mask_time_prob=0.0, vocab_size=15, hidden_dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, final_dropout=0.0, layerdrop=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.Data2VecAudioForCTC(config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "layer_norm" in name:
                    p.add_(0.1 * torch.randn_like(p))
    out = tmp_path_factory.mktemp("hf_random") / "ctc"
    model.save_pretrained(out)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(out)
    return out


def test_import_round_trip_and_our_ctc_recipe(random_hf_ctc, speech_data, tmp_path):
    imported = tmp_path / "imported.pt"
    run([BIN / "d2v-import-hf", random_hf_ctc, imported])
    state = torch.load(imported, weights_only=True)  # what fairseq's Wav2VecEncoder loads it with
    cfg = state["cfg"]
    assert cfg["model"]["_name"] == "data2vec_audio" and cfg["model"]["conv_bias"] is True
    assert cfg["model"]["conv_feature_layers"] == "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2"
    assert (cfg["model"]["pos_conv_depth"], cfg["model"]["conv_pos"]) == (3, 15)
    assert cfg["task"]["_name"] == "audio_pretraining" and cfg["task"]["normalize"] is True
    weights = state["model"]
    assert not any(k.startswith("lm_head") for k in weights)
    for k in ("layers.1.fc1.weight", "pos_conv.2.0.weight", "layer_norm.bias"):  # teacher = copy of the student
        assert torch.equal(weights[f"ema_teacher.model.{k}"], weights[f"encoder.{k}"]), k

    source, padding = padded_batch(speech_data)
    hf = hf_load(transformers.AutoModel, random_hf_ctc)  # the encoder of the CTC model
    with torch.no_grad():
        reference = hf(source, attention_mask=(~padding).long()).last_hidden_state
        ours = our_encoder(state).extract_features(source, padding)
    diff = max_diff_unpadded(ours["x"], reference, ours["padding_mask"])
    print(f"imported encoder max abs diff {diff:.2e}")
    assert diff <= TOLERANCE

    # and back: the same HF weights, the same outputs
    again = export_to_hf(imported, tmp_path / "again")  # the export CLI is run above; in-process saves a start-up
    hf_again = hf_load(transformers.AutoModel, again)
    for key, value in hf.state_dict().items():
        assert torch.equal(hf_again.state_dict()[key], value), key
    with torch.no_grad():
        round_trip = hf_again(source, attention_mask=(~padding).long()).last_hidden_state
    assert max_diff_unpadded(round_trip, reference, ours["padding_mask"]) <= TOLERANCE

    # our CTC recipe fine-tunes it (w2v_path)
    proc = hydra_train("examples/audio/finetuning", "tiny_cpu", tmp_path / "run",
                       [f"task.data={speech_data}", f"model.w2v_path={imported}",
                        f"checkpoint.save_dir={tmp_path / 'ft'}", "optimization.max_update=10",
                        "common.log_interval=1"])
    losses = [r["loss"] for r in json_logs(proc.stdout + proc.stderr, "train_inner")]
    assert losses and all(math.isfinite(x) for x in losses), losses
    tuned = torch.load(tmp_path / "ft" / "checkpoint_last.pt", weights_only=True)
    assert tuned["optimizer_history"][-1]["num_updates"] == 10


# -- refusals ----------------------------------------------------------------------------------------
def tiny_cfg() -> dict:
    """The tiny pre-training recipe's config (model + task), as a checkpoint would hold it."""
    return OmegaConf.to_container(OmegaConf.load(TINY_RECIPE))


def ctc_cfg(pretraining_model: dict) -> dict:
    return {"model": {"_name": "data2vec_audio_ctc", "w2v_args": {"model": pretraining_model},
                      "apply_mask": True, "mask_prob": 0.1, "blank_weight": 0.0}, "task": {"normalize": True}}


def test_tiny_recipe_maps_to_hf_options():
    config = audio.hf_config(tiny_cfg())
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (128, 4, 4)
    assert config.intermediate_size == 256
    # fairseq's positional kernel per layer: max(3, conv_pos // pos_conv_depth) = 16 // 2
    assert (config.num_conv_pos_embeddings, config.conv_pos_kernel_size) == (2, 8)
    assert config.num_conv_pos_embedding_groups == 16
    assert list(config.conv_dim) == [64] * 7 and list(config.conv_stride) == [5] + [2] * 6
    assert config.hidden_act == "gelu" and config.layer_norm_eps == 1e-5


@pytest.mark.parametrize("option, value", [
    ("extractor_mode", "default"), ("layer_norm_first", True), ("pos_conv_depth", 1), ("layer_type", "conformer"),
    ("activation_fn", "relu_squared"), ("data2vec_version", 2),
])
def test_export_refuses_what_hf_cannot_express(option, value):
    cfg = tiny_cfg()
    cfg["model"][option] = value
    with pytest.raises(HFConversionError, match=re.escape(f"model.{option}=")):
        audio.hf_config(cfg)
    # the same option inside a fine-tuned checkpoint's pre-training config
    with pytest.raises(HFConversionError, match=re.escape(f"model.w2v_args.model.{option}=")):
        audio.hf_config(ctc_cfg(cfg["model"]))


def test_export_refuses_a_ctc_blank_weight():
    cfg = ctc_cfg(tiny_cfg()["model"])
    cfg["model"]["blank_weight"] = 1.5
    with pytest.raises(HFConversionError, match=re.escape("model.blank_weight=1.5")):
        audio.hf_config(cfg)


def test_v2_checkpoint_is_refused_and_nothing_is_written(pretrained, tmp_path):
    state = torch.load(pretrained[0] / "checkpoint_last.pt", weights_only=True)
    state["cfg"]["model"]["data2vec_version"] = 2
    torch.save(state, tmp_path / "v2.pt")
    with pytest.raises(HFConversionError, match=re.escape("model.data2vec_version=2")):
        export_to_hf(tmp_path / "v2.pt", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v2.pt"]


@pytest.mark.parametrize("option, value", [
    ("feat_extract_activation", "relu"), ("num_conv_pos_embeddings", 1), ("conv_pos_kernel_size", 2),
    ("layer_norm_eps", 1e-6), ("add_adapter", True), ("hidden_act", "quick_gelu"),
])
def test_import_refuses_what_our_model_cannot_express(option, value):
    config = transformers.Data2VecAudioConfig(**{option: value})
    with pytest.raises(HFConversionError, match=re.escape(f"config.json {option}=")):
        audio.model_options(config)


def test_import_bad_input(tmp_path):
    """What d2v-import-hf reports (exit status 1, the message on stderr) for a directory that is not an HF
    data2vec-audio model; called in-process (the CLI only prints the HFConversionError)."""
    with pytest.raises(HFConversionError, match="no config.json"):
        import_from_hf(tmp_path, tmp_path / "out.pt")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(HFConversionError, match="model_type 'bert' is not a data2vec model"):
        import_from_hf(tmp_path, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
