"""A synthetic spoken English corpus with known transcripts and speakers, synthesised with eSpeak NG.

Every utterance is either a connected digit string (``--text digits``: 1-7 of ONE..NINE, ZERO, OH,
like TIDIGITS) or a short sentence (``--text sentences``: 3-8 words from a small grammar over ~380
common English words chosen so that no two of them sound alike, digit words included). Transcripts are
upper case A-Z, apostrophe and single spaces: fairseq letter targets.

A speaker is an eSpeak NG voice: one of eight English accents (``ACCENTS``) with one of the ~100 voice
variants of ``espeak-ng-data/voices/!v`` (``en-us+f3``, ``en-gb-scotland+klatt`` ...). The speakers are
split once, by a hash of their name (independent of ``--seed`` and ``--num-utts``), into ``train``
(~80%) and ``heldout`` (~20%) speakers, so a model trained on one can be tested on unseen voices.
Every utterance also varies the speaking rate, pitch, pitch range, gap between words, loudness and
background noise.

The engine is the pip wheel ``espeakng-loader`` (libespeak-ng 1.52 and its data), driven through ctypes.
The library keeps synthesis state between utterances (and seeds its random generator from the clock),
so it is loaded afresh and seeded for every utterance: each file depends only on the arguments and its
index, and the same arguments give byte-identical files (a larger corpus starts with the smaller one).

    python -m manifests.spoken_corpus OUT_DIR --num-utts 400 --seed 1 --speakers train --text digits

writes ``OUT_DIR/PREFIX00000.wav ...`` (16 kHz, mono, 16-bit PCM), ``OUT_DIR/transcripts.tsv``
(``utt_id<TAB>TRANSCRIPT``) and ``OUT_DIR/speakers.tsv`` (``utt_id<TAB>SPEAKER``, e.g. ``en-us+f3``;
the accent is the part before ``+``), utt_id being the file name without extension. transcripts.tsv is
written last, through a temporary file: a crashed run leaves none.
"""

import argparse
import ctypes
import hashlib
import os
import shutil
import sys
import tempfile
from fractions import Fraction
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
INSTALL_HINT = "python -m pip install espeakng-loader"

# eSpeak NG's English voices (espeak-ng-data/lang/gmw/en*, but en-Shaw: that one reads Shavian script).
ACCENTS: Tuple[str, ...] = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
                            "en-029", "en-us-nyc")
HELDOUT_EVERY = 5  # a speaker whose name hashes to 0 modulo this is held out: ~20%
SPEAKER_SETS = ("train", "heldout")
TEXT_KINDS = ("digits", "sentences")

# Per-utterance ranges, in eSpeak's units: rate in words per minute (default 175), pitch and pitch range
# 0-100 (default 50; the voice variant sets the actual base pitch in Hz), word gap in 10 ms steps.
RATE_WPM = (135, 205)
PITCH = (25, 75)
PITCH_RANGE = (20, 80)
WORD_GAP = (0, 3)  # inclusive; 0 is eSpeak's normal connected speech
PEAK_LEVEL = (0.25, 0.9)  # loudness: the speech's peak
SNR_DB = (20.0, 40.0)  # white background noise, relative to the speech's power
PAD_SECONDS = (0.05, 0.25)  # extra silence (noise) before and after the speech

# --- texts -----------------------------------------------------------------------------------------

DIGIT_WORDS: Tuple[str, ...] = ("ZERO", "OH", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT",
                                "NINE")
MAX_DIGITS = 7

