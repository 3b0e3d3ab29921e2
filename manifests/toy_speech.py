"""A synthetic "whistled alphabet" speech corpus with known transcripts, for the demo and the tests.

Every letter of a small alphabet is whistled at its own pitch: ten pitches half an octave apart, from
250 Hz to 5.5 kHz, with a slight vibrato. Utterances string 1-4 words of a fixed lexicon together, with
short gaps between letters and longer silences between words. Every utterance varies the whistler's
pitch (+-4%), speaking rate (+-15%), loudness and background noise (white or pink, 15-30 dB SNR), so a
model has to learn the letters, not memorise waveforms.

Why whistles and not vowel-like sounds: the tiny CPU model's conv feature encoder starts at random
weights, and at random weights it keeps the pitch of a pure tone (a linear classifier on its output
frames finds 83% of the letters) but scrambles formant-shaped harmonic complexes (36%). With such
"vowels", whether tiny CTC fine-tuning learned the letters at all depended on the random seed.

    python -m manifests.toy_speech OUT_DIR --num-utts 400 --seed 1

writes ``OUT_DIR/utt00000.wav ...`` (16 kHz, mono, 16-bit PCM) and ``OUT_DIR/transcripts.tsv``
(``utt_id<TAB>TRANSCRIPT`` per line, utt_id being the file name without extension).
"""

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
ALPHABET = "ADEGKLNOST"

# Half an octave apart: a +-4% pitch shift keeps every letter far from its neighbours.
LETTER_PITCH: Dict[str, float] = dict(zip(ALPHABET, np.geomspace(250.0, 5500.0, len(ALPHABET))))

# No word has the same letter twice in a row: CTC would need a blank between them, which a toy corpus
# meant to be learnt in minutes should not rely on.
LEXICON: List[str] = [
    "AT", "TO", "GO", "NO", "SO", "DO", "ON",
    "DOG", "LOG", "LEG", "DEN", "TEN", "NET", "SET", "OAK", "TOE", "SEA", "EGO", "ODE",
    "LAKE", "SNOT", "GOAT", "TOAD", "SALT", "LEND", "DESK", "NEST", "KALE", "DOLE",
]

MAX_LETTERS = 11  # per utterance; with the timing ranges below this bounds utterances to 3 s
MIN_SECONDS = 0.4  # shorter utterances get a longer trailing silence


@dataclass(frozen=True)
class Voice:
    """Per-utterance whistler/recording variation."""

    pitch_shift: float  # multiplies every letter's pitch
    rate: float  # multiplies all durations (>1 is slower)


def random_voice(rng: np.random.Generator) -> Voice:
    return Voice(pitch_shift=rng.uniform(0.96, 1.04), rate=rng.uniform(0.85, 1.15))


def fft_size(n: int) -> int:
    """The power of two >= n: FFTs of arbitrary (e.g. prime) lengths are several times slower."""
    return 1 << max(0, n - 1).bit_length()


