"""Option ranges checked when a model is built (d2v_plugin/core/validation.py): every modality x data2vec
version, the fine-tuning models, the run-level checks through fairseq's config parent, the recipes, README."""

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fairseq.dataclass.utils import merge_with_parent
from fairseq.models import MODEL_DATACLASS_REGISTRY
from fairseq.optim import FairseqOptimizer
from fairseq.optim.lr_scheduler.tri_stage_lr_scheduler import TriStageLRScheduleConfig, TriStageLRSchedule

from d2v_plugin.audio.ctc_model import Data2VecAudioCtc, Data2VecAudioCtcConfig
from d2v_plugin.audio.model import Data2VecAudioConfig, Data2VecAudioModel
from d2v_plugin.image.classification import Data2VecImageClassificationConfig, Data2VecImageClassificationModel
from d2v_plugin.image.model import Data2VecImageConfig, Data2VecImageModel
from d2v_plugin.image.task import ImageClassificationConfig, ImagePretrainingConfig
from d2v_plugin.text.classification import Data2VecTextClassificationConfig, Data2VecTextClassificationModel
from d2v_plugin.text.model import Data2VecTextConfig, Data2VecTextEncoder
from d2v_plugin.text.model_v2 import Data2Vec2TextEncoder
from d2v_plugin.core.validation import (
    TABLES, ConfigRangeError, check_run, markdown_table, run_config, validate, violations,
)

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "examples").glob("*/*/*.yaml"))
CONFIGS = {"audio": Data2VecAudioConfig, "text": Data2VecTextConfig, "image": Data2VecImageConfig}
LAYERS = {"audio": "encoder_layers", "text": "transformer.encoder.layers", "image": "depth"}


def recipe_model(modality: str, version: int):
    """The model config of the modality's tiny recipe (tiny_cpu.yaml / tiny_cpu_v2.yaml) as fairseq merges it."""
    name = "tiny_cpu" if version == 1 else "tiny_cpu_v2"
    model = OmegaConf.to_container(OmegaConf.load(REPO / "examples" / modality / "pretraining" / f"{name}.yaml").model)
    return OmegaConf.merge(OmegaConf.structured(CONFIGS[modality]), {k: v for k, v in model.items() if k != "_name"})


def with_option(cfg, option: str, value):
    cfg = cfg.copy()
    OmegaConf.update(cfg, option, value, merge=False)
    return cfg


# (option, bad value, the allowed range the error states); {layers}: the recipe's depth
SHARED = [
    ("ema_decay", 1.5, "in [0, 1]"),
    ("ema_end_decay", 0.9, "in [model.ema_decay = 0.99, 1]"),
    ("ema_anneal_end_step", -1, ">= 0"),
    ("loss_beta", -1.0, ">= 0"),
    ("loss_scale", 0.0, "> 0 or None"),
    ("average_top_k_layers", 99, "in [1, model.{layers} = {depth}]"),
    ("average_top_k_layers", 0, "in [1, model.{layers} = {depth}]"),
    ("min_target_var", -0.1, ">= 0"),
    ("min_pred_var", float("nan"), ">= 0"),
    ("var_check_start_update", -1, ">= 0 or None"),
    ("var_check_patience", 0, ">= 1"),
]
VERSION_2 = [
    ("clone_batch", 0, ">= 1"),
    ("mask_noise_std", -1.0, ">= 0"),
    ("post_mlp_drop", 1.0, "in [0, 1)"),
    ("prenet_dropout", -0.1, "in [0, 1)"),
    ("norm_eps", 0.0, "> 0"),
    ("decoder_layers", 0, ">= 1"),
    ("decoder_kernel", 0, ">= 1"),
    ("decoder_input_dropout", 1.0, "in [0, 1)"),
    ("decoder_groups", 7, ">= 1 and divide model.decoder_dim = {decoder_dim}, model.{width} = {dim}"),
    ("projection_layers", 0, ">= 1"),
    ("projection_ratio", 0.0, "> 0"),
]
OWN = {
    ("audio", 1): [("mask_prob", 1.5, "in [0, 1]"), ("mask_length", 0, ">= 1"), ("dropout", 1.0, "in [0, 1)"),
                   ("encoder_layerdrop", -0.5, "in [0, 1)"), ("mask_channel_prob", 2.0, "in [0, 1]"),
                   ("feature_grad_mult", -1.0, ">= 0")],
    ("audio", 2): [("mask_prob", 1.0, "in [0, 1) (data2vec 2.0 keeps some frames unmasked)"),
                   ("pos_conv_depth", 0, ">= 1"), ("attention_dropout", 1.0, "in [0, 1)")],
    ("text", 1): [("head_layers", 0, ">= 1"), ("transformer.dropout", 1.0, "in [0, 1)"),
                  ("transformer.encoder.layerdrop", 1.5, "in [0, 1)")],
    ("text", 2): [("mask_prob", 0.0, "in (0, 1)"), ("mask_prob", 1.0, "in (0, 1)"),
                  ("transformer.attention_dropout", -0.1, "in [0, 1)")],
    ("image", 1): [("num_mask_patches", 65, "in [1, the number of patches = 64]"), ("drop_path", 1.0, "in [0, 1)"),
                   ("mask_min_aspect", 0.0, "in (0, 1]"), ("layer_norm_eps", 0.0, "> 0"),
                   ("max_mask_patches_per_block", 2, ">= model.min_mask_patches_per_block = 4 or None")],
    ("image", 2): [("mask_prob", 1.0, "in (0, 1)"), ("mask_length", 0, ">= 1"), ("cls_loss", -0.01, ">= 0"),
                   ("layerdrop", 1.0, "in [0, 1)"), ("mask_dropout", 1.0, "in [0, 1)")],
}
CASES = [(m, v, *case) for m in CONFIGS for v in (1, 2)
         for case in SHARED + (VERSION_2 if v == 2 else []) + OWN[(m, v)]]


