"""Images <-> Hugging Face transformers (d2v_plugin.hf.image): a tiny pre-training run exported through
``d2v-export-hf`` and compared with our student, imported back through ``d2v-import-hf`` and fine-tuned with
our recipe, the fine-tuned classifier exported and its logits compared, the image processor against our
evaluation transform, a transformers-made classifier imported, data2vec 2.0 (pre-LN) exported, and one
test per option transformers cannot express."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import transformers  # noqa: E402  (the set-up command installs it; a missing one is an error)

import d2v_plugin  # noqa: F401,E402  (registers the image models and tasks)
from d2v_plugin.hf import image as hf_image  # noqa: E402
from d2v_plugin.hf.common import HFConversionError, read_checkpoint  # noqa: E402
from d2v_plugin.image.classification import HEAD_NAME, Data2VecImageClassificationModel  # noqa: E402
from d2v_plugin.image.model import Data2VecImageConfig, Data2VecImageModel  # noqa: E402
from d2v_plugin.image.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform  # noqa: E402
from manifests import image_manifest  # noqa: E402
from manifests.toy_images import write_digits  # noqa: E402
from tests.cli import BIN, hydra_train, run  # noqa: E402

TOL = 1e-4
# a few updates, no validation: these tests need checkpoints, not learning
FEW_UPDATES = ["optimization.max_update=2", "dataset.batch_size=8", "dataset.disable_validation=true",
               "common.log_interval=1", "lr_scheduler.warmup_updates=1"]



def hf_model(path, cls=transformers.AutoModel):
    return cls.from_pretrained(str(path)).eval()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_digits(str(root / "digits"), per_class=2)
    assert image_manifest.main([str(root / "digits"), "--dest", str(root / "manifests"), "--valid-percent", "0.5",
                                "--seed", "1"]) == 0
    return root / "manifests"


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain")
    hydra_train("examples/image/pretraining", "tiny_cpu", out / "run",
                [f"task.data={data}", f"checkpoint.save_dir={out / 'ckpt'}", *FEW_UPDATES])
    return out / "ckpt" / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def exported(pretrained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "hf"
    run([BIN / "d2v-export-hf", pretrained, out])
    return out


@pytest.fixture(scope="module")
def imported(exported, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("import") / "from_hf.pt"
    run([BIN / "d2v-import-hf", exported, out])
    return out


@pytest.fixture(scope="module")
def finetuned(imported, data, tmp_path_factory) -> Path:
    """Our fine-tuning recipe from the imported checkpoint (whose student is the pre-trained one, see
    test_import_round_trip)."""
    out = tmp_path_factory.mktemp("finetune")
    hydra_train("examples/image/finetuning", "tiny_cpu", out / "run",
                [f"task.data={data}", f"checkpoint.save_dir={out / 'ckpt'}", f"model.model_path={imported}",
                 *FEW_UPDATES])
    return out / "ckpt" / "checkpoint_last.pt"


def two_images(data: Path) -> torch.Tensor:
    """Two training digits as our evaluation transform feeds them to the model, ``(2, 3, 32, 32)``."""
    root, *rows = (data / "train.tsv").read_text().splitlines()
    transform = EvalTransform(32, 0.875)
    return torch.stack([transform(Image.open(Path(root) / row.split("\t")[0])) for row in rows[:2]])


def our_pretraining_model(checkpoint: Path) -> Data2VecImageModel:
    cfg, state, _ = read_checkpoint(checkpoint)
    model = Data2VecImageModel.build_model(cfg.model)
    model.load_state_dict(state, strict=True)
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# -- export ---------------------------------------------------------------------------------------
def test_pretraining_export_matches_the_student(pretrained, exported, data):
    assert (exported / "model.safetensors").is_file() and not list(exported.glob("*.bin"))
    model = hf_model(exported)
    assert type(model).__name__ == "Data2VecVisionModel"
    assert transformers.AutoImageProcessor.from_pretrained(str(exported)) is not None
    assert not any("teacher" in k or "final_proj" in k for k in model.state_dict())
    ours = our_pretraining_model(pretrained)
    images = two_images(data)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[0, :20], mask[1, 30:50] = True, True
    with torch.no_grad():
        diff = max_diff(model(images).last_hidden_state, ours.extract_features(images)["x"])
        # the mask embedding is HF's mask_token
        diff_masked = max_diff(model(images, bool_masked_pos=mask).last_hidden_state,
                               ours(images, mask=True, features_only=True, mask_indices=mask)["x"])
    print(f"pre-training export: max abs diff {diff:.2e} (masked input {diff_masked:.2e})")
    assert diff <= TOL and diff_masked <= TOL


def test_image_processor_gives_our_eval_pixels(exported):
    processor = transformers.AutoImageProcessor.from_pretrained(str(exported), backend="pil")
    ours = EvalTransform(32, 0.875, IMAGENET_MEAN, IMAGENET_STD)  # the recipe's task options
    rng = np.random.default_rng(0)
    # a square RGB image, a landscape one and a portrait greyscale one, all resized then cropped
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 256, (64, 50), dtype=np.uint8))]
    for img in images:
        pixels = processor(img, return_tensors="pt")["pixel_values"][0]
        assert max_diff(pixels, ours(img)) <= 1e-5, img.size


def test_classification_export_matches_our_logits(finetuned, data, tmp_path):
    out = hf_image.export(*read_checkpoint(finetuned)[:2], tmp_path / "hf_cls", finetuned)
    model = hf_model(out, transformers.AutoModelForImageClassification)
    assert type(model).__name__ == "Data2VecVisionForImageClassification"
    labels = (data / "labels.txt").read_text().split()
    assert model.config.num_labels == 10 and [model.config.id2label[i] for i in range(10)] == labels
    cfg, state, _ = read_checkpoint(finetuned)
    ours = Data2VecImageClassificationModel.build_model(cfg.model, SimpleNamespace(num_classes=10))
    ours.load_state_dict(state, strict=True)
    images = two_images(data)
    with torch.no_grad():
        diff = max_diff(model(images).logits, ours.eval()(images)[0])
        # the logits are small (the head starts 1e-3-scaled): compare its normed input too
        pooled = ours.classification_heads[HEAD_NAME].norm(ours.features(images))
        diff_pooled = max_diff(model.data2vec_vision(images).pooler_output, pooled)
    print(f"classification export: max abs logit diff {diff:.2e} (pooled features {diff_pooled:.2e})")
    assert diff <= TOL and diff_pooled <= TOL


def test_key_bias_is_dropped_exactly(tmp_path):
    """HF has no key bias; ours never trains it (softmax ignores it), but a non-zero one still converts exactly."""
    cfg = small_cfg()
    torch.manual_seed(0)
    ours = Data2VecImageModel.build_model(cfg.model).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.3)
    assert ours.encoder.layers[0].self_attn.k_proj.bias.abs().min() > 0
    model = hf_model(hf_image.export(cfg, ours.state_dict(), tmp_path / "hf", tmp_path / "x.pt"))
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert max_diff(model(images).last_hidden_state, ours.extract_features(images)["x"]) <= TOL


def test_v2_pre_ln_encoder_exports(tmp_path):
    """data2vec 2.0 with pre-LN blocks maps exactly (fixed positions -> absolute embeddings, prenet first)."""
    cfg = small_cfg(data2vec_version=2, layer_norm_first=True, prenet_depth=1, norm_eps=1e-6, decoder_dim=16,
                    decoder_groups=4, clone_batch=2)
    torch.manual_seed(0)
    ours = Data2VecImageModel.build_model(cfg.model).eval()
    out = hf_image.export(cfg, ours.state_dict(), tmp_path / "hf_v2", tmp_path / "v2.pt")
    model = hf_model(out)
    assert model.config.num_hidden_layers == 3 and model.config.use_absolute_position_embeddings
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        diff = max_diff(model(images).last_hidden_state, ours.extract_features(images)["x"])
    print(f"data2vec 2.0 pre-LN export: max abs diff {diff:.2e}")
    assert diff <= TOL


# -- import ---------------------------------------------------------------------------------------
def test_import_round_trip(pretrained, exported, imported, tmp_path, data):
    """HF -> ours -> HF gives the same model; our student is the pre-trained one, the teacher its copy."""
    state = torch.load(imported, weights_only=True)
    original = torch.load(pretrained, weights_only=True)["model"]
    for key, value in state["model"].items():
        if key.endswith("k_proj.bias"):
            assert not value.any()  # HF has no key bias: softmax ignores it
        elif key.startswith("ema_teacher.model."):
            assert torch.equal(value, state["model"]["encoder." + key[len("ema_teacher.model."):]])
        elif not key.startswith(("final_proj.", "ema_teacher.")):  # the regression head is fresh
            assert torch.equal(value, original[key]), key
    assert state["cfg"]["task"]["normalization_mean"] == list(IMAGENET_MEAN)

    again = hf_image.export(*read_checkpoint(imported)[:2], tmp_path / "again", imported)
    first, second = hf_model(exported), hf_model(again)
    images = two_images(data)
    with torch.no_grad():
        assert torch.equal(first(images).last_hidden_state, second(images).last_hidden_state)
    assert (again / "preprocessor_config.json").read_text() == (exported / "preprocessor_config.json").read_text()


def test_imported_checkpoint_fine_tunes(finetuned):
    state = torch.load(finetuned, weights_only=True)
    assert state["cfg"]["model"]["pretrained_model_cfg"]["_name"] == "data2vec_image"
    assert state["optimizer_history"][-1]["num_updates"] == 2


def test_import_of_a_transformers_classifier(tmp_path):
    """A Data2VecVisionForImageClassification made by transformers (mean pooling: no final norm, no mask
    token): its encoder is imported, and our fine-tuning encoder gives its hidden states."""
    config = transformers.Data2VecVisionConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, use_shared_relative_position_bias=True, use_mean_pooling=True, num_labels=3,
        layer_norm_eps=1e-6)
    torch.manual_seed(0)
    hf = transformers.Data2VecVisionForImageClassification(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    hf.save_pretrained(tmp_path / "hf")
    hf_image.import_(tmp_path / "hf", tmp_path / "ours.pt")
    ours = our_pretraining_model(tmp_path / "ours.pt")
    ours.remove_pretraining_modules()  # as fine-tuning does: no final norm, like HF's mean-pooling model
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        hidden = hf(images, output_hidden_states=True).hidden_states[-1]
        assert max_diff(ours.extract_features(images)["x"], hidden) <= TOL


# -- what transformers cannot express ---------------------------------------------------------------
def small_cfg(**model):
    options = dict(image_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, seed=1, ema_anneal_end_step=1,
                   num_mask_patches=8, min_mask_patches_per_block=2, average_top_k_layers=1, **model)
    merged = OmegaConf.merge(OmegaConf.structured(Data2VecImageConfig), options)
    return OmegaConf.create({"model": {**OmegaConf.to_container(merged, resolve=True), "_name": "data2vec_image"},
                             "task": {}})


def test_v2_post_ln_is_refused_and_nothing_written(tmp_path):
    cfg = small_cfg(data2vec_version=2, layer_norm_first=False)
    with pytest.raises(HFConversionError, match=r"model\.data2vec_version=2.*post-LN.*nothing was written"):
        hf_image.export(cfg, {}, tmp_path / "out", tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())


def test_v2_classifier_is_refused():
    model_cfg = OmegaConf.to_container(small_cfg(data2vec_version=2, layer_norm_first=True).model)
    with pytest.raises(HFConversionError, match=r"model\.data2vec_version=2.*before mean pooling"):
        hf_image.hf_config_kwargs(model_cfg, classification=True)


@pytest.mark.parametrize("option, value", [
    ("use_relative_position_bias", True),  # one bias per block
    ("use_absolute_position_embeddings", True),
    ("hidden_act", "relu"),
    ("hidden_dropout_prob", 0.1),
    ("image_size", [16, 32]),
])
def test_import_refuses_what_our_vit_cannot_express(option, value):
    options = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, use_shared_relative_position_bias=True)
    config = transformers.Data2VecVisionConfig(**{**options, option: value})
    with pytest.raises(HFConversionError, match=rf"config.json {option}=.*our data2vec_image cannot express it"):
        hf_image.model_options(config)


def test_text_tokenizer_options_are_refused_for_an_image_checkpoint(pretrained, tmp_path):
    from d2v_plugin.hf import export_to_hf

    with pytest.raises(HFConversionError, match="spm_model: only for text checkpoints"):
        export_to_hf(pretrained, tmp_path / "hf", spm_model=tmp_path / "spm.model")
    assert not (tmp_path / "hf").exists()
