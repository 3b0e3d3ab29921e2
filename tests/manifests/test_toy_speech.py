"""manifests.toy_speech: a deterministic, learnable synthetic whistled-alphabet corpus."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from manifests.toy_speech import (ALPHABET, LEXICON, SAMPLE_RATE, generate_corpus, letter_sound,
                                  random_voice)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    return out, generate_corpus(str(out), 16, seed=7)


def read_transcripts(path: Path):
    return [tuple(line.split("\t")) for line in path.read_text(encoding="utf-8").splitlines()]


def test_lexicon_uses_the_alphabet_without_doubled_letters():
    assert 8 <= len(ALPHABET) <= 10 and len(set(ALPHABET)) == len(ALPHABET) and ALPHABET.isupper()
    assert 20 <= len(LEXICON) <= 30 and len(set(LEXICON)) == len(LEXICON)
    for word in LEXICON:
        assert 2 <= len(word) <= 4 and set(word) <= set(ALPHABET), word
        assert all(a != b for a, b in zip(word, word[1:])), f"{word} has a doubled letter"
    assert set("".join(LEXICON)) == set(ALPHABET), "every letter must occur in some word"


def test_transcripts_match_files(corpus):
    out, pairs = corpus
    assert [Path(p).name for p, _ in pairs] == [f"utt{i:05d}.wav" for i in range(16)]
    assert read_transcripts(out / "transcripts.tsv") == [(Path(p).stem, text) for p, text in pairs]
    assert sorted(p.name for p in out.glob("*.wav")) == sorted(Path(p).name for p, _ in pairs)
    for _, text in pairs:
        words = text.split(" ")
        assert 1 <= len(words) <= 4 and all(w in LEXICON for w in words), text


def test_audio_format_and_durations(corpus):
    _, pairs = corpus
    for path, text in pairs:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
        assert 0.4 <= info.duration <= 3.0, (path, info.duration)
        audio, _ = sf.read(path)
        assert np.abs(audio).max() > 0.1, "speech should be clearly above the background noise"
        # Longer transcripts take longer to say: at least 50 ms per letter.
        assert info.duration > 0.05 * len(text.replace(" ", ""))


def test_deterministic_for_a_seed(tmp_path, corpus):
    out, pairs = corpus
    again = generate_corpus(str(tmp_path / "again"), 16, seed=7)
    assert [t for _, t in again] == [t for _, t in pairs]
    for (a, _), (b, _) in zip(pairs, again):
        assert Path(a).read_bytes() == Path(b).read_bytes()
    other = generate_corpus(str(tmp_path / "other"), 16, seed=8)
    assert [t for _, t in other] != [t for _, t in pairs]


def letter_features(wave: np.ndarray) -> np.ndarray:
    """Log energy in 64 equal bands of 0-8 kHz: the letter's average spectrum."""
    power = np.abs(np.fft.rfft(wave, 4096))[:2048] ** 2
    return np.log(power.reshape(64, 32).mean(axis=1) + 1e-8)


def noisy_letter(letter: str, rng: np.random.Generator) -> np.ndarray:
    wave = letter_sound(letter, random_voice(rng), rng) * rng.uniform(0.3, 0.8)
    snr_db = rng.uniform(15, 30)
    return wave + rng.standard_normal(len(wave)) * np.sqrt(np.mean(wave**2) / 10 ** (snr_db / 10))


def test_letters_are_spectrally_distinct():
    """Nearest-centroid classification of letters spoken by unseen random voices in noise."""
    train_rng, test_rng = np.random.default_rng(0), np.random.default_rng(1)
    centroids = np.stack([np.mean([letter_features(noisy_letter(c, train_rng)) for _ in range(12)], axis=0)
                          for c in ALPHABET])
    correct = total = 0
    for i, c in enumerate(ALPHABET):
        for _ in range(20):
            f = letter_features(noisy_letter(c, test_rng))
            correct += int(np.argmin(((centroids - f) ** 2).sum(axis=1)) == i)
            total += 1
    assert correct / total > 0.9


def test_letters_vary_between_voices():
    """The same letter must not be one fixed waveform (a model should learn sounds, not samples)."""
    rng = np.random.default_rng(3)
    a, b = (letter_sound("A", random_voice(rng), rng) for _ in range(2))
    n = min(len(a), len(b))
    assert len(a) != len(b) or not np.allclose(a[:n], b[:n])


def test_cli_flac_with_prefix(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "manifests.toy_speech", str(tmp_path / "out"), "--num-utts", "3",
                           "--seed", "2", "--ext", "flac", "--prefix", "test"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1 and "3 files" in proc.stdout and " s " in proc.stdout
    assert sorted(p.name for p in (tmp_path / "out").glob("*.flac")) == ["test00000.flac", "test00001.flac",
                                                                       "test00002.flac"]
    ids = [utt for utt, _ in read_transcripts(tmp_path / "out" / "transcripts.tsv")]
    assert ids == ["test00000", "test00001", "test00002"]
    assert sf.info(str(tmp_path / "out" / "test00000.flac")).format == "FLAC"


def test_cli_help_documents_every_flag():
    proc = subprocess.run([sys.executable, "-m", "manifests.toy_speech", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--num-utts", "--seed", "--ext", "--prefix"):
        assert flag in proc.stdout
