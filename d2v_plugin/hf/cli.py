"""Console scripts ``d2v-export-hf CKPT OUT_DIR`` and ``d2v-import-hf HF_DIR OUT.pt``."""

import argparse
import logging
import sys

from d2v_plugin.hf import export_to_hf, import_from_hf
from d2v_plugin.hf.common import HFConversionError


def _run(fn, *args) -> int:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    try:
        out = fn(*args)
    except (HFConversionError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def export_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="d2v-export-hf", description="Export a d2v-plugin checkpoint (pre-training "
                                "or fine-tuning) to a Hugging Face transformers model directory.")
    p.add_argument("checkpoint", help="a fairseq checkpoint of data2vec_audio(_ctc), data2vec_text(_classification) "
                   "or data2vec_image(_classification)")
    p.add_argument("out_dir", help="the directory to write (replaced if it exists, only once the export succeeded)")
    text = p.add_argument_group("text checkpoints", "where the tokenizer files are, if not in the data-bin the "
                                "checkpoint was trained on (cfg.task.data)")
    text.add_argument("--spm-model", help="the SentencePiece model (spm.model) the data-bin was encoded with")
    text.add_argument("--dictionary", help="the data-bin's dict.txt (input0/dict.txt for classification)")
    text.add_argument("--label-dictionary", help="classification: label/dict.txt (names the classes)")
    a = p.parse_args(argv)
    return _run(lambda ckpt, out: export_to_hf(ckpt, out, spm_model=a.spm_model, dictionary=a.dictionary,
                                               label_dictionary=a.label_dictionary), a.checkpoint, a.out_dir)


def import_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="d2v-import-hf", description="Convert a Hugging Face data2vec model directory "
                                "into a fairseq pre-training checkpoint for our fine-tuning recipes.")
    p.add_argument("hf_dir", help="a directory written by save_pretrained (config.json + weights)")
    p.add_argument("out", help="the checkpoint to write (e.g. hf_base.pt); use it as model.w2v_path / model.model_path")
    a = p.parse_args(argv)
    return _run(import_from_hf, a.hf_dir, a.out)


if __name__ == "__main__":
    sys.exit(export_main())
