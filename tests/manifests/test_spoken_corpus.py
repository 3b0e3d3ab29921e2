"""manifests.spoken_corpus: a deterministic eSpeak NG corpus of digit strings and sentences."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from manifests import spoken_corpus as sc

REPO = Path(__file__).resolve().parents[2]

# The engine is a requirement (requirements.txt): without it these tests fail, they are never skipped.

# Common homophone sets: no two words of one set may both be in the vocabulary (digits and sentences together).
HOMOPHONES = [
    "TO TWO TOO", "FOR FOUR FORE", "ATE EIGHT", "ONE WON", "OH O OWE", "THEIR THERE THEY'RE", "KNOW NO",
    "KNOWS NOSE", "RIGHT WRITE", "SEE SEA", "SEES SEIZE", "BY BUY BYE", "HERE HEAR", "HEARS HERE'S", "SON SUN",
    "I EYE AYE", "BE BEE", "NEW KNEW", "WOULD WOOD", "HOUR OUR", "OUR ARE", "ITS IT'S", "YOUR YOU'RE",
    "WHOSE WHO'S", "WEAK WEEK", "MEAT MEET", "PIECE PEACE", "PLANE PLAIN", "RED READ", "BLUE BLEW", "ROAD RODE",
    "SALE SAIL", "TAIL TALE", "MAIL MALE", "FLOWER FLOUR", "MADE MAID", "WAIT WEIGHT", "WAITS WEIGHTS",
    "WAY WEIGH", "WHICH WITCH", "WHOLE HOLE", "KNIGHT NIGHT", "KNOT NOT", "HI HIGH", "DEAR DEER", "FAIR FARE",
    "PAIR PEAR", "BEAR BARE", "STAIR STARE", "BREAK BRAKE", "STEAL STEEL", "SENT CENT SCENT", "SOME SUM",
    "RAIN REIGN", "TEA TEE", "ALLOWED ALOUD", "THREW THROUGH", "FLEW FLU", "SO SEW", "DO DUE DEW", "WHERE WEAR",
    "GREY GRAY", "IN INN", "NEED KNEAD", "SELL CELL", "SELLS CELLS", "HORSE HOARSE", "BALL BAWL", "BEACH BEECH",
    "MORNING MOURNING", "WE WEE", "REST WREST", "RING WRING", "WHAT WATT", "HIM HYMN", "POOR POUR",
    "SHOE SHOO", "FIND FINED", "DRAW DRAWER", "CLIMB CLIME", "BREAD BRED", "SWEET SUITE", "KEY QUAY",
]


@pytest.fixture(scope="module")
def engine():
    with sc.Engine() as e:
        yield e


@pytest.fixture(scope="module")
def corpora(engine, tmp_path_factory):
    """A small corpus of each text kind, from the train and the held-out speakers."""
    out = tmp_path_factory.mktemp("spoken")
    return {kind: (out / kind, sc.generate_corpus(str(out / kind), 12, seed=5, speakers=speakers, text=kind,
                                                  engine=engine))
            for kind, speakers in (("digits", "train"), ("sentences", "heldout"))}


def read_tsv(path: Path):
    return [tuple(line.split("\t")) for line in path.read_text(encoding="utf-8").splitlines()]


def test_vocabulary_is_letters_and_homophone_free():
    vocab = set(sc.sentence_vocabulary())
    assert 250 <= len(vocab) <= 600
    words = vocab | set(sc.DIGIT_WORDS)
    for word in words:
        assert re.fullmatch(r"[A-Z']+", word), word
    for group in HOMOPHONES:
        present = [w for w in group.split() if w in words]
        assert len(present) <= 1, f"homophones {present} are both in the vocabulary"


def test_random_texts_use_the_vocabulary():
    rng = np.random.default_rng(0)
    vocab = set(sc.sentence_vocabulary())
    seen = set()
    for _ in range(500):
        words = sc.random_text("sentences", rng)
        assert sc.MIN_SENTENCE_WORDS <= len(words) <= sc.MAX_SENTENCE_WORDS, words
        assert set(words) <= vocab, words
        seen |= set(words)
        digits = sc.random_text("digits", rng)
        assert 1 <= len(digits) <= 7 and set(digits) <= set(sc.DIGIT_WORDS), digits
    assert len(seen) > 200, "the grammar should use most of the vocabulary"
    with pytest.raises(ValueError):
        sc.random_text("poems", rng)


def test_speaker_split_is_fixed_and_disjoint(engine):
    everyone = sc.all_speakers(engine.data_path)
    train, heldout = (sc.speaker_set(engine.data_path, which) for which in sc.SPEAKER_SETS)
    assert len(everyone) == len(set(everyone)) >= 8 * 90
    assert not set(train) & set(heldout) and sorted(train + heldout) == everyone
    assert 0.1 < len(heldout) / len(everyone) < 0.3
    for accent in sc.ACCENTS:  # every accent is heard in both sets
        assert any(s.startswith(accent + "+") for s in train) and any(s.startswith(accent + "+") for s in heldout)
    assert all(" " not in s and "\t" not in s for s in everyone)
    # The split is a function of the speaker name alone: the same whatever the corpus seed.
    assert [sc.is_heldout(s) for s in everyone] == [s in heldout for s in everyone]


def test_speakers_come_from_their_set_whatever_the_seed(engine, tmp_path):
    heldout = set(sc.speaker_set(engine.data_path, "heldout"))
    for seed in (0, 1):
        for speakers in sc.SPEAKER_SETS:
            utts = sc.generate_corpus(str(tmp_path / f"{speakers}{seed}"), 3, seed=seed, speakers=speakers,
                                      engine=engine)
            assert all((u.speaker in heldout) == (speakers == "heldout") for u in utts)


def test_transcripts_and_speakers_match_files(corpora):
    for kind, (out, utts) in corpora.items():
        stems = [Path(u.path).stem for u in utts]
        assert stems == [f"{kind}-{'train' if kind == 'digits' else 'heldout'}-5-{i:05d}" for i in range(12)]
        assert sorted(p.stem for p in out.glob("*.wav")) == sorted(stems)
        assert read_tsv(out / "transcripts.tsv") == [(s, u.text) for s, u in zip(stems, utts)]
        assert read_tsv(out / "speakers.tsv") == [(s, u.speaker) for s, u in zip(stems, utts)]
        assert not list(out.glob("*.tmp"))
        allowed = set(sc.DIGIT_WORDS) if kind == "digits" else set(sc.sentence_vocabulary())
        for u in utts:
            assert re.fullmatch(r"[A-Z']+( [A-Z']+)*", u.text) and set(u.text.split()) <= allowed, u.text


def test_audio_is_16k_mono_speech_without_clipping(corpora):
    for _, utts in corpora.values():
        for u in utts:
            info = sf.info(u.path)
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            audio, _ = sf.read(u.path)
            peak = np.abs(audio).max()
            assert 0.2 < peak < 0.99, (u.path, peak)
            assert np.mean(np.abs(audio) > 0.98 * peak) < 0.001, "a flat top: clipped"
            # Speech, not noise: the loudest 20 ms frames are far above the quietest.
            frames = np.sqrt(np.mean(audio[: len(audio) // 320 * 320].reshape(-1, 320) ** 2, axis=1))
            assert np.percentile(frames, 95) > 10 * np.percentile(frames, 5)
            assert 0.06 * len(u.text.split()) < info.duration < 8.0, (u.text, info.duration)


def test_same_arguments_give_identical_files(corpora, engine, tmp_path):
    out, utts = corpora["sentences"]
    # A fresh engine, a fresh folder, fewer utterances: the corpus is a prefix of the bigger one.
    again = sc.generate_corpus(str(tmp_path / "again"), 4, seed=5, speakers="heldout", text="sentences")
    assert [(u.text, u.speaker) for u in again] == [(u.text, u.speaker) for u in utts[:4]]
    for a, b in zip(again, utts):
        assert Path(a.path).read_bytes() == Path(b.path).read_bytes()
    lines = (out / "transcripts.tsv").read_text().splitlines()[:4]
    assert (tmp_path / "again" / "transcripts.tsv").read_text().splitlines() == lines
    other = sc.generate_corpus(str(tmp_path / "other"), 4, seed=6, speakers="heldout", text="sentences",
                               engine=engine)
    assert [u.text for u in other] != [u.text for u in utts[:4]]


def test_engine_repeats_itself(engine):
    """eSpeak's state is not carried from one utterance to the next."""
    voice = sc.VoiceSettings("en-us+klatt", 175, 50, 50, 0, seed=3)
    first = engine.synthesize("seven oh nine", voice)
    engine.synthesize("the old dog sleeps", voice._replace(speaker="en-gb-scotland+whisper"))
    assert np.array_equal(engine.synthesize("seven oh nine", voice), first)
    # Voices and accents sound different.
    others = [engine.synthesize("seven oh nine", voice._replace(speaker=s))
              for s in ("en-us+f3", "en-gb-x-rp+klatt")]
    assert all(len(o) != len(first) or not np.array_equal(o, first) for o in others)