def fade(n: int, ramp_seconds: float = 0.01) -> np.ndarray:
    """A gain curve with linear ramps at both ends, avoiding clicks that would be a cue of their own."""
    ramp = max(1, min(n // 4, int(ramp_seconds * SAMPLE_RATE)))
    gain = np.ones(n)
    gain[:ramp] = np.linspace(0.0, 1.0, ramp)
    gain[-ramp:] = np.linspace(1.0, 0.0, ramp)
    return gain


def letter_sound(letter: str, voice: Voice, rng: np.random.Generator) -> np.ndarray:
    """One whistled letter, 70-120 ms long times the voice's speaking rate, peak about 1."""
    n = int(SAMPLE_RATE * rng.uniform(0.07, 0.12) * voice.rate)
    t = np.arange(n) / SAMPLE_RATE
    vibrato = 1.0 + 0.01 * np.sin(2 * np.pi * 6.0 * t + rng.uniform(0, 2 * np.pi))  # 1% at 6 Hz
    pitch = LETTER_PITCH[letter] * voice.pitch_shift * vibrato
    wave = np.sin(2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE + rng.uniform(0, 2 * np.pi))
    return wave * fade(n) * rng.uniform(0.8, 1.0)


def background_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance white or pink (1/f power) noise, chosen at random."""
    if rng.random() < 0.5:
        return rng.standard_normal(n)
    size = fft_size(n)
    spectrum = np.fft.rfft(rng.standard_normal(size))
    freqs = np.fft.rfftfreq(size, 1.0 / SAMPLE_RATE)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0
    pink = np.fft.irfft(spectrum, size)[:n]
    return pink / (pink.std() + 1e-12)


def synthesize(words: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """The waveform (float32 in [-1, 1]) of ``words`` spoken by a random voice in random noise."""
    voice = random_voice(rng)

    def silence(lo: float, hi: float) -> np.ndarray:
        return np.zeros(int(SAMPLE_RATE * rng.uniform(lo, hi) * voice.rate))

    parts = [silence(0.05, 0.15)]
    letters = []
    for i, word in enumerate(words):
        if i:
            parts.append(silence(0.12, 0.25))
        for j, letter in enumerate(word):
            if j:
                parts.append(silence(0.01, 0.03))
            letters.append(letter_sound(letter, voice, rng))
            parts.append(letters[-1])
    parts.append(silence(0.05, 0.15))
    clean = np.concatenate(parts)
    if len(clean) < MIN_SECONDS * SAMPLE_RATE:
        clean = np.pad(clean, (0, int(MIN_SECONDS * SAMPLE_RATE) - len(clean)))
    level = rng.uniform(0.3, 0.8)
    clean *= level

    # The SNR is relative to the speech itself, not to the utterance with its silences.
    speech_power = np.mean(np.concatenate(letters) ** 2) * level**2
    snr_db = rng.uniform(15.0, 30.0)
    noisy = clean + background_noise(len(clean), rng) * np.sqrt(speech_power / 10 ** (snr_db / 10))
    return np.clip(noisy, -1.0, 1.0).astype(np.float32)


def random_words(rng: np.random.Generator) -> List[str]:
    """1-4 lexicon words with at most MAX_LETTERS letters in all (redrawn until they fit)."""
    while True:
        words = [LEXICON[k] for k in rng.integers(0, len(LEXICON), size=int(rng.integers(1, 5)))]
        if sum(map(len, words)) <= MAX_LETTERS:
            return words


def generate_corpus(out_dir: str, num_utts: int, seed: int = 0, ext: str = "wav",
                    prefix: str = "utt") -> List[Tuple[str, str]]:
    """Write ``num_utts`` utterances and ``transcripts.tsv`` to ``out_dir``; return (path, transcript) pairs.

    The corpus is a function of ``seed`` (and ``num_utts``: a larger corpus starts with the smaller one).
    """
    if ext not in ("wav", "flac"):
        raise ValueError(f"ext must be 'wav' or 'flac', got {ext!r}")
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(num_utts):
        words = random_words(rng)
        path = os.path.join(out_dir, f"{prefix}{i:05d}.{ext}")
        sf.write(path, synthesize(words, rng), SAMPLE_RATE, subtype="PCM_16")
        pairs.append((path, " ".join(words)))
    tmp = os.path.join(out_dir, "transcripts.tsv.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for path, text in pairs:
            f.write(f"{os.path.splitext(os.path.basename(path))[0]}\t{text}\n")
    os.replace(tmp, os.path.join(out_dir, "transcripts.tsv"))  # readers never see a half-written file
    return pairs


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out_dir", help="folder to write the audio files and transcripts.tsv to (created if missing)")
    p.add_argument("--num-utts", type=int, default=400, help="number of utterances to generate")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same corpus")
    p.add_argument("--ext", choices=["wav", "flac"], default="wav", help="audio file format")
    p.add_argument("--prefix", default="utt", help="file name prefix: files are PREFIX00000.EXT, PREFIX00001.EXT, ...")
    args = p.parse_args(argv)
    if args.num_utts < 0:
        p.error("--num-utts must be >= 0")
    pairs = generate_corpus(args.out_dir, args.num_utts, args.seed, args.ext, args.prefix)
    seconds = sum(sf.info(path).duration for path, _ in pairs)
    print(f"wrote {len(pairs)} files ({seconds:.1f} s of audio) and transcripts.tsv to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