def expected_message(option: str, value, allowed: str) -> str:
    return re.escape(f"model.{option}={value!r} is out of range: must be {allowed}")


@pytest.mark.parametrize("modality, version, option, value, allowed", CASES,
                         ids=[f"{m}-v{v}-{o}={x}" for m, v, o, x, _ in CASES])
def test_a_bad_option_is_named_with_its_value_and_range(modality, version, option, value, allowed):
    cfg = recipe_model(modality, version)
    width = {"audio": "encoder_embed_dim", "text": "transformer.encoder.embed_dim", "image": "embed_dim"}[modality]
    allowed = allowed.format(layers=LAYERS[modality], depth=OmegaConf.select(cfg, LAYERS[modality]), width=width,
                             dim=OmegaConf.select(cfg, width), decoder_dim=cfg.decoder_dim)
    with pytest.raises(ConfigRangeError, match=expected_message(option, value, allowed)):
        validate(with_option(cfg, option, value), f"data2vec_{modality}", version)


@pytest.mark.parametrize("modality", sorted(CONFIGS))
@pytest.mark.parametrize("version", [1, 2])
def test_the_tiny_recipes_and_the_defaults_are_valid(modality, version):
    assert violations(recipe_model(modality, version), TABLES[f"data2vec_{modality}"], version) == []
    if modality != "text":  # data2vec_text's defaults: 8 target blocks of fairseq's 6-layer TransformerConfig
        assert violations(CONFIGS[modality](data2vec_version=version), TABLES[f"data2vec_{modality}"], version) == []


def test_version_2_options_are_not_checked_for_version_1():
    cfg = with_option(recipe_model("audio", 1), "clone_batch", 0)
    validate(cfg, "data2vec_audio", 1)  # ignored by version 1
    with pytest.raises(ConfigRangeError, match=r"model\.clone_batch=0"):
        validate(cfg, "data2vec_audio", 2)


def test_every_problem_is_named_in_one_error():
    cfg = with_option(with_option(recipe_model("audio", 1), "mask_prob", 1.5), "ema_decay", 1.5)
    with pytest.raises(ConfigRangeError) as e:
        validate(cfg, "data2vec_audio", 1)
    assert "model.mask_prob=1.5" in str(e.value) and "model.ema_decay=1.5" in str(e.value)