# The sentence vocabulary leaves out every word that sounds like another word of it or like a digit word
# (TO/TWO, FOR/FOUR, ATE/EIGHT, BY/BUY, THERE/THEIR, HERE/HEAR, KNOW/NO, SEA/SEE, WEAK/WEEK, KNEW/NEW,
# ITS/IT'S, OUR/ARE, WEAR/WHERE, GREY/GRAY, ...): then the audio of a word determines its spelling.
NOUNS: Tuple[str, ...] = tuple("""
DOG CAT BIRD FISH COW PIG DUCK FROG MOUSE RABBIT LION TIGER MONKEY SNAKE HORSE SHEEP GOAT CHICKEN SPIDER
TURTLE ELEPHANT MAN WOMAN BOY GIRL CHILD BABY TEACHER DOCTOR FARMER DRIVER STUDENT FRIEND MOTHER FATHER
SISTER BROTHER UNCLE KING QUEEN BOOK PEN CUP BOX BAG HAT COAT SHOE SHIRT BALL TABLE CHAIR BED DOOR WINDOW
HOUSE CAR BUS TRAIN BOAT BIKE SHIP PHONE CLOCK LAMP KEY MAP LETTER PICTURE PAPER BOTTLE GLASS PLATE SPOON
KNIFE FORK APPLE ORANGE BANANA BREAD CAKE CHEESE EGG MILK WATER JUICE SOUP RICE COOKIE GARDEN PARK RIVER
LAKE HILL MOUNTAIN FOREST TREE FLOWER CITY TOWN VILLAGE STREET SCHOOL OFFICE KITCHEN SHOP MARKET LIBRARY
FARM BEACH ISLAND BRIDGE TOWER CHURCH CAMERA COMPUTER GUITAR PIANO DRUM TOY BASKET BLANKET PILLOW CANDLE
MIRROR UMBRELLA JACKET PENCIL TICKET WALLET NOTEBOOK SANDWICH PIZZA CARROT POTATO TOMATO
""".split())
ADJECTIVES: Tuple[str, ...] = tuple("""
BIG SMALL OLD NEW YOUNG LITTLE HAPPY SAD HUNGRY TIRED ANGRY BUSY QUIET LOUD WARM COLD HOT COOL CLEAN DIRTY
WET DRY SOFT HARD HEAVY DARK BRIGHT FAST SLOW TALL SHORT LONG EMPTY FULL GREEN YELLOW BLACK WHITE BROWN
PINK PURPLE RED BLUE PRETTY UGLY STRANGE FUNNY FRIENDLY LAZY CLEVER BRAVE KIND NICE SWEET CHEAP FAMOUS
LOVELY GENTLE SILLY SHINY
""".split())
WEATHER_ADJECTIVES: Tuple[str, ...] = ("COLD", "HOT", "WARM", "DARK", "QUIET", "LATE", "EARLY", "SUNNY", "WINDY")
# (base form, third person singular)
TRANSITIVE_VERBS: Tuple[Tuple[str, str], ...] = tuple((v, s) for v, s in (pair.split("/") for pair in """
LIKE/LIKES LOVE/LOVES WANT/WANTS NEED/NEEDS SEE/SEES WATCH/WATCHES FIND/FINDS KEEP/KEEPS CARRY/CARRIES
PUSH/PUSHES PULL/PULLS OPEN/OPENS CLOSE/CLOSES PAINT/PAINTS DRAW/DRAWS WASH/WASHES COOK/COOKS EAT/EATS
DRINK/DRINKS BUY/BUYS HOLD/HOLDS HIDE/HIDES BRING/BRINGS TAKE/TAKES MAKE/MAKES FIX/FIXES SELL/SELLS
CALL/CALLS HELP/HELPS FOLLOW/FOLLOWS VISIT/VISITS REMEMBER/REMEMBERS FORGET/FORGETS HEAR/HEARS MEET/MEETS
PICK/PICKS THROW/THROWS CATCH/CATCHES KICK/KICKS MOVE/MOVES FEED/FEEDS DRIVE/DRIVES HUG/HUGS CHASE/CHASES
CLEAN/CLEANS
""".split()))
INTRANSITIVE_VERBS: Tuple[Tuple[str, str], ...] = tuple((v, s) for v, s in (pair.split("/") for pair in """
SLEEP/SLEEPS RUN/RUNS WALK/WALKS SWIM/SWIMS SING/SINGS DANCE/DANCES JUMP/JUMPS PLAY/PLAYS WAIT/WAITS
LAUGH/LAUGHS SMILE/SMILES CRY/CRIES SIT/SITS STAND/STANDS WORK/WORKS REST/RESTS SHOUT/SHOUTS
TRAVEL/TRAVELS CLIMB/CLIMBS HIDE/HIDES
""".split()))
NAMES: Tuple[str, ...] = ("ANNA", "TOM", "SARAH", "DAVID", "MARIA", "PETER", "LUCY", "SAM", "EMMA", "OLIVER",
                          "SOPHIE", "BEN")
