"""Run fairseq's bundled data2vec text model (the reference) and save what the parity test needs.

Run in its own process: the reference registers the model name ``data2vec_text`` as we do.
Usage: python -m tests.reference.text_reference OUT.pt
"""

import sys

import torch
from omegaconf import OmegaConf

from fairseq.models.transformer import TransformerConfig

# Workaround kept in the test: the reference's config has a TransformerConfig() instance as a
# dataclass default, which Python 3.11 rejects because the instance is unhashable.
TransformerConfig.__hash__ = object.__hash__

from fairseq.examples.data2vec.models.data2vec_text import (  # noqa: E402
    Data2VecTextConfig,
    Data2VecTextEncoder,
    Data2VecTextModel,
)

from tests.reference import build_teacher_apart_from_student  # noqa: E402
from tests.reference.text_config import TINY_TEXT, make_batch, make_dictionary  # noqa: E402


def main(out_path: str) -> None:
    torch.manual_seed(0)
    cfg = OmegaConf.merge(OmegaConf.structured(Data2VecTextConfig), TINY_TEXT)
    # Second workaround: outside a full hydra config the unused decoder part of that TransformerConfig
    # interpolates ${model.decoder.embed_dim}, which does not exist; give it plain values.
    cfg.transformer.decoder.input_dim = cfg.transformer.decoder.output_dim = cfg.transformer.decoder.embed_dim
    model = Data2VecTextModel(cfg, Data2VecTextEncoder(cfg, make_dictionary(), None))
    model.train()
    build_teacher_apart_from_student(model)

    src_tokens, _, tokens = make_batch()
    # The reference's teacher input is its `target_tokens` argument: give it the unmasked sentences
    # (what the paper's teacher sees; fairseq's masked_lm would pass mostly padding, fairseq #4881).
    result = model(src_tokens, target_tokens=tokens)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
            "loss": result["losses"]["main"].detach(),
            "sample_size": result["sample_size"],
        },
        out_path,
    )


if __name__ == "__main__":
    main(sys.argv[1])
