"""Tiny fairseq-reference data2vec checkpoints (audio, text, vision 1.0; audio 2.0) and the reference's own features.

Run in a process of its own (the reference registers our model names; its workarounds live in
tests/reference/runner.py and runner_v2.py): ``python -m tests.inference.reference_checkpoints INPUTS.pt OUT_DIR``
for 1.0, ``... --v2 INPUTS.pt OUT_DIR`` for data2vec 2.0 (``data2vec_multi``, in yet another process: its
import workarounds differ).

``INPUTS.pt``: ``{"wavs": [paths], "dict": dict.txt path, "text_ids": [(T,) LongTensor], "images": (B, 3, S, S)}``.
Writes ``OUT_DIR/{audio,text,image}.pt`` (fairseq checkpoints as the reference's trainer saves them: ``cfg``
with ``model`` and ``task``, the model state with its flat ``_ema`` teacher) and ``OUT_DIR/features.pt``: the
reference's ``extract_features`` output for each input alone (audio: the waveform read with soundfile and
layer-normed, as ``normalize: true`` does).
"""

import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from tests.reference import audio_config, image_config, text_config
from tests.reference.runner import parity_model, quiet

AUDIO = {**audio_config.TINY_AUDIO, "extractor_mode": "layer_norm"}  # data2vec's speech setting
TEXT = {**text_config.TINY_TEXT, "max_positions": 64,
        "transformer": {**text_config.TINY_TEXT["transformer"], "max_source_positions": 64}}
IMAGE = {**image_config.TINY_IMAGE, "end_of_block_targets": True, "layer_norm_targets": True}


def checkpoint(model_cfg: dict, task_cfg: dict, model) -> dict:
    """What fairseq's trainer saves, less the optimizer state."""
    return {"cfg": {"model": model_cfg, "task": task_cfg}, "model": model.state_dict(),
            "extra_state": {"train_iterator": None},
            "optimizer_history": [{"num_updates": 1, "optimizer_name": "Adam", "lr_scheduler_state": {}}]}


def audio(wavs, out: Path) -> list:
    model = parity_model("audio", AUDIO)
    cfg = {**dataclasses.asdict(model.cfg), "_name": "data2vec_audio"}
    torch.save(checkpoint(cfg, {"_name": "audio_pretraining", "normalize": True, "sample_rate": 16000}, model),
               out / "audio.pt")
    model.eval()
    with torch.no_grad():
        return [model.extract_features(read_wav(p)[None], None, mask=False)["x"][0] for p in wavs]


def text(dict_path: str, ids, out: Path) -> list:
    from fairseq.data import Dictionary
    from omegaconf import OmegaConf

    d = Dictionary.load(dict_path)
    d.add_symbol("<mask>")
    model = parity_model("text", TEXT, d)
    cfg = {**OmegaConf.to_container(model.cfg, resolve=True, enum_to_str=True), "_name": "data2vec_text"}
    task = {"_name": "masked_lm", "data": str(Path(dict_path).parent)}
    torch.save(checkpoint(cfg, task, model), out / "text.pt")
    model.eval()
    with torch.no_grad():
        return [model.encoder.extract_features(x[None])[0][0] for x in ids]


def image(images, out: Path) -> torch.Tensor:
    model = parity_model("image", IMAGE)
    cfg = {**dataclasses.asdict(model.cfg), "_name": "data2vec_vision"}
    task = {"_name": "image_pretraining", "input_size": IMAGE["image_size"]}
    torch.save(checkpoint(cfg, task, model), out / "image.pt")
    model.eval()
    with torch.no_grad(), quiet():
        tokens = torch.cat([model.cls_emb.expand(len(images), -1, -1), model.patch_embed(images)], dim=1)
        return model.encoder.extract_features(tokens, layer_results=None)


def read_wav(path: str) -> torch.Tensor:
    """A waveform as ``normalize: true`` reads it: soundfile float32, then a layer norm over all samples."""
    import soundfile as sf

    wav = torch.from_numpy(sf.read(path, dtype="float32")[0])
    return F.layer_norm(wav, wav.shape)


def audio_v2(wavs, out: Path) -> list:
    """``data2vec_multi`` (audio) with the tiny 2.0 options: ``audio_v2.pt`` and its features per waveform."""
    from omegaconf import OmegaConf

    from tests.reference import v2_config
    from tests.reference.runner_v2 import BUILD_SEED, build_reference_v2, build_teacher_apart_from_student_v2

    torch.manual_seed(BUILD_SEED)
    model = build_reference_v2("audio", v2_config.TINY_V2["audio"])
    build_teacher_apart_from_student_v2(model)
    cfg = {**OmegaConf.to_container(model.cfg, resolve=True, enum_to_str=True), "_name": "data2vec_multi"}
    torch.save(checkpoint(cfg, {"_name": "audio_pretraining", "normalize": True, "sample_rate": 16000}, model),
               out / "audio_v2.pt")
    model.eval()
    with torch.no_grad():
        return [model.extract_features(read_wav(p)[None], padding_mask=None, mask=False)["x"][0] for p in wavs]


def main(argv) -> None:
    v2 = argv[0] == "--v2"
    inputs_path, out_dir = argv[1:] if v2 else argv
    inputs = torch.load(inputs_path, weights_only=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if v2:
        torch.save({"audio_v2": audio_v2(inputs["wavs"], out)}, out / "features_v2.pt")
        return
    features = {"audio": audio(inputs["wavs"], out), "text": text(inputs["dict"], inputs["text_ids"], out),
                "image": image(inputs["images"], out)}
    torch.save(features, out / "features.pt")


if __name__ == "__main__":
    main(sys.argv[1:])
