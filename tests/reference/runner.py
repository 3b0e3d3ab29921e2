"""fairseq's bundled data2vec models (the reference): every workaround they need on this stack, in one place.

The reference (``fairseq.examples.data2vec.models``) registers the model names ``data2vec_audio`` and
``data2vec_text`` as d2v_plugin does, and fairseq refuses a name twice in one process. So this module
imports neither at module level (the parity tests import ``run_in_subprocess`` from here, next to our
models), and the reference runs in a process of its own:

- ``import_reference(modality)``: its config and model classes, with the import workarounds applied;
- ``build_reference(modality, options)``: a model in train mode, with the build workarounds applied;
- ``reference_forward(modality, model, inputs)``: its forward on given masks (its mask sampler replaced);
- ``build_teacher_apart_from_student(model)``: its EMA teacher, then a student moved away from it;
- ``run_in_subprocess(modality, out_path)``: ``python -m tests.reference.runner MODALITY OUT.pt`` in a
  fresh process, returning what that run saved.

Users: the parity tests (``tests/{audio,text,image}/test_model.py``) through ``run_in_subprocess``, and
``benchmarks/speed.py`` through ``build_reference`` / ``reference_forward`` in its worker processes.

The three parity runs (``run_audio``, ``run_text``, ``run_image``: which variants, what to save) live here
rather than in three modules: with building and forward shared, each is a few lines, and one entry point
gives all three tests the same subprocess command. The architectures and batches stay in
``*_config.py``, which tests of our own models import without the reference.
"""

import contextlib
import io
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from tests.reference import audio_config, image_config, text_config

REPO = Path(__file__).resolve().parents[2]
MODALITIES = ("audio", "text", "image")
LOSS = {"audio": "regression", "text": "main", "image": "regression"}  # the key of its loss in result["losses"]


def quiet():
    """Silences stdout: the vision reference prints debug lines and tensors while building and in every forward."""
    return contextlib.redirect_stdout(io.StringIO())


def import_reference(modality: str) -> SimpleNamespace:
    """The reference's ``Config`` and ``Model`` classes (and text's ``Encoder``), importable on this stack."""
    if modality == "audio":
        from fairseq.examples.data2vec.models.data2vec_audio import Data2VecAudioConfig, Data2VecAudioModel

        return SimpleNamespace(Config=Data2VecAudioConfig, Model=Data2VecAudioModel)
    if modality == "text":
        from fairseq.models.transformer import TransformerConfig

        # its config has a TransformerConfig() instance as a dataclass default: Python 3.11 rejects unhashable ones
        TransformerConfig.__hash__ = object.__hash__
        from fairseq.examples.data2vec.models.data2vec_text import (
            Data2VecTextConfig, Data2VecTextEncoder, Data2VecTextModel)

        return SimpleNamespace(Config=Data2VecTextConfig, Model=Data2VecTextModel, Encoder=Data2VecTextEncoder)
    if modality == "image":
        import numpy as np

        if not hasattr(np, "int"):
            np.int = int  # removed in numpy 1.24; the reference's make_mask uses it
        from fairseq.examples.data2vec.models.data2vec_vision import Data2VecVisionConfig, Data2VecVisionModel

        return SimpleNamespace(Config=Data2VecVisionConfig, Model=Data2VecVisionModel)
    raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")


def build_reference(modality: str, options: dict, dictionary=None):
    """The reference model of ``modality`` from its config ``options`` (text: and a fairseq ``dictionary``)."""
    ref = import_reference(modality)
    if modality == "audio":
        cfg = ref.Config(**options)
        model = ref.Model(cfg)
        # on torch 2.x its EMA deepcopy fails on the weight-normed positional conv unless that conv's computed
        # weight was last made without autograd
        with torch.no_grad():
            model.encoder.pos_conv(torch.zeros(1, cfg.encoder_embed_dim, 8))
    elif modality == "text":
        from omegaconf import OmegaConf

        cfg = OmegaConf.merge(OmegaConf.structured(ref.Config), options)
        # outside a hydra run its unused decoder config interpolates the absent ${model.decoder.embed_dim}
        cfg.transformer.decoder.input_dim = cfg.transformer.decoder.output_dim = cfg.transformer.decoder.embed_dim
        model = ref.Model(cfg, ref.Encoder(cfg, dictionary, None))
    else:
        with quiet():
            model = ref.Model(ref.Config(**options))
    model.train()
    return model