def test_manifest_and_label_tools_accept_the_corpus(corpora, tmp_path):
    from manifests import audio_manifest, labels
    for kind, (out, _) in corpora.items():
        dest = tmp_path / kind
        assert audio_manifest.main([str(out), "--dest", str(dest), "--valid-percent", "0"]) == 0
        assert labels.main([str(dest), "--transcripts", str(out / "transcripts.tsv")]) == 0
        # (No valid split: a 12-utterance one could hold a letter the training split lacks.)
        rows = (dest / "train.tsv").read_text().splitlines()[1:]
        wrd = (dest / "train.wrd").read_text().splitlines()
        assert len(rows) == len(wrd) == 12
        letters = {line.split()[0] for line in (dest / "dict.ltr.txt").read_text().splitlines()}
        assert letters <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ'|")


def test_missing_engine_is_one_line_and_status_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import espeakng_loader raises ImportError
    assert sc.main([str(tmp_path / "out"), "--num-utts", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install espeakng-loader" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "transcripts.tsv").exists()


def test_unloadable_library_is_one_line_and_status_2(monkeypatch, tmp_path, capsys):
    import espeakng_loader
    broken = tmp_path / "libespeak-ng.so"
    broken.write_bytes(b"not a library")
    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: str(broken))
    assert sc.main([str(tmp_path / "out"), "--num-utts", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "could not be loaded" in err and "pip install espeakng-loader" in err


@pytest.mark.parametrize("args", [["--num-utts", "0"], ["--num-utts", "-3"], ["--text", "poems"],
                                  ["--speakers", "everyone"], ["--seed", "-1"], ["--prefix", "a/b"]])
def test_bad_arguments_are_argparse_errors(args, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sc.main([str(tmp_path / "out")] + args)
    assert e.value.code == 2 and "error:" in capsys.readouterr().err


def test_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "manifests.spoken_corpus", str(tmp_path / "out"), "--num-utts", "2",
                           "--seed", "1", "--text", "sentences", "--speakers", "heldout", "--prefix", "x"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1 and "2 files" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["speakers.tsv", "transcripts.tsv",
                                                                   "x00000.wav", "x00001.wav"]