DETERMINERS: Tuple[str, ...] = ("THE", "THE", "THE", "A", "MY", "YOUR", "HIS", "HER", "THEIR", "THIS", "THAT",
                                "EVERY")
PLACE_PREPOSITIONS: Tuple[str, ...] = ("IN", "ON", "UNDER", "NEAR", "BEHIND", "INSIDE", "OUTSIDE", "ABOVE",
                                       "BELOW", "BESIDE")
MOTION_PREPOSITIONS: Tuple[str, ...] = ("INTO", "ACROSS", "AROUND", "FROM", "WITH", "IN", "NEAR", "BEHIND")
TIME_ADVERBS: Tuple[str, ...] = ("TODAY", "TONIGHT", "AGAIN", "NOW", "SOON", "LATER", "EVERY DAY",
                                 "EVERY MORNING", "AT NIGHT", "IN THE MORNING", "THIS WEEK", "ALL DAY")
MANNER_ADVERBS: Tuple[str, ...] = ("QUICKLY", "SLOWLY", "QUIETLY", "HAPPILY", "CAREFULLY")
FREQUENCY_ADVERBS: Tuple[str, ...] = ("ALWAYS", "NEVER", "OFTEN", "SOMETIMES", "USUALLY")
INTENSIFIERS: Tuple[str, ...] = ("VERY", "REALLY", "NOT")
# (subject, verb agreement): "3s" takes LIKES / IS / DOESN'T, "1s" takes LIKE / AM / DON'T, "pl" LIKE / ARE / DON'T
PRONOUNS: Tuple[Tuple[str, str], ...] = (("I", "1s"), ("YOU", "pl"), ("WE", "pl"), ("THEY", "pl"),
                                         ("HE", "3s"), ("SHE", "3s"))
OBJECT_PRONOUNS: Tuple[str, ...] = ("ME", "YOU", "US", "THEM", "HIM", "HER", "IT")
COPULA = {"1s": "AM", "pl": "ARE", "3s": "IS"}
CONTRACTED_COPULA = {"I": "I'M", "HE": "HE'S", "SHE": "SHE'S"}
MAX_SENTENCE_WORDS = 8
MIN_SENTENCE_WORDS = 3


def noun_phrase(rng: np.random.Generator) -> List[str]:
    """``THE [ADJ] NOUN``, ``AN OLD APPLE``, ``MY DOG`` ..."""
    det = DETERMINERS[rng.integers(len(DETERMINERS))]
    words = ([ADJECTIVES[rng.integers(len(ADJECTIVES))]] if rng.random() < 0.4 else []) + \
        [NOUNS[rng.integers(len(NOUNS))]]
    if det == "A" and words[0][0] in "AEIOU":
        det = "AN"
    return [det] + words


def subject(rng: np.random.Generator) -> Tuple[List[str], str]:
    """(words, agreement) of a pronoun, a name or a noun phrase."""
    r = rng.random()
    if r < 0.35:
        word, agreement = PRONOUNS[rng.integers(len(PRONOUNS))]
        return [word], agreement
    if r < 0.5:
        return [NAMES[rng.integers(len(NAMES))]], "3s"
    return noun_phrase(rng), "3s"


