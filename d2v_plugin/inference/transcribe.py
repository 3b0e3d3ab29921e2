"""``d2v-transcribe CKPT a.wav b.wav ...``: greedy CTC transcripts of a few files, no manifest needed.

One line per file, in the order given: ``path<TAB>transcript``. The transcript is what ``fairseq-generate
--task audio_ctc --post-process letter`` prints on its ``D-`` line for that file: the same greedy (Viterbi)
decoder (:class:`~d2v_plugin.audio.ctc_decoder.CtcDecoder`), the same symbols left out, the same
``letter`` post-processing (letters joined, ``|`` -> space). Files are read as the task reads them (its
sample rate, channels averaged, ``normalize``); a file at another sample rate is refused, not resampled.

Each file gets the transcript it gets alone: files are batched, but padded frames are kept out of the
stacked positional convolutions (:func:`~d2v_plugin.inference.extract.positional_convs_skip_padding`).
``fairseq-generate`` feeds them the padding, so in its padded batches a transcript can differ; with
``--batch-size 1`` the two agree.
"""

import argparse
import sys
from typing import List, Optional, Sequence, Tuple

import torch

from d2v_plugin.audio.ctc_decoder import CtcDecoder, CtcDecoderConfig
from d2v_plugin.inference import inputs as inputs_lib
from d2v_plugin.inference.checkpoints import CheckpointError, LoadedModel, load_model
from d2v_plugin.inference.extract import (collate, default_device, frame_counts, make_batches,
                                          padded_batches_differ, positional_convs_skip_padding, run_cli)


def transcribe(checkpoint: str, paths: Sequence[str], *, batch_size: int = 8, device: str = "cpu",
               dictionary: Optional[str] = None) -> List[Tuple[str, str]]:
    """``[(path, transcript), ...]`` in the order of ``paths`` (module docstring). Every file is read and
    checked before decoding; errors name the file."""
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: must be >= 1")
    if not paths:
        raise ValueError("no audio files given")
    loaded = load_model(checkpoint, dictionary=dictionary, device=device)
    if not loaded.is_ctc:
        raise CheckpointError(f"{checkpoint}: model {loaded.name!r} is not a CTC model (data2vec_audio_ctc); "
                              f"use d2v-extract for representations")
    read = reader(loaded)
    sizes = [read(p).numel() for p in paths]  # every file checked before any decoding
    decoder = CtcDecoder(CtcDecoderConfig(), loaded.dictionary)
    texts = {}
    for batch in make_batches(sizes, batch_size, padded_batches_differ(loaded) is not None):
        for i, tokens in zip(batch, greedy_tokens(loaded, decoder, [read(paths[i]) for i in batch])):
            texts[i] = loaded.dictionary.string(tokens, "letter",
                                                extra_symbols_to_ignore=decoder.symbols_to_strip_from_output)
    return [(p, texts[i]) for i, p in enumerate(paths)]


def reader(loaded: LoadedModel):
    """``path -> (S,)`` waveform as the checkpoint's task reads it."""
    task = loaded.task_cfg
    rate, normalize = int(task.get("sample_rate", 16000)), bool(task.get("normalize", False))
    min_samples = inputs_lib.receptive_field(loaded.encoder.conv_layers)
    return lambda path: inputs_lib.read_audio(path, rate, normalize, min_samples)


@torch.no_grad()
def greedy_tokens(loaded: LoadedModel, decoder: CtcDecoder, waves: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """The decoder's best token ids per waveform (blanks and repeats removed), as ``fairseq-generate`` gets them."""
    batch = collate(loaded, waves)
    sample = {"net_input": {"source": batch["source"], "padding_mask": batch["padding_mask"]}}
    with positional_convs_skip_padding(loaded.encoder, frame_counts(loaded, batch)):
        hypos = decoder.generate([loaded.model], sample)
    return [h[0]["tokens"].int().cpu() for h in hypos]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="d2v-transcribe", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Greedy CTC transcripts of a few audio files, no manifest needed.",
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("checkpoint", help="a data2vec_audio_ctc checkpoint (fine-tuned with the audio_ctc task)")
    p.add_argument("audio", nargs="+", help="audio files (.wav, .flac) at the task's sample rate")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", choices=("cpu", "cuda"), default=default_device())
    p.add_argument("--dictionary", help="the dict.ltr.txt, for a checkpoint whose task state has none")
    a = p.parse_args(argv)

    def body() -> int:
        for path, text in transcribe(a.checkpoint, a.audio, batch_size=a.batch_size, device=a.device,
                                     dictionary=a.dictionary):
            print(f"{path}\t{text}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
