"""``d2v-extract`` for each modality, on tiny checkpoints of ours (trained with fairseq-hydra-train, or built here
for data2vec 2.0 and fine-tuned encoders) and of fairseq's reference (made in a subprocess): shapes, and equality
with the model's own forward (encoder output, block outputs, the teacher's targets), batching invariance, and
every bad input named before anything is written.

The expected values are computed independently of d2v_plugin.inference: models loaded by fairseq's
``load_model_ensemble_and_task`` (or the model objects themselves), inputs read by the tasks' own datasets or
by soundfile / SentencePiece / the fairseq Dictionary here.
"""

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from fairseq import checkpoint_utils
from fairseq.data import Dictionary
from fairseq.data.audio.raw_audio_dataset import FileAudioDataset

import d2v_plugin  # noqa: F401  (registers our models and tasks)
from d2v_plugin.audio.manifest import read_manifest
from d2v_plugin.core.teacher_student import Views
from d2v_plugin.inference import inputs as inputs_lib
from d2v_plugin.inference.checkpoints import CheckpointError, load_model, vision_config
from d2v_plugin.inference.extract import Representation, extract
from d2v_plugin.inference.inputs import InputError
from tests.cli import BIN, hydra_train, run

TOL = 1e-5
NUM_WAVS = 4


# -- helpers --------------------------------------------------------------------------------------------------
def read_index(index: Path):
    """``[(input, array), ...]`` in index order, each shape checked against the index."""
    rows = index.read_text().splitlines()
    assert rows[0] == "input\toutput\tshape"
    out = []
    for row in rows[1:]:
        name, rel, shape = row.split("\t")
        array = np.load(index.parent / rel)
        assert array.dtype == np.float32 and array.shape == tuple(int(s) for s in shape.split(",")), row
        out.append((name, array))
    return out


def close(array: np.ndarray, expected: torch.Tensor, tol: float = TOL) -> None:
    expected = expected.detach().float().numpy()
    assert array.shape == expected.shape, (array.shape, expected.shape)
    assert np.abs(array - expected).max() <= tol, np.abs(array - expected).max()


def fairseq_model(checkpoint: Path, **overrides):
    (model,), _, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)], arg_overrides=overrides)
    return model.eval(), task


