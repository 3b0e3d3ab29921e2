"""data2vec_text: numerical parity with fairseq's bundled reference, teacher input, checkpoints, fine-tuning."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from fairseq import checkpoint_utils
from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask
from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask

from d2v_plugin.core.criterion import regression_loss
from d2v_plugin.core.teacher_student import Views
from d2v_plugin.text.model import Data2VecTextConfig, Data2VecTextEncoder, Data2VecTextModel
from d2v_plugin.text.classification import Data2VecTextClassificationConfig
from tests.reference.text_config import TINY_TEXT, make_batch, make_dictionary
from tests.reference.runner import run_in_subprocess


def make_model(**overrides) -> Data2VecTextModel:
    cfg = OmegaConf.merge(OmegaConf.structured(Data2VecTextConfig), TINY_TEXT, overrides)
    return Data2VecTextModel(cfg, Data2VecTextEncoder(cfg, make_dictionary()))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """fairseq.examples.data2vec's text model run in its own process (it registers our model names)."""
    return run_in_subprocess("text", tmp_path_factory.mktemp("reference") / "reference_text.pt")


def test_reference_state_dict_loads_and_gives_the_same_loss(reference):
    # the reference regresses only the <mask> positions; "selected" is tested below
    model = make_model(loss_positions="mask_token")
    model.train()
    state = dict(reference["state_dict"])
    assert "encoder._ema" in state  # the reference keeps its teacher as a flat dict
    model.load_state_dict(state, strict=True)
    # our teacher holds the reference's EMA weights, not a copy of the student
    ema = reference["state_dict"]["encoder._ema"]
    teacher, student = model.encoder.ema_teacher.model, model.encoder.sentence_encoder
    assert torch.equal(teacher.layers[0].fc1.weight, ema["layers.0.fc1.weight"])
    assert not torch.equal(student.layers[0].fc1.weight, ema["layers.0.fc1.weight"])

    src_tokens, target_tokens, _ = make_batch()
    out = model(src_tokens, target_tokens)
    loss = regression_loss(out["pred"], out["target"], model.cfg.loss_beta, model.cfg.loss_scale).sum()
    assert out["pred"].shape[0] == reference["sample_size"]
    rel = abs(loss.item() - reference["loss"].item()) / abs(reference["loss"].item())
    assert rel <= 1e-5, (loss.item(), reference["loss"].item())


def test_teacher_sees_unmasked_tokens_and_loss_covers_selected_positions():
    torch.manual_seed(0)
    model = make_model()
    model.train()
    src_tokens, target_tokens, tokens = make_batch()
    selected = target_tokens.ne(model.encoder.dictionary.pad())
    with torch.no_grad():
        out = model(src_tokens, target_tokens)
        expected = model.encoder.teacher_targets(Views(tokens, tokens, selected))[selected]
    # BERT's rule: every selected position (<mask>, random and unchanged ones) is regressed ...
    masked = src_tokens.eq(model.encoder.mask_idx)
    assert out["pred"].shape == (int(selected.sum()), TINY_TEXT["transformer"]["encoder"]["embed_dim"])
    assert int(masked.sum()) < int(selected.sum())  # the batch has random and unchanged selections
    # ... towards what the teacher makes of the whole unmasked sentence
    torch.testing.assert_close(out["target"], expected, rtol=0, atol=0)
    # the student's input changes the prediction, never the target
    other = src_tokens.clone()
    other[masked] = tokens[masked]
    with torch.no_grad():
        assert torch.equal(model(other, target_tokens)["target"], out["target"])


