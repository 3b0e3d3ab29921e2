"""Run fairseq's bundled data2vec audio model (the reference) and save what the parity test needs.

Run in its own process: the reference registers the model name ``data2vec_audio`` as we do.
Usage: python audio_reference.py OUT.pt
"""

import sys

import torch

from fairseq.examples.data2vec.models.data2vec_audio import Data2VecAudioConfig, Data2VecAudioModel

from tests.reference import build_teacher_apart_from_student
from tests.reference.audio_config import TINY_AUDIO, VARIANTS, make_batch


def run_variant(options: dict) -> dict:
    torch.manual_seed(0)
    cfg = Data2VecAudioConfig(**{**TINY_AUDIO, **options})
    model = Data2VecAudioModel(cfg)
    model.train()
    # Workaround kept in the test: on torch 2.x the reference's EMA deepcopy fails on the
    # weight-normed positional conv unless its computed weight was last made without autograd.
    with torch.no_grad():
        model.encoder.pos_conv(torch.zeros(1, cfg.encoder_embed_dim, 8))
    build_teacher_apart_from_student(model)

    source, padding_mask, mask_indices = make_batch()
    result = model(source, padding_mask=padding_mask, mask_indices=mask_indices)
    return {
        "state_dict": model.state_dict(),
        "loss": result["losses"]["regression"].detach(),
        "sample_size": result["sample_size"],
        "target_var": result["target_var"],
        "pred_var": result["pred_var"],
    }


def main(out_path: str) -> None:
    torch.save({name: run_variant(options) for name, options in VARIANTS.items()}, out_path)


if __name__ == "__main__":
    main(sys.argv[1])