def reference_forward(modality: str, model, inputs: dict) -> dict:
    """The reference's forward result on the given batch and masks.

    ``inputs``: audio ``source``, ``mask`` (B, frames) and optional ``padding_mask``; text ``src`` (the
    masked tokens) and ``tokens`` (the unmasked sentences); image ``images`` and ``mask`` (one row of
    patches per image).
    """
    if modality == "audio":
        return model(inputs["source"], padding_mask=inputs.get("padding_mask"), mask_indices=inputs["mask"])
    if modality == "text":
        # its teacher input is `target_tokens`: give it the unmasked sentences (what the paper's teacher sees;
        # fairseq's masked_lm would pass mostly padding, fairseq #4881)
        return model(inputs["src"], target_tokens=inputs["tokens"])
    # its make_mask samples with Python's `random`: replace it by the given mask, so both models see the same one
    model.make_mask = lambda *args, **kwargs: inputs["mask"].long()
    with quiet():
        return model(inputs["images"])


def build_teacher_apart_from_student(model) -> None:
    """Build the reference's EMA teacher, then move the student away from it, as training does.

    A teacher equal to the student would hide a model that regresses the student's own outputs.
    """
    model.set_num_updates(0)  # the reference builds its EMA teacher here
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.set_num_updates(1)


# -- the parity runs: what the tests compare our models with --------------------------------------------
def parity_model(modality: str, options: dict, dictionary=None):
    """A reference model seeded as the tests seed ours, with a teacher apart from its student."""
    torch.manual_seed(0)
    model = build_reference(modality, options, dictionary)
    if modality == "image":
        with torch.no_grad():  # the table starts at zero; give positions a visible effect
            model.encoder.rel_pos_bias.relative_position_bias_table.normal_(0, 1)
    build_teacher_apart_from_student(model)
    return model


def summary(modality: str, model, result: dict) -> dict:
    """The state, loss and sample size of a reference run (audio and image: and its target/prediction variance)."""
    out = {"state_dict": model.state_dict(), "loss": result["losses"][LOSS[modality]].detach(),
           "sample_size": result["sample_size"]}
    if modality != "text":
        out.update(target_var=result["target_var"], pred_var=result["pred_var"])
    return out


def run_audio() -> dict:
    """Per teacher variant of ``audio_config.VARIANTS``: state, loss and variances on the fixed batch."""
    runs = {}
    for name, options in audio_config.VARIANTS.items():
        model = parity_model("audio", {**audio_config.TINY_AUDIO, **options})
        source, padding_mask, mask = audio_config.make_batch()
        result = reference_forward("audio", model, dict(source=source, padding_mask=padding_mask, mask=mask))
        runs[name] = summary("audio", model, result)
    return runs


def run_text() -> dict:
    """State, loss and resolved config (for a fairseq checkpoint of it) on the fixed masked batch."""
    from omegaconf import OmegaConf

    model = parity_model("text", text_config.TINY_TEXT, text_config.make_dictionary())
    src_tokens, _, tokens = text_config.make_batch()
    result = reference_forward("text", model, dict(src=src_tokens, tokens=tokens))
    cfg = OmegaConf.to_container(model.cfg, resolve=True, enum_to_str=True)
    return {**summary("text", model, result), "cfg": cfg}


def run_image() -> dict:
    """Per variant of ``image_config.VARIANTS``: as audio, and the student's final features on unmasked images."""
    runs = {}
    for name, options in image_config.VARIANTS.items():
        model = parity_model("image", {**image_config.TINY_IMAGE, **options})
        images, mask = image_config.make_batch()
        result = reference_forward("image", model, dict(images=images, mask=mask))
        # the student's final-normed output for every token, [CLS] included, on unmasked images
        with torch.no_grad(), quiet():
            tokens = torch.cat([model.cls_emb.expand(len(images), -1, -1), model.patch_embed(images)], dim=1)
            features = model.encoder.extract_features(tokens, layer_results=None)
        runs[name] = {"features": features, **summary("image", model, result)}
    return runs


RUNS = {"audio": run_audio, "text": run_text, "image": run_image}


def run_in_subprocess(modality: str, out_path, runner: str = "tests.reference.runner") -> dict:
    """Runs ``python -m RUNNER MODALITY OUT`` (the parity run of ``modality``) in a fresh process; returns what
    it saved at ``out_path``."""
    proc = subprocess.run([sys.executable, "-m", runner, modality, str(out_path)], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{runner} {modality} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return torch.load(out_path, weights_only=True)


def main(argv: list) -> None:
    if len(argv) != 2 or argv[0] not in RUNS:
        raise SystemExit(f"usage: python -m tests.reference.runner {{{','.join(MODALITIES)}}} OUT.pt")
    torch.save(RUNS[argv[0]](), argv[1])


if __name__ == "__main__":
    main(sys.argv[1:])
