"""manifests.toy_speech: the generated corpus is deterministic, well-formed, and its letters are distinct."""

import numpy as np
import soundfile as sf

from manifests.toy_speech import ALPHABET, LEXICON, SAMPLE_RATE, generate_corpus, letter_wave


def test_corpus_files_and_transcripts(tmp_path):
    pairs = generate_corpus(str(tmp_path / "a"), 12, seed=5)
    lines = (tmp_path / "a" / "transcripts.tsv").read_text().splitlines()
    assert len(pairs) == len(lines) == 12
    for (path, text), line in zip(pairs, lines):
        utt_id, transcript = line.split("\t")
        assert path.endswith(f"{utt_id}.wav") and transcript == text
        assert all(w in LEXICON for w in text.split()) and 1 <= len(text.split()) <= 4
        info = sf.info(path)
        assert info.samplerate == SAMPLE_RATE and info.channels == 1 and info.subtype == "PCM_16"
        assert 0.2 < info.duration < 4.0
    again = generate_corpus(str(tmp_path / "b"), 12, seed=5)
    assert [t for _, t in again] == [t for _, t in pairs]
    assert np.array_equal(sf.read(again[3][0])[0], sf.read(pairs[3][0])[0])
    other = generate_corpus(str(tmp_path / "c"), 12, seed=6)
    assert [t for _, t in other] != [t for _, t in pairs]


def log_spectrum(x):
    spec = np.abs(np.fft.rfft(x, 4096))[:1600]  # up to ~6 kHz
    bands = spec.reshape(80, 20).mean(axis=1)
    return np.log(bands + 1e-6)


def test_letters_are_spectrally_distinct_across_speakers():
    """Nearest-centroid classification of single letters made with unseen pitch/formant/rate variation."""
    rng = np.random.default_rng(0)

    def sample():
        return dict(f0=rng.uniform(110, 220), formant_shift=rng.uniform(0.96, 1.04), rate=rng.uniform(0.85, 1.15))

    centroids = {c: np.mean([log_spectrum(letter_wave(c, rng, **sample())) for _ in range(20)], axis=0)
                 for c in ALPHABET}
    correct = total = 0
    for c in ALPHABET:
        for _ in range(20):
            feats = log_spectrum(letter_wave(c, rng, **sample()))
            guess = min(centroids, key=lambda k: np.sum((centroids[k] - feats) ** 2))
            correct += guess == c
            total += 1
    assert correct / total > 0.9, correct / total