def perturbed(model):
    """The student moved away from its (EMA) teacher, as training leaves them."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ema_teacher" not in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def save_checkpoint(path: Path, model_cfg: dict, task_cfg: dict, model) -> Path:
    torch.save({"cfg": {"model": model_cfg, "task": task_cfg, "common": {"seed": 1}}, "model": model.state_dict(),
                "extra_state": {"train_iterator": None},
                "optimizer_history": [{"num_updates": 1, "optimizer_name": "Adam", "lr_scheduler_state": {}}]}, path)
    return path


# -- inputs -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wavs(speech_data, tmp_path_factory):
    """NUM_WAVS test utterances of different lengths: a folder (one in a sub-folder) and a manifest of them."""
    root, rows = read_manifest(str(speech_data / "test.tsv"))
    by_length = {}
    for row in rows:
        by_length.setdefault(row.frames, row)
    picked = sorted(by_length.values(), key=lambda r: r.frames)[:: max(1, len(by_length) // NUM_WAVS)][:NUM_WAVS]
    folder = tmp_path_factory.mktemp("wavs")
    rels = [f"{'sub/' if i == 0 else ''}{Path(r.path).name}" for i, r in enumerate(picked)]
    for r, rel in zip(picked, rels):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(root) / r.path, folder / rel)
    manifest = folder.parent / f"{folder.name}.tsv"
    manifest.write_text(f"{folder}\n" + "".join(f"{rel}\t{r.frames}\n" for r, rel in zip(picked, rels)))
    # the audio task's own reader: soundfile, normalize=true (what the tiny recipe trains with)
    sources = [FileAudioDataset(str(manifest), 16000, normalize=True)[i]["source"] for i in range(len(rels))]
    return SimpleNamespace(folder=folder, manifest=manifest, paths=[str(folder / r) for r in rels], sources=sources)


@pytest.fixture(scope="module")
def text_lines(text_data, tmp_path_factory):
    """Four lines (different lengths) and their ids as the text pipeline makes them (text_manifest strips
    trailing whitespace, SentencePiece, dict.txt ids + </s>; masked_lm puts <s> in front)."""
    import sentencepiece

    data = text_data[0]
    raw = [line.strip() for line in (data.parent / "raw" / "pretrain.txt").read_text().splitlines() if line.strip()]
    lines = [raw[0], raw[2], raw[3], "The Young owl\u00a0hides  near the barn ."]  # 8, 5, 8 words; odd spacing
    path = tmp_path_factory.mktemp("text") / "lines.txt"
    path.write_text("\n".join(lines) + "\n")
    spm = sentencepiece.SentencePieceProcessor(model_file=str(data / "spm.model"))
    d = Dictionary.load(str(data / "dict.txt"))
    d.add_symbol("<mask>")
    ids = [torch.cat([torch.tensor([d.bos()]), d.encode_line(" ".join(spm.encode(s, out_type=str)),
                                                              add_if_not_exist=False).long()]) for s in lines]
    return SimpleNamespace(path=path, ids=ids, dictionary=d, data=data)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """30 digit PNGs in class folders and their manifests (manifests.image_manifest)."""
    from manifests.image_manifest import main as image_manifest
    from manifests.toy_images import write_digits

    root = tmp_path_factory.mktemp("digits")
    write_digits(str(root / "images"), per_class=3)
    assert image_manifest([str(root / "images"), "--dest", str(root / "manifests"), "--valid-percent", "0.2",
                           "--seed", "1"]) == 0
    return root / "manifests"


# -- checkpoints ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_ckpt(text_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("text_ckpt")
    hydra_train("examples/text/pretraining", "tiny_cpu", out / "run",
                [f"task.data={text_data[0]}", f"checkpoint.save_dir={out}", "optimization.max_update=2",
                 "dataset.disable_validation=true"])
    return out / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def image_ckpt(digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("image_ckpt")
    hydra_train("examples/image/pretraining", "tiny_cpu", out / "run",
                [f"task.data={digits}", f"checkpoint.save_dir={out}", "optimization.max_update=2",
                 "dataset.disable_validation=true", "dataset.batch_size=8",
                 "+model.min_pred_var=0", "+model.min_target_var=0"])  # 2 updates: no collapse guard
    return out / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def reference(wavs, text_lines, digits, tmp_path_factory):
    """fairseq's reference audio / text / vision checkpoints and its own features, from a process of its own."""
    from d2v_plugin.image.dataset import ImageDataset
    from d2v_plugin.image.transforms import EvalTransform

    out = tmp_path_factory.mktemp("reference")
    images = torch.stack([ImageDataset(str(digits / "valid.tsv"), EvalTransform(32))[i]["source"] for i in range(3)])
    torch.save({"wavs": wavs.paths, "dict": str(text_lines.data / "dict.txt"), "text_ids": text_lines.ids,
                "images": images}, out / "inputs.pt")
    run([sys.executable, "-m", "tests.inference.reference_checkpoints", out / "inputs.pt", out])
    run([sys.executable, "-m", "tests.inference.reference_checkpoints", "--v2", out / "inputs.pt", out])
    features = {**torch.load(out / "features.pt", weights_only=True),
                **torch.load(out / "features_v2.pt", weights_only=True)}
    return SimpleNamespace(dir=out, features=features, images=images)


# -- audio ------------------------------------------------------------------------------------------------------
def test_audio_console_script_gives_the_models_forward(pretrained, wavs, tmp_path):
    ckpt = pretrained[0] / "checkpoint_last.pt"
    proc = run([BIN / "d2v-extract", ckpt, wavs.manifest, tmp_path / "out", "--batch-size", 3, "--device", "cpu"])
    assert "wrote" in proc.stdout
    model, _ = fairseq_model(ckpt)
    rows = read_index(tmp_path / "out" / "index.tsv")
    assert [name for name, _ in rows] == wavs.paths  # manifest order; outputs mirror the relative paths
    assert (tmp_path / "out" / "sub").is_dir()
    with torch.no_grad():
        for (_, array), source in zip(rows, wavs.sources):
            close(array, model.extract_features(source[None], None)["x"][0])