def test_checkpoint_round_trip_and_fine_tuning_surgery(tmp_path):
    torch.manual_seed(0)
    model = make_model()
    model.set_num_updates(1)
    path = tmp_path / "m.pt"
    torch.save({"model": model.state_dict()}, path)
    state = torch.load(path, weights_only=True)["model"]
    assert int(state["encoder.ema_teacher.num_updates"]) == 1
    other = make_model()
    other.load_state_dict(dict(state), strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    other.remove_pretraining_modules()
    other.load_state_dict(dict(state), strict=True)
    assert other.encoder.ema_teacher is None and other.encoder.regression_head is None
    src_tokens, _, _ = make_batch()
    x, _ = other(src_tokens, features_only=True)
    assert x.shape == (*src_tokens.shape, TINY_TEXT["transformer"]["encoder"]["embed_dim"])


def save_fairseq_checkpoint(path: Path, model_cfg: dict, state_dict: dict) -> None:
    """The keys fairseq's checkpoint loader needs (what its trainer writes, minus optimizer state)."""
    torch.save({"cfg": {"model": model_cfg}, "model": state_dict, "extra_state": {"train_iterator": None},
                "optimizer_history": [{"num_updates": 1, "optimizer_name": "Adam", "lr_scheduler_state": {}}]},
               path)


@pytest.fixture
def classification_task(tmp_path):
    """fairseq's sentence_prediction task on dictionaries only (the vocabulary of the tiny batch)."""
    (tmp_path / "input0").mkdir()
    (tmp_path / "label").mkdir()
    d = make_dictionary()
    (tmp_path / "input0" / "dict.txt").write_text("".join(f"{s} 1\n" for s in d.symbols[d.nspecial:-1]))
    (tmp_path / "label" / "dict.txt").write_text("yes 1\nno 1\n")
    cfg = OmegaConf.structured(SentencePredictionConfig(
        data=str(tmp_path), num_classes=2, init_token=0, regression_target=False,
        classification_head_name="sentence_classification_head", seed=1))
    return SentencePredictionTask.setup_task(cfg)


def test_classification_model_from_a_reference_checkpoint(reference, classification_task, tmp_path):
    path = tmp_path / "reference.pt"
    save_fairseq_checkpoint(path, {**reference["cfg"], "_name": "data2vec_text"}, reference["state_dict"])
    cfg = OmegaConf.structured(Data2VecTextClassificationConfig(_name="data2vec_text_classification", model_path=str(path)))
    model = classification_task.build_model(cfg)
    # the student's weights, not the teacher's, and nothing of the pre-training modules
    weight = model.encoder.sentence_encoder.layers[0].fc1.weight
    assert torch.equal(weight, reference["state_dict"]["encoder.sentence_encoder.layers.0.fc1.weight"])
    assert not any("ema" in k or "regression_head" in k for k in model.state_dict())
    assert model.cfg.pretrained_model_cfg["average_top_k_layers"] == TINY_TEXT["average_top_k_layers"]
    logits, _ = model(make_batch()[2], classification_head_name="sentence_classification_head")
    assert logits.shape == (make_batch()[2].size(0), 2)


def test_mean_pooling_ignores_padding(classification_task, tmp_path):
    model = make_model()
    path = tmp_path / "ours.pt"
    save_fairseq_checkpoint(path, {**OmegaConf.to_container(model.cfg, enum_to_str=True), "_name": "data2vec_text"},
                            model.state_dict())
    cfg = OmegaConf.structured(Data2VecTextClassificationConfig(
        _name="data2vec_text_classification", model_path=str(path), pooling="mean"))
    classifier = classification_task.build_model(cfg).eval()
    _, _, tokens = make_batch()  # row 1 is padded after its 14 tokens
    head = "sentence_classification_head"
    batch, _ = classifier(tokens, classification_head_name=head)
    alone, _ = classifier(tokens[1:2, :14], classification_head_name=head)
    torch.testing.assert_close(batch[1], alone[0], rtol=1e-5, atol=1e-6)


def test_classification_model_rejects_another_vocabulary(classification_task, tmp_path):
    model = make_model()
    state = model.state_dict()
    state["encoder.sentence_encoder.embed_tokens.weight"] = torch.zeros(7, TINY_TEXT["transformer"]["encoder"]["embed_dim"])
    path = tmp_path / "other_vocab.pt"
    save_fairseq_checkpoint(path, {**OmegaConf.to_container(model.cfg, enum_to_str=True), "_name": "data2vec_text"}, state)
    cfg = OmegaConf.structured(Data2VecTextClassificationConfig(_name="data2vec_text_classification", model_path=str(path)))
    with pytest.raises(ValueError, match="vocabulary of 7 symbols.*--srcdict"):
        classification_task.build_model(cfg)


def test_bad_config_values_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="average_top_k_layers=5"):
        make_model(average_top_k_layers=5)
    with pytest.raises(ValueError, match="head_layers=0"):
        make_model(head_layers=0)
    d = make_dictionary()
    (tmp_path / "dict.txt").write_text("".join(f"{s} 1\n" for s in d.symbols[d.nspecial:-1]))
    task = MaskedLMTask.setup_task(MaskedLMConfig(data=str(tmp_path), include_target_tokens=False, seed=1))
    cfg = OmegaConf.merge(OmegaConf.structured(Data2VecTextConfig), TINY_TEXT)
    with pytest.raises(ValueError, match="task.include_target_tokens=true"):
        Data2VecTextModel.build_model(cfg, task)
    with pytest.raises(ValueError, match="task.include_target_tokens=true"):
        make_model()(make_batch()[0])


def test_low_precision_student_keeps_an_fp32_teacher_run_under_autocast():
    torch.manual_seed(0)
    model = make_model()
    src_tokens, target_tokens, tokens = make_batch()
    with torch.no_grad():
        selected = target_tokens.ne(model.encoder.dictionary.pad())
        fp32_targets = model.encoder.teacher_targets(Views(tokens, tokens, selected))[selected]
    model.to(torch.bfloat16)  # what fairseq does for --bf16 (and .half() for --fp16)
    out = model(src_tokens, target_tokens)
    assert model.encoder.ema_teacher.model.layers[0].fc1.weight.dtype == torch.float32
    assert out["pred"].dtype == torch.bfloat16 and out["target"].dtype == torch.float32
    # the fp32 teacher ran in the student's precision (as fairseq's fp16 teacher does): close, not equal
    assert not torch.equal(out["target"], fp32_targets)
    torch.testing.assert_close(out["target"], fp32_targets, rtol=0.1, atol=0.1)
