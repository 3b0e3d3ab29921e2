"""Run fairseq's bundled data2vec_vision model (the reference) and save what the parity test needs.

Run in its own process (python -m tests.reference.image_reference OUT.pt). The reference module
needs three workarounds, applied here only: numpy's removed ``np.int`` is restored, its debug
``print`` calls (tensors on every forward) are silenced, and its ``make_mask`` (Python ``random``)
is replaced by the fixed mask of ``image_config.make_batch`` so both models see the same mask.
"""

import contextlib
import io
import sys

import numpy as np
import torch

if not hasattr(np, "int"):
    np.int = int  # removed in numpy 1.24; the reference's make_mask uses it

from fairseq.examples.data2vec.models.data2vec_vision import (  # noqa: E402
    Data2VecVisionConfig,
    Data2VecVisionModel,
)

from tests.reference import build_teacher_apart_from_student  # noqa: E402
from tests.reference.image_config import TINY_IMAGE, VARIANTS, make_batch  # noqa: E402


def run_variant(options: dict) -> dict:
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        model = Data2VecVisionModel(Data2VecVisionConfig(**TINY_IMAGE, **options))
    model.train()
    with torch.no_grad():  # the table starts at zero; give positions a visible effect
        model.encoder.rel_pos_bias.relative_position_bias_table.normal_(0, 1)
    build_teacher_apart_from_student(model)

    images, mask = make_batch()
    model.make_mask = lambda *args, **kwargs: mask.long()
    with contextlib.redirect_stdout(io.StringIO()):
        result = model(images)
        # the student's final-normed output for every token, [CLS] included, on unmasked images
        with torch.no_grad():
            tokens = torch.cat([model.cls_emb.expand(2, -1, -1), model.patch_embed(images)], dim=1)
            features = model.encoder.extract_features(tokens, layer_results=None)
    return {
        "features": features,
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