# -- the models' builds apply it, before building anything ------------------------------------------------------
@pytest.mark.parametrize("version", [1, 2])
def test_every_pretraining_model_validates_when_built(version):
    audio = with_option(recipe_model("audio", version), "loss_beta", -1.0)
    with pytest.raises(ConfigRangeError, match=r"model\.loss_beta=-1\.0"):
        Data2VecAudioModel.build_model(audio)
    image = with_option(recipe_model("image", version), "ema_decay", 1.5)
    with pytest.raises(ConfigRangeError, match=r"model\.ema_decay=1\.5"):
        Data2VecImageModel.build_model(image)
    text = with_option(recipe_model("text", version), "ema_decay", -0.5)
    encoder = Data2VecTextEncoder if version == 1 else Data2Vec2TextEncoder
    with pytest.raises(ConfigRangeError, match=r"model\.ema_decay=-0\.5"):
        encoder(text, dictionary=None)  # checked before the dictionary is read


def test_the_fine_tuning_models_validate_when_built():
    ctc = OmegaConf.structured(Data2VecAudioCtcConfig(w2v_path="never_read.pt", mask_prob=1.5, layerdrop=1.0))
    with pytest.raises(ConfigRangeError, match=r"model\.mask_prob=1\.5 .*\[0, 1\].*model\.layerdrop=1\.0 .*\[0, 1\)"):
        Data2VecAudioCtc.build_model(ctc, task=None)
    text = OmegaConf.structured(Data2VecTextClassificationConfig(model_path="never_read.pt", dropout=1.0))
    with pytest.raises(ConfigRangeError, match=re.escape("model.dropout=1.0 is out of range: must be in [0, 1) or None")):
        Data2VecTextClassificationModel.build_model(text, task=None)
    image = OmegaConf.structured(Data2VecImageClassificationConfig(model_path="never_read.pt", num_classes=-1))
    with pytest.raises(ConfigRangeError, match=re.escape("model.num_classes=-1 is out of range: must be >= 0")):
        Data2VecImageClassificationModel.build_model(image)


@pytest.mark.parametrize("table, cfg", [
    ("data2vec_audio_ctc", Data2VecAudioCtcConfig()),
    ("data2vec_text_classification", Data2VecTextClassificationConfig()),
    ("data2vec_image_classification", Data2VecImageClassificationConfig()),
    ("image_task", ImagePretrainingConfig()),
])
def test_fine_tuning_and_task_defaults_are_valid(table, cfg):
    assert violations(cfg, TABLES[table]) == []


def test_the_image_task_options_are_checked_by_the_image_models():
    class Task:
        cfg = ImagePretrainingConfig(crop_min_scale=0.5, crop_max_scale=0.4, hflip_prob=1.5)

    with pytest.raises(ConfigRangeError, match=re.escape(
            "task.crop_max_scale=0.4 is out of range: must be in [task.crop_min_scale = 0.5, 1]")) as e:
        Data2VecImageModel.build_model(recipe_model("image", 1), Task())
    assert "task.hflip_prob=1.5 is out of range: must be in [0, 1]" in str(e.value)


# -- run-level options, through the config's parent (what fairseq's build_model receives) ---------------------
def run(model: dict, **groups):
    """``cfg.model`` as fairseq's build_model sees it: a merged copy whose parent is the run config."""
    root = OmegaConf.create({"optimization": {"lr": [0.0005], "max_update": 300},
                             "lr_scheduler": {"_name": "polynomial_decay"}, "model": model})
    for name, values in groups.items():
        root[name] = OmegaConf.merge(root.get(name, {}), values)
    dc = MODEL_DATACLASS_REGISTRY[model["_name"]]
    return merge_with_parent(dc(), root.model)


def test_the_learning_rate_must_be_positive():
    cfg = run({"_name": "data2vec_audio", "encoder_layers": 2, "average_top_k_layers": 2},
              optimization={"lr": [-1.0]})
    assert run_config(cfg) is not None
    with pytest.raises(ConfigRangeError, match=re.escape("optimization.lr=[-1.0] is out of range: every entry must be > 0")):
        validate(cfg, "data2vec_audio")
    with pytest.raises(ConfigRangeError, match=r"optimization\.lr=\[0\.001, 0\.0\]"):
        check_run(run_config(run({"_name": "data2vec_audio"}, optimization={"lr": [0.001, 0.0]})))


def tri_stage_steps(max_update: int, phase_ratio):
    """What fairseq's own tri_stage scheduler does with these settings: its phase lengths, or the error."""
    class Optimizer(FairseqOptimizer):
        def set_lr(self, lr):
            pass

    cfg = TriStageLRScheduleConfig(phase_ratio=phase_ratio, max_update=max_update, lr=[0.001])
    s = TriStageLRSchedule(cfg, Optimizer(None))
    return s.warmup_steps, s.hold_steps, s.decay_steps