def test_audio_layers_targets_pooling_and_batching(pretrained, wavs, tmp_path):
    ckpt = pretrained[0] / "checkpoint_last.pt"
    model, _ = fairseq_model(ckpt)
    k = model.cfg.average_top_k_layers

    def run_extract(name, **kw):  # from the folder: {input path: array}
        return dict(read_index(extract(str(ckpt), str(wavs.folder), str(tmp_path / name), device="cpu",
                                       progress=False, **kw)))

    layer1 = run_extract("layer1", layer=1, batch_size=NUM_WAVS)
    targets = run_extract("targets", average_top_k=k, teacher=True, batch_size=NUM_WAVS)
    student_b1 = run_extract("student1", average_top_k=k, batch_size=1)
    student_bn = run_extract("studentn", average_top_k=k, batch_size=NUM_WAVS)
    pooled = run_extract("pooled", pool="mean", batch_size=2)
    final = run_extract("final", batch_size=1)
    assert sorted(final) == sorted(wavs.paths)
    with torch.no_grad():
        for path, source in zip(wavs.paths, wavs.sources):
            source = source[None]
            close(layer1[path], model.extract_features(source, None, layer=1)["x"][0])
            features, _ = model.encode_features(source, None)
            # exactly the targets the data2vec step builds for this utterance (the EMA teacher's weights)
            close(targets[path], model.teacher_targets(Views(None, features, None, None))[0])
            close(student_bn[path], torch.from_numpy(student_b1[path]))  # a padded batch changes nothing
            close(pooled[path], torch.from_numpy(final[path]).mean(0))
            assert np.abs(student_b1[path] - targets[path]).max() > 1e-3  # the student is not the teacher


# -- text -------------------------------------------------------------------------------------------------------
def test_text_layers_and_targets(text_ckpt, text_lines, tmp_path):
    model, _ = fairseq_model(text_ckpt, data=str(text_lines.data))
    k = model.cfg.average_top_k_layers

    def run_extract(name, **kw):
        index = extract(str(text_ckpt), str(text_lines.path), str(tmp_path / name), device="cpu", progress=False,
                        batch_size=3, **kw)
        return read_index(index)

    final, layer2 = run_extract("final"), run_extract("layer2", layer=2)
    targets, pooled = run_extract("targets", average_top_k=k, teacher=True), run_extract("pooled", pool="mean")
    assert [name for name, _ in final] == [f"{text_lines.path}:{n}" for n in range(1, 5)]
    with torch.no_grad():
        for i, ids in enumerate(text_lines.ids):
            x, extra = model(ids[None], features_only=True, return_all_hiddens=True)
            close(final[i][1], x[0])
            close(layer2[i][1], extra["inner_states"][3][:, 0])  # inner_states[0]: the embeddings
            close(targets[i][1], model.encoder.teacher_targets(Views(None, ids[None], None))[0])
            close(pooled[i][1], x[0].mean(0))


def test_text_classification_encoder(text_ckpt, text_lines, tmp_path):
    """A fine-tuned checkpoint: its encoder's output (the classification head is not needed)."""
    from d2v_plugin.text.classification import Data2VecTextClassificationConfig, Data2VecTextClassificationModel

    cfg = OmegaConf.structured(Data2VecTextClassificationConfig(model_path=str(text_ckpt)))
    task = SimpleNamespace(source_dictionary=text_lines.dictionary)
    model = Data2VecTextClassificationModel.build_model(cfg, task)
    model.register_classification_head("sentence_classification_head", num_classes=2)
    model = perturbed(model)
    ckpt = save_checkpoint(tmp_path / "cls.pt", {**OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "_name": "data2vec_text_classification"},
                           {"_name": "sentence_prediction", "data": str(text_lines.data), "init_token": 0}, model)
    rows = read_index(extract(str(ckpt), str(text_lines.path), str(tmp_path / "out"), device="cpu", progress=False,
                              spm_model=str(text_lines.data / "spm.model"), dictionary=str(text_lines.data / "dict.txt")))
    with torch.no_grad():
        for (_, array), ids in zip(rows, text_lines.ids):
            close(array, model(ids[None])[0][0])


