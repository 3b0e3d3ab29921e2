"""CTC decoding: greedy and prefix beam search against brute force on small emission matrices."""

import itertools
import math

import pytest
import torch

from d2v_plugin.audio.ctc_decoder import CtcDecoder, CtcDecoderConfig, beam_decode, greedy_decode
from fairseq.data import Dictionary

BLANK = 0


def collapse(path, blank=BLANK):
    out, prev = [], None
    for k in path:
        if k != prev and k != blank:
            out.append(k)
        prev = k
    return tuple(out)


def brute_force(logp):
    """Sum over all alignments per label sequence: exact CTC posteriors."""
    T, V = logp.shape
    totals = {}
    for path in itertools.product(range(V), repeat=T):
        s = sum(float(logp[t, k]) for t, k in enumerate(path))
        key = collapse(path)
        totals[key] = s if key not in totals else math.log(math.exp(totals[key]) + math.exp(s))
    return totals


def random_logp(T, V, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(T, V, generator=g) * 2, dim=-1)


@pytest.mark.parametrize("seed", range(5))
def test_wide_beam_finds_the_most_probable_labelling(seed):
    logp = random_logp(5, 3, seed)
    exact = brute_force(logp)
    best = max(exact, key=exact.get)
    (tokens, score), = beam_decode(logp, BLANK, beam=50, sep=None, symbols=["<b>", "a", "b"])
    assert tuple(tokens) == best
    assert score == pytest.approx(exact[best], abs=1e-6)


def test_beam_can_beat_greedy():
    # Greedy path "a - b" is likely, but "blank" split over two frames sums to more for "a":
    logp = torch.log(torch.tensor([[0.4, 0.6, 0.0 + 1e-9], [0.4, 0.3, 0.3], [0.4, 0.3, 0.3]]))
    logp = torch.log_softmax(logp, dim=-1)
    greedy, _, _ = greedy_decode(logp, BLANK)
    exact = brute_force(logp)
    (tokens, _), = beam_decode(logp, BLANK, beam=10, sep=None, symbols=["<b>", "a", "b"])
    assert tuple(tokens) == max(exact, key=exact.get)
    assert exact[tuple(tokens)] >= exact[tuple(greedy)]


def test_greedy_merges_repeats_and_drops_blanks():
    path = [1, 1, 0, 1, 2, 2, 0, 0, 2]
    logp = torch.full((len(path), 3), -10.0)
    for t, k in enumerate(path):
        logp[t, k] = 0.0
    tokens, score, per_token = greedy_decode(logp, BLANK)
    assert tokens == [1, 1, 2, 2] and score == 0.0 and len(per_token) == 4


def test_kenlm_without_the_package_gives_a_clear_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_kenlm(name, *args, **kwargs):
        if name == "kenlm":
            raise ImportError("No module named 'kenlm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_kenlm)
    d = Dictionary()
    d.add_symbol("|")
    cfg = CtcDecoderConfig(ctc_decoder="beam", ctc_kenlm_model="lm.arpa")
    with pytest.raises(ImportError, match="pip install kenlm"):
        CtcDecoder(cfg, d)


def test_bad_decoder_name_is_rejected():
    with pytest.raises(ValueError, match="ctc_decoder='greedy'"):
        CtcDecoder(CtcDecoderConfig(ctc_decoder="greedy"), Dictionary())


def test_non_finite_audio_is_refused_with_its_manifest_row(tmp_path):
    """fairseq-generate on a NaN clip: an error naming the row, not an empty hypothesis scored nan."""
    import numpy as np
    import soundfile as sf
    from types import SimpleNamespace

    import d2v_plugin  # noqa: F401  (annotates fairseq's audio dataset with manifest rows)
    from fairseq.data.audio.raw_audio_dataset import FileAudioDataset

    sf.write(tmp_path / "ok.wav", np.zeros(4000, dtype=np.float32), 16000)
    sf.write(tmp_path / "nan.wav", np.full(4000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    (tmp_path / "test.tsv").write_text(f"{tmp_path}\nok.wav\t4000\nnan.wav\t4000\n")
    dataset = FileAudioDataset(str(tmp_path / "test.tsv"), sample_rate=16000)
    sample = dataset.collater([dataset[0], dataset[1]])
    d = Dictionary()
    decoder = CtcDecoder(CtcDecoderConfig(), d, task=SimpleNamespace(datasets={"test": dataset}))
    with pytest.raises(ValueError, match=rf"audio holds NaN or infinite samples: {tmp_path}/test.tsv:3 "
                                         rf"\({tmp_path}/nan.wav\)$"):
        decoder.generate([], sample)


def test_minus_inf_at_padded_frames_is_fine_but_nan_in_a_real_frame_is_refused(monkeypatch):
    """fairseq's CTC model gives padded frames -inf for every token but blank: a valid log-probability."""
    d = Dictionary()
    for c in "ab":
        d.add_symbol(c)
    logp = torch.log_softmax(torch.randn(2, 6, len(d)), dim=-1)
    lengths = torch.tensor([6, 3])
    logp[1, 3:, 1:] = float("-inf")
    decoder = CtcDecoder(CtcDecoderConfig(), d)
    monkeypatch.setattr(decoder, "emissions", lambda models, sample: (logp, lengths))
    sample = {"id": torch.tensor([7, 8]), "net_input": {"source": torch.zeros(2, 10)}}
    assert len(decoder.generate([], sample)) == 2
    logp[0, 2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"the model's output is NaN .*: sample id 7$"):
        decoder.generate([], sample)