@pytest.mark.parametrize("phase_ratio, smallest", [([0.03, 0.9, 0.07], 15), ([0.05, 0.8, 0.15], 7),
                                                   ([0.1, 0.4, 0.5], 2)])
def test_tri_stage_with_too_few_updates_is_refused_with_the_smallest_that_works(phase_ratio, smallest):
    with pytest.raises((ZeroDivisionError, AssertionError)):  # fairseq's own failure, which the check pre-empts
        tri_stage_steps(smallest - 1, phase_ratio)
    assert tri_stage_steps(smallest, phase_ratio)[2] == 1
    scheduler = {"_name": "tri_stage", "phase_ratio": phase_ratio}
    ctc = {"_name": "data2vec_audio_ctc", "w2v_path": "never_read.pt"}
    cfg = run(ctc, optimization={"max_update": smallest - 1}, lr_scheduler=scheduler)
    with pytest.raises(ConfigRangeError, match=(
            rf"optimization\.max_update={smallest - 1} is out of range with lr_scheduler tri_stage and "
            rf"lr_scheduler\.phase_ratio=\[.*\]: the decay phase would last .* = 0 updates .*"
            rf"optimization\.max_update must be >= {smallest}")):
        Data2VecAudioCtc.build_model(cfg, task=None)  # refused before the encoder is loaded
    validate(run(ctc, optimization={"max_update": smallest}, lr_scheduler=scheduler), "data2vec_audio_ctc")


def test_tri_stage_other_settings():
    def problems(**scheduler):
        return lambda: validate(run({"_name": "data2vec_audio_ctc", "w2v_path": "x.pt"},
                                    lr_scheduler={"_name": "tri_stage", **scheduler}), "data2vec_audio_ctc")

    with pytest.raises(ConfigRangeError, match=r"phase_ratio=\[0\.1, 0\.4, 0\.4\] .*adding up to exactly 1"):
        problems(phase_ratio=[0.1, 0.4, 0.4])()
    with pytest.raises(ConfigRangeError, match=r"the decay fraction \(last entry\) must be > 0"):
        problems(phase_ratio=[0.5, 0.5, 0.0])()
    with pytest.raises(ConfigRangeError, match=r"lr_scheduler\.decay_steps=0 is out of range: must be >= 1"):
        problems(warmup_steps=10, hold_steps=10, decay_steps=0)()
    problems(warmup_steps=0, hold_steps=10, decay_steps=5)()  # a zero-length warmup is fine in fairseq
    cfg = run({"_name": "data2vec_audio_ctc", "w2v_path": "x.pt"}, optimization={"max_update": 0},
              lr_scheduler={"_name": "tri_stage", "phase_ratio": [0.1, 0.4, 0.5]})
    with pytest.raises(ConfigRangeError, match=r"optimization\.max_update=0 is out of range: .*needs max_update > 0"):
        validate(cfg, "data2vec_audio_ctc")


def test_a_config_without_a_run_is_checked_alone():
    cfg = Data2VecAudioCtcConfig(w2v_path="x.pt")
    assert run_config(cfg) is None and run_config(OmegaConf.structured(cfg)) is None
    validate(cfg, "data2vec_audio_ctc")


# -- the recipes and the README ----------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p.relative_to(REPO / "examples")) for p in RECIPES])
def test_every_recipe_passes(recipe):
    raw = OmegaConf.load(recipe)
    model = {k: v for k, v in OmegaConf.to_container(raw.model).items() if k not in ("w2v_path", "model_path")}
    cfg = run(model, optimization=raw.optimization, lr_scheduler=raw.lr_scheduler)
    validate(cfg, raw.model._name)
    task = OmegaConf.to_container(raw.task)
    if task["_name"] in ("image_pretraining", "image_classification"):
        dc = ImageClassificationConfig if task["_name"] == "image_classification" else ImagePretrainingConfig
        task = OmegaConf.merge(OmegaConf.structured(dc), {k: v for k, v in task.items() if k not in ("_name", "data")})
        validate(task, "image_task", prefix="task.", run=False)


def test_the_readme_table_lists_the_checks():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme, "README.md: paste d2v_plugin.core.validation.markdown_table() into it"