# -- images -----------------------------------------------------------------------------------------------------
def test_image_layers_targets_and_pooling(image_ckpt, digits, tmp_path):
    model, task = fairseq_model(image_ckpt, data=str(digits))
    task.load_dataset("valid")
    images = torch.stack([task.dataset("valid")[i]["source"] for i in range(len(task.dataset("valid")))])
    depth, k = model.cfg.depth, model.cfg.average_top_k_layers

    def run_extract(name, **kw):
        return [a for _, a in read_index(extract(str(image_ckpt), str(digits / "valid.tsv"), str(tmp_path / name),
                                                 device="cpu", progress=False, batch_size=4, **kw))]

    final, last_block = run_extract("final"), run_extract("last", layer=depth - 1)
    targets, pooled = run_extract("targets", average_top_k=k, teacher=True), run_extract("pooled", pool="mean")
    with torch.no_grad():
        x = model.extract_features(images)["x"]
        blocks = model.encoder(model.embed(images), block_outputs="end", top_k=depth)
        expected_targets = model.teacher_targets(Views(None, model.embed(images), None))
    assert final[0].shape == (1 + (32 // 4) ** 2, model.cfg.embed_dim)  # [CLS] + 8 x 8 patches
    for i in range(len(images)):
        close(final[i], x[i])
        close(last_block[i], blocks[-1][i])  # before the encoder's final layer norm (pre-LN ViT)
        close(targets[i], expected_targets[i])
        close(pooled[i], x[i, 1:].mean(0))  # patches only, as the classifier pools


def test_image_classification_encoder(image_ckpt, digits, tmp_path):
    from d2v_plugin.image.classification import Data2VecImageClassificationConfig, Data2VecImageClassificationModel

    cfg = OmegaConf.structured(Data2VecImageClassificationConfig(model_path=str(image_ckpt), num_classes=10))
    model = perturbed(Data2VecImageClassificationModel.build_model(cfg))
    ckpt = save_checkpoint(tmp_path / "cls.pt", {**OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "_name": "data2vec_image_classification"},
                           {"_name": "image_classification", "data": str(digits), "input_size": 32}, model)
    rows = read_index(extract(str(ckpt), str(digits / "valid.tsv"), str(tmp_path / "out"), device="cpu",
                              progress=False, pool="mean"))
    images = [inputs_lib.read_image(name, _eval_transform()) for name, _ in rows]
    with torch.no_grad():
        for (_, array), image in zip(rows, images):
            close(array, model.features(image[None])[0])  # what the classifier reads


def _eval_transform():
    from d2v_plugin.image.transforms import EvalTransform

    return EvalTransform(32)


# -- data2vec 2.0 (ours, built here) ------------------------------------------------------------------------------
def v2_checkpoint(modality: str, path: Path, text=None):
    """Our data2vec 2.0 model of ``modality`` from the tiny v2 options, its student moved off its teacher, saved."""
    from tests.reference.v2_config import TINY_V2

    module = __import__(f"d2v_plugin.{modality}.model_v2", fromlist=["config_from_data2vec_multi"])
    options = module.config_from_data2vec_multi(TINY_V2[modality])
    torch.manual_seed(0)
    if modality == "audio":
        from d2v_plugin.audio.model import Data2VecAudioConfig, Data2VecAudioModel

        model = Data2VecAudioModel.build_model(Data2VecAudioConfig(**options, seed=1))
        task = {"_name": "audio_pretraining", "normalize": True}
    elif modality == "image":
        from d2v_plugin.image.model import Data2VecImageConfig, Data2VecImageModel

        model = Data2VecImageModel.build_model(Data2VecImageConfig(**options, seed=1))
        task = {"_name": "image_pretraining", "input_size": 32}
    else:
        from d2v_plugin.text.model import Data2VecTextConfig, Data2VecTextModel

        cfg = OmegaConf.merge(OmegaConf.structured(Data2VecTextConfig), options)
        task = SimpleNamespace(source_dictionary=text.dictionary, cfg=SimpleNamespace())
        model = Data2VecTextModel.build_model(cfg, task)
        options = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        task = {"_name": "masked_lm", "data": str(text.data)}
    return save_checkpoint(path, {**options, "_name": f"data2vec_{modality}", "seed": 1}, task, perturbed(model)), model


def test_data2vec2_audio_output_targets_and_batching(wavs, tmp_path):
    ckpt, model = v2_checkpoint("audio", tmp_path / "v2.pt")
    final = read_index(extract(str(ckpt), str(wavs.manifest), str(tmp_path / "final"), device="cpu", progress=False,
                               batch_size=NUM_WAVS))
    last = read_index(extract(str(ckpt), str(wavs.manifest), str(tmp_path / "last"), device="cpu", progress=False,
                              batch_size=NUM_WAVS, layer=model.cfg.encoder_layers - 1))
    targets = read_index(extract(str(ckpt), str(wavs.manifest), str(tmp_path / "targets"), device="cpu",
                                 progress=False, batch_size=NUM_WAVS, average_top_k=2, teacher=True))
    with torch.no_grad():
        for i, source in enumerate(wavs.sources):
            close(final[i][1], model.extract_features(source[None], None)["x"][0])
            close(last[i][1], torch.from_numpy(final[i][1]))  # post-LN: the last block's output is the output
            features, _ = model.encode_features(source[None], None)
            close(targets[i][1], model.teacher_targets(Views(None, features, None, None))[0])


def test_data2vec2_text_and_image(text_lines, digits, tmp_path):
    text_ckpt, text_model = v2_checkpoint("text", tmp_path / "v2_text.pt", text_lines)
    image_ckpt, image_model = v2_checkpoint("image", tmp_path / "v2_image.pt")
    text = read_index(extract(str(text_ckpt), str(text_lines.path), str(tmp_path / "text"), device="cpu",
                              progress=False, average_top_k=2, teacher=True))
    image = read_index(extract(str(image_ckpt), str(digits / "valid.tsv"), str(tmp_path / "image"), device="cpu",
                               progress=False))
    image_targets = read_index(extract(str(image_ckpt), str(digits / "valid.tsv"), str(tmp_path / "image_t"),
                                       device="cpu", progress=False, average_top_k=2, teacher=True))
    with torch.no_grad():
        for (_, array), ids in zip(text, text_lines.ids):
            views = Views(None, text_model.encoder.local_encoder(ids[None], dropout=False), None)
            close(array, text_model.encoder.teacher_targets(views)[0])
        for (name, array), (_, targets) in zip(image, image_targets):
            x = inputs_lib.read_image(name, _eval_transform())[None]
            close(array, image_model.extract_features(x)["x"][0])
            teacher_input = x if not image_model.cfg.ema_transformer_only else image_model.embed(x)
            close(targets, image_model.teacher_targets(Views(None, teacher_input, None))[0])


# -- fairseq's reference ------------------------------------------------------------------------------------------
def test_reference_checkpoints_give_the_references_features(reference, wavs, text_lines, digits, tmp_path):
    proc = run([BIN / "d2v-extract", reference.dir / "image.pt", digits / "valid.tsv", tmp_path / "image",
                "--device", "cpu", "--quiet"])
    assert "wrote" in proc.stdout
    image = read_index(tmp_path / "image" / "index.tsv")
    for i in range(len(reference.images)):
        close(image[i][1], reference.features["image"][i])
    audio = read_index(extract(str(reference.dir / "audio.pt"), str(wavs.manifest), str(tmp_path / "audio"),
                               device="cpu", progress=False, batch_size=NUM_WAVS))
    for (_, array), expected in zip(audio, reference.features["audio"]):
        close(array, expected)
    text = read_index(extract(str(reference.dir / "text.pt"), str(text_lines.path), str(tmp_path / "text"),
                              device="cpu", progress=False))
    for (_, array), expected in zip(text, reference.features["text"]):
        close(array, expected)
    audio_v2 = read_index(extract(str(reference.dir / "audio_v2.pt"), str(wavs.manifest), str(tmp_path / "audio_v2"),
                                  device="cpu", progress=False, batch_size=NUM_WAVS))
    for (_, array), expected in zip(audio_v2, reference.features["audio_v2"]):
        close(array, expected)


def test_reference_teacher_targets(reference, wavs, tmp_path):
    """The reference's ``_ema`` teacher is the one --teacher uses: the targets our loaded model builds."""
    loaded = load_model(str(reference.dir / "audio.pt"))
    model = loaded.model
    rows = read_index(extract(str(reference.dir / "audio.pt"), str(wavs.manifest), str(tmp_path / "t"), device="cpu",
                              progress=False, batch_size=NUM_WAVS, average_top_k=model.cfg.average_top_k_layers,
                              teacher=True))
    with torch.no_grad():
        for (_, array), source in zip(rows, wavs.sources):
            features, _ = model.encode_features(source[None], None)
            close(array, model.teacher_targets(Views(None, features, None, None))[0])


# -- bad inputs and options ---------------------------------------------------------------------------------------
def test_bad_audio_is_named(tmp_path):
    sf.write(tmp_path / "8k.wav", np.zeros(8000, dtype=np.float32), 8000)
    with pytest.raises(InputError, match=r"8k.wav: sample rate 8000 Hz.*16000 Hz"):
        inputs_lib.read_audio(str(tmp_path / "8k.wav"), 16000, True)
    wav = np.zeros(4000, dtype=np.float32)
    wav[123] = np.nan
    sf.write(tmp_path / "nan.wav", wav, 16000, subtype="FLOAT")
    with pytest.raises(InputError, match=r"nan.wav: 1 non-finite samples .* sample 123"):
        inputs_lib.read_audio(str(tmp_path / "nan.wav"), 16000, False)
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(InputError, match=r"text.wav: cannot read audio"):
        inputs_lib.read_audio(str(tmp_path / "text.wav"), 16000, False)
    sf.write(tmp_path / "short.wav", np.zeros(100, dtype=np.float32), 16000)
    with pytest.raises(InputError, match=r"short.wav: 100 samples, fewer than the 400"):
        inputs_lib.read_audio(str(tmp_path / "short.wav"), 16000, False, min_samples=400)


def test_bad_text_images_and_folders_are_named(tmp_path):
    (tmp_path / "empty_line.txt").write_text("one\n\nthree\n")
    with pytest.raises(InputError, match=r"empty_line.txt:2: empty line"):
        inputs_lib.read_lines(str(tmp_path / "empty_line.txt"))
    (tmp_path / "latin1.txt").write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1.txt:2: not valid UTF-8"):
        inputs_lib.read_lines(str(tmp_path / "latin1.txt"))
    spm = SimpleNamespace(encode=lambda text, out_type: text.split())
    d = Dictionary()
    with pytest.raises(InputError, match=r"x.txt:3: 6 tokens, more than the model's 5 positions"):
        inputs_lib.encode_line("a b c d", spm, d, d.bos(), 5, "x.txt:3")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(InputError, match=r"broken.png: cannot read image"):
        inputs_lib.read_image(str(tmp_path / "broken.png"), _eval_transform())
    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match=r"none: no .wav/.flac files"):
        inputs_lib.list_inputs("audio", str(tmp_path / "none"))
    for name in ("a.wav", "a.flac"):
        (tmp_path / "twice" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "twice" / name).write_bytes(b"")
    with pytest.raises(InputError, match=r"would both be written to a.npy"):
        inputs_lib.check_unique_outputs(inputs_lib.list_inputs("audio", str(tmp_path / "twice")))


def test_a_bad_file_stops_extraction_before_anything_is_written(pretrained, wavs, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(wavs.folder, folder)
    sf.write(folder / "zz_8k.wav", np.zeros(8000, dtype=np.float32), 8000)  # listed last
    with pytest.raises(InputError, match="zz_8k.wav: sample rate 8000"):
        extract(str(pretrained[0] / "checkpoint_last.pt"), str(folder), str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()


def test_options_and_checkpoints_that_cannot_work_are_refused(pretrained, tmp_path):
    loaded = load_model(str(pretrained[0] / "checkpoint_last.pt"))
    for rep, message in ((Representation(layer=4), r"--layer 4: the encoder has blocks 0..3"),
                         (Representation(average_top_k=0), r"--average-top-k 0: must be in 1..4"),
                         (Representation(teacher=True), r"--teacher goes with --average-top-k")):
        with pytest.raises(ValueError, match=message):
            rep.check(loaded)
    with pytest.raises(CheckpointError, match=r"shared_rel_pos_bias=False is not supported"):
        vision_config({"_name": "data2vec_vision", "shared_rel_pos_bias": False}, "v.pt")
    with pytest.raises(CheckpointError, match=r"model.use_abs_pos_emb has no counterpart"):
        vision_config({"_name": "data2vec_vision", "use_abs_pos_emb": True}, "v.pt")
    save_checkpoint(tmp_path / "roberta.pt", {"_name": "roberta"}, {}, torch.nn.Linear(1, 1))
    with pytest.raises(CheckpointError, match=r"roberta.pt: model 'roberta' is not supported"):
        load_model(str(tmp_path / "roberta.pt"))