def obj(rng: np.random.Generator) -> List[str]:
    r = rng.random()
    if r < 0.15:
        return [OBJECT_PRONOUNS[rng.integers(len(OBJECT_PRONOUNS))]]
    if r < 0.25:
        return [NAMES[rng.integers(len(NAMES))]]
    return noun_phrase(rng)


def pick(rng: np.random.Generator, options: Sequence[str]) -> List[str]:
    return options[rng.integers(len(options))].split()


def maybe(rng: np.random.Generator, p: float, make: Callable[[], List[str]]) -> List[str]:
    return make() if rng.random() < p else []


def verb(pair: Tuple[str, str], agreement: str) -> str:
    return pair[1] if agreement == "3s" else pair[0]


def random_sentence_words(rng: np.random.Generator) -> List[str]:
    """One sentence of MIN_SENTENCE_WORDS-MAX_SENTENCE_WORDS words (redrawn until it fits)."""
    while True:
        kind = int(rng.integers(10))
        subj, agr = subject(rng)
        vt = TRANSITIVE_VERBS[rng.integers(len(TRANSITIVE_VERBS))]
        vi = INTRANSITIVE_VERBS[rng.integers(len(INTRANSITIVE_VERBS))]
        if kind == 0:  # SHE LIKES THE RED APPLE TODAY
            words = subj + [verb(vt, agr)] + obj(rng) + maybe(rng, 0.3, lambda: pick(rng, TIME_ADVERBS))
        elif kind == 1:  # THE DOG RUNS ACROSS THE STREET / TOM SLEEPS QUIETLY
            tail = (lambda: [MOTION_PREPOSITIONS[rng.integers(len(MOTION_PREPOSITIONS))]] + noun_phrase(rng),
                    lambda: pick(rng, MANNER_ADVERBS), lambda: pick(rng, TIME_ADVERBS))[rng.integers(3)]
            words = subj + [verb(vi, agr)] + tail()
        elif kind == 2:  # THE OLD MAN IS VERY TIRED / I'M HUNGRY NOW
            adj = [ADJECTIVES[rng.integers(len(ADJECTIVES))]]
            extra = maybe(rng, 0.5, lambda: pick(rng, INTENSIFIERS))
            if len(subj) == 1 and subj[0] in CONTRACTED_COPULA and rng.random() < 0.5:
                words = [CONTRACTED_COPULA[subj[0]]] + extra + adj
            else:
                words = subj + [COPULA[agr]] + extra + adj
            words += maybe(rng, 0.3, lambda: pick(rng, TIME_ADVERBS))
        elif kind == 3:  # WE DON'T NEED A NEW CAR / HE CAN'T FIND HIS KEY
            neg = ["DOESN'T" if agr == "3s" else "DON'T", "CAN'T", "WON'T"][rng.integers(3)]
            words = subj + [neg, vt[0]] + obj(rng)
        elif kind == 4:  # WHERE IS MY BLUE UMBRELLA
            np_ = noun_phrase(rng)
            words = (["WHERE'S"] if rng.random() < 0.3 else ["WHERE", "IS"]) + np_
        elif kind == 5:  # LET'S PAINT THE BIG HOUSE AGAIN
            words = ["LET'S", vt[0]] + obj(rng) + maybe(rng, 0.3, lambda: pick(rng, TIME_ADVERBS))
        elif kind == 6:  # IT'S VERY COLD TONIGHT
            words = (["IT'S"] + maybe(rng, 0.4, lambda: ["VERY"]) + [WEATHER_ADJECTIVES[rng.integers(
                len(WEATHER_ADJECTIVES))]] + pick(rng, TIME_ADVERBS))
        elif kind == 7:  # THE CAT IS UNDER THE TABLE
            words = subj + [COPULA[agr], PLACE_PREPOSITIONS[rng.integers(len(PLACE_PREPOSITIONS))]] + \
                noun_phrase(rng)
        elif kind == 8:  # DOES ANNA WANT THE CAKE / DO YOU SEE THE BIRD
            words = ["DOES" if agr == "3s" else "DO"] + subj + [vt[0]] + obj(rng)
        else:  # THEY WILL BRING THE CAKE / SHE OFTEN VISITS HER UNCLE
            if rng.random() < 0.5:
                words = subj + [["CAN", "WILL"][rng.integers(2)], vt[0]] + obj(rng)
            else:
                words = subj + pick(rng, FREQUENCY_ADVERBS) + [verb(vt, agr)] + obj(rng)
        if MIN_SENTENCE_WORDS <= len(words) <= MAX_SENTENCE_WORDS:
            return words


def random_digit_words(rng: np.random.Generator) -> List[str]:
    return [DIGIT_WORDS[k] for k in rng.integers(0, len(DIGIT_WORDS), size=int(rng.integers(1, MAX_DIGITS + 1)))]


def sentence_vocabulary() -> List[str]:
    """Every word a ``sentences`` transcript can contain, sorted."""
    words = set(NOUNS) | set(ADJECTIVES) | set(WEATHER_ADJECTIVES) | set(NAMES) | set(DETERMINERS) | {"AN"}
    words |= {w for pair in TRANSITIVE_VERBS + INTRANSITIVE_VERBS for w in pair}
    for group in (PLACE_PREPOSITIONS, MOTION_PREPOSITIONS, TIME_ADVERBS, MANNER_ADVERBS, FREQUENCY_ADVERBS,
                  INTENSIFIERS, OBJECT_PRONOUNS, tuple(COPULA.values()), tuple(CONTRACTED_COPULA.values())):
        words |= {w for phrase in group for w in phrase.split()}
    words |= {p for p, _ in PRONOUNS}
    words |= {"DOESN'T", "DON'T", "CAN'T", "WON'T", "WHERE'S", "WHERE", "LET'S", "IT'S", "DOES", "DO", "CAN", "WILL"}
    return sorted(words)


def random_text(kind: str, rng: np.random.Generator) -> List[str]:
    if kind == "digits":
        return random_digit_words(rng)
    if kind == "sentences":
        return random_sentence_words(rng)
    raise ValueError(f"text kind must be one of {TEXT_KINDS}, got {kind!r}")


# --- speakers --------------------------------------------------------------------------------------

def is_heldout(speaker: str) -> bool:
    """Whether ``speaker`` (``ACCENT+VARIANT``) is a held-out speaker: a fixed hash, not a random draw."""
    return int.from_bytes(hashlib.sha256(speaker.encode("utf-8")).digest()[:8], "big") % HELDOUT_EVERY == 0


def voice_variants(data_path: str) -> List[str]:
    """The voice variant names of ``espeak-ng-data/voices/!v`` (an unknown name is silently ignored by
    eSpeak, so they are read from there), sorted; names with spaces are left out: speaker ids are tokens."""
    folder = os.path.join(data_path, "voices", "!v")
    return sorted(name for name in os.listdir(folder)
                  if os.path.isfile(os.path.join(folder, name)) and name == "".join(name.split())
                  and not name.startswith("."))


def all_speakers(data_path: str) -> List[str]:
    return sorted(f"{accent}+{variant}" for accent in ACCENTS for variant in voice_variants(data_path))


def speaker_set(data_path: str, which: str) -> List[str]:
    """The sorted ``train`` or ``heldout`` speakers; the two sets are disjoint and cover all speakers."""
    if which not in SPEAKER_SETS:
        raise ValueError(f"speaker set must be one of {SPEAKER_SETS}, got {which!r}")
    return [s for s in all_speakers(data_path) if is_heldout(s) == (which == "heldout")]


# --- the engine ------------------------------------------------------------------------------------

class EngineUnavailable(RuntimeError):
    """eSpeak NG (the ``espeakng-loader`` wheel) cannot be imported or loaded; the message says why."""


AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
CHARS_UTF8 = 1
ENDPAUSE = 0x1000
PARAM_RATE, PARAM_VOLUME, PARAM_PITCH, PARAM_RANGE, PARAM_WORDGAP = 1, 2, 3, 4, 7
# eSpeak's own amplitude (default 100): some variants saturate its int16 output even at 40. An utterance
# that still reaches full scale is synthesised again at half the volume (the level is set afterwards).
VOLUME = 20
FULL_SCALE = 32767

SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class VoiceSettings(NamedTuple):
    speaker: str  # ACCENT+VARIANT, an eSpeak voice name
    rate: int
    pitch: int
    pitch_range: int
    word_gap: int
    seed: int  # eSpeak's own random generator (breath, whisper and Klatt noise)
    volume: int = VOLUME


def _import_loader():
    import espeakng_loader  # the pip wheel that bundles the library and its data
    return espeakng_loader


class Engine:
    """libespeak-ng, loaded from a private copy of the library for every utterance.

    The library keeps state in static variables from one utterance to the next, which espeak_Terminate
    and espeak_Initialize do not reset: the same call gives different audio the second time. A library
    nobody else has opened is really unloaded by dlclose, so loading it again starts from scratch
    (about 7 ms).
    """

    def __init__(self) -> None:
        try:
            loader = _import_loader()
            lib_path, self.data_path = loader.get_library_path(), loader.get_data_path()
        except Exception as e:  # ImportError, or the wheel lacks its data
            raise EngineUnavailable(f"eSpeak NG is not installed ({type(e).__name__}: {e})") from None
        if not os.path.isfile(lib_path):
            raise EngineUnavailable(f"eSpeak NG library not found at {lib_path}")
        self._tmp = tempfile.mkdtemp(prefix="espeak-ng-")
        self._lib_path = os.path.join(self._tmp, "libespeak-ng-private.so")
        shutil.copyfile(lib_path, self._lib_path)
        self._chunks: List[np.ndarray] = []
        self._callback = SYNTH_CALLBACK(self._collect)  # kept referenced while the library may call it
        try:
            lib = self._open()
            self.sample_rate = self._initialize(lib)
            self._close(lib)
        except (OSError, AttributeError) as e:  # cannot dlopen, or a symbol is missing (an old library)
            self.close()
            raise EngineUnavailable(f"eSpeak NG library {lib_path} could not be loaded ({e})") from None

    def _collect(self, wav, num_samples, events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
        return 0  # continue

    def _open(self) -> ctypes.CDLL:
        lib = ctypes.CDLL(self._lib_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        return lib

    def _initialize(self, lib: ctypes.CDLL) -> int:
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), 0)
        if rate <= 0:
            raise OSError(f"espeak_Initialize failed ({rate}) with data {self.data_path}")
        lib.espeak_SetSynthCallback(self._callback)
        return rate

    def _close(self, lib: ctypes.CDLL) -> None:
        import _ctypes
        lib.espeak_Terminate()
        _ctypes.dlclose(lib._handle)
        if os.path.exists("/proc/self/maps"):
            with open("/proc/self/maps") as f:
                if self._lib_path in f.read():
                    raise RuntimeError("libespeak-ng stayed loaded after dlclose: its audio would depend on "
                                       "earlier utterances")

    def synthesize(self, text: str, voice: VoiceSettings) -> np.ndarray:
        """``text`` spoken by ``voice``: int16 samples at ``self.sample_rate``."""
        lib = self._open()
        try:
            self._initialize(lib)
            if lib.espeak_SetVoiceByName(voice.speaker.encode()) != 0:
                raise ValueError(f"eSpeak NG has no voice {voice.speaker!r}")
            for param, value in ((PARAM_RATE, voice.rate), (PARAM_VOLUME, voice.volume), (PARAM_PITCH, voice.pitch),
                                 (PARAM_RANGE, voice.pitch_range), (PARAM_WORDGAP, voice.word_gap)):
                lib.espeak_SetParameter(param, value, 0)
            lib.espeak_ng_SetRandSeed(voice.seed)
            self._chunks = []
            data = text.encode("utf-8")
            status = lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8 | ENDPAUSE, None, None)
            if status != 0:
                raise RuntimeError(f"espeak_Synth failed ({status}) on {text!r}")
            return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        finally:
            self._chunks = []
            self._close(lib)

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- audio -----------------------------------------------------------------------------------------

def resample(x: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    from scipy.signal import resample_poly
    ratio = Fraction(rate_out, rate_in)
    return resample_poly(x, ratio.numerator, ratio.denominator)


def random_voice(speakers: Sequence[str], rng: np.random.Generator) -> VoiceSettings:
    return VoiceSettings(speaker=speakers[rng.integers(len(speakers))],
                         rate=int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1)),
                         pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
                         pitch_range=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
                         word_gap=int(rng.integers(WORD_GAP[0], WORD_GAP[1] + 1)),
                         seed=int(rng.integers(1, 2**31)))


def render(samples: np.ndarray, rate_in: int, rng: np.random.Generator) -> np.ndarray:
    """eSpeak's int16 samples -> padded, level-set, noisy float32 16 kHz audio with peak below 1."""
    speech = resample(samples.astype(np.float64) / 32768.0, rate_in)
    peak = np.abs(speech).max()
    if peak <= 0:
        raise RuntimeError("eSpeak NG produced silence")
    speech *= rng.uniform(*PEAK_LEVEL) / peak
    active = speech[np.abs(speech) > 0.01 * np.abs(speech).max()]
    pads = [np.zeros(int(SAMPLE_RATE * rng.uniform(*PAD_SECONDS))) for _ in range(2)]
    clean = np.concatenate([pads[0], speech, pads[1]])
    noise_rms = np.sqrt(np.mean(active**2) / 10 ** (rng.uniform(*SNR_DB) / 10))
    noisy = clean + rng.standard_normal(len(clean)) * noise_rms
    peak = np.abs(noisy).max()
    if peak > 0.98:  # never clip: scale down instead
        noisy *= 0.98 / peak
    return noisy.astype(np.float32)


class Utterance(NamedTuple):
    path: str
    text: str
    speaker: str


def synthesis_text(words: Sequence[str], kind: str) -> str:
    """What eSpeak reads: lower case (it may spell out short all-capital words) and sentence punctuation."""
    text = " ".join(words).lower()
    if kind == "sentences":
        text += "?" if words[0] in ("WHERE", "WHERE'S", "DO", "DOES") else "."
    return text


def write_atomically(path: str, lines: Sequence[str]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
    os.replace(tmp, path)


def default_prefix(text: str, speakers: str, seed: int) -> str:
    return f"{text}-{speakers}-{seed}-"


def generate_corpus(out_dir: str, num_utts: int, seed: int = 0, speakers: str = "train", text: str = "digits",
                    prefix: Optional[str] = None, engine: Optional[Engine] = None) -> List[Utterance]:
    """Write ``num_utts`` utterances, ``speakers.tsv`` and ``transcripts.tsv`` to ``out_dir``.

    Returns the utterances in order. The corpus is a function of the arguments; utterance ``i`` depends
    only on ``seed``, ``i``, ``speakers`` and ``text``. ``prefix`` defaults to ``TEXT-SPEAKERS-SEED-``,
    so that corpora made with other arguments have other file names. Raises EngineUnavailable when
    eSpeak NG cannot be loaded.
    """
    if num_utts <= 0:
        raise ValueError(f"num_utts must be positive, got {num_utts}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if text not in TEXT_KINDS:
        raise ValueError(f"text kind must be one of {TEXT_KINDS}, got {text!r}")
    if prefix is None:
        prefix = default_prefix(text, speakers, seed)
    if os.sep in prefix or "/" in prefix or any(c.isspace() for c in prefix):
        raise ValueError(f"prefix must not contain a path separator or whitespace, got {prefix!r}")
    own_engine = engine is None
    engine = engine or Engine()
    try:
        pool = speaker_set(engine.data_path, speakers)
        os.makedirs(out_dir, exist_ok=True)
        # Files of an earlier run may be overwritten: its transcripts must not survive a crash of this one.
        for name in ("transcripts.tsv", "speakers.tsv"):
            if os.path.exists(os.path.join(out_dir, name)):
                os.remove(os.path.join(out_dir, name))
        width = max(5, len(str(num_utts - 1)))
        kind_id = TEXT_KINDS.index(text)
        utts = []
        for i in range(num_utts):
            rng = np.random.default_rng([seed, i, kind_id, SPEAKER_SETS.index(speakers)])
            words = random_text(text, rng)
            voice = random_voice(pool, rng)
            samples = engine.synthesize(synthesis_text(words, text), voice)
            while np.abs(samples.astype(np.int32)).max() >= FULL_SCALE and voice.volume > 1:
                voice = voice._replace(volume=voice.volume // 2)  # saturated: never keep clipped speech
                samples = engine.synthesize(synthesis_text(words, text), voice)
            audio = render(samples, engine.sample_rate, rng)
            path = os.path.join(out_dir, f"{prefix}{i:0{width}d}.wav")
            sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
            utts.append(Utterance(path, " ".join(words), voice.speaker))
    finally:
        if own_engine:
            engine.close()
    stem = lambda u: os.path.splitext(os.path.basename(u.path))[0]  # noqa: E731
    write_atomically(os.path.join(out_dir, "speakers.tsv"), [f"{stem(u)}\t{u.speaker}" for u in utts])
    write_atomically(os.path.join(out_dir, "transcripts.tsv"), [f"{stem(u)}\t{u.text}" for u in utts])
    return utts


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out_dir", help="folder to write the wav files, transcripts.tsv and speakers.tsv to "
                                   "(created if missing)")
    p.add_argument("--num-utts", type=int, default=400, help="number of utterances to generate")
    p.add_argument("--seed", type=int, default=0, help="random seed (>= 0); the same arguments give the same corpus")
    p.add_argument("--speakers", choices=SPEAKER_SETS, default="train",
                   help="which speakers (accent+voice variant) speak: the ~80%% 'train' ones or the ~20%% "
                        "'heldout' ones; the split is fixed, independent of --seed")
    p.add_argument("--text", choices=TEXT_KINDS, default="digits",
                   help="connected digit strings (1-7 digits) or short sentences (3-8 words)")
    p.add_argument("--prefix", default=argparse.SUPPRESS,
                   help="file name prefix: files are PREFIX00000.wav, ... (default: TEXT-SPEAKERS-SEED-, "
                        "e.g. digits-train-0-)")
    args = p.parse_args(argv)
    args.prefix = getattr(args, "prefix", None)
    if args.num_utts <= 0:
        p.error(f"--num-utts must be positive, got {args.num_utts}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    if args.prefix is not None and (os.sep in args.prefix or "/" in args.prefix
                                    or any(c.isspace() for c in args.prefix)):
        p.error(f"--prefix must not contain a path separator or whitespace, got {args.prefix!r}")
    try:
        utts = generate_corpus(args.out_dir, args.num_utts, args.seed, args.speakers, args.text, args.prefix)
    except EngineUnavailable as e:
        print(f"error: {e}; install it with: {INSTALL_HINT}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. OUT_DIR not writable
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = sum(sf.info(u.path).duration for u in utts)
    print(f"wrote {len(utts)} files ({seconds:.1f} s of audio, {len({u.speaker for u in utts})} speakers) "
          f"with transcripts.tsv and speakers.tsv to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
