"""manifests.audio_manifest: wav2vec-style manifests, and a clear error for every kind of bad file."""

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from manifests.audio_manifest import main
from tests.cli import run


def tone(path: Path, seconds=0.5, sr=16000, channels=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.sin(np.arange(int(sr * seconds)) / 10).astype(np.float32) * 0.3
    sf.write(str(path), np.stack([x] * channels, axis=1) if channels > 1 else x, sr)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "audio"
    for i in range(20):
        tone(root / f"spk{i % 3}" / f"u{i:02d}.wav", seconds=0.2 + i * 0.01)
    tone(root / "extra.flac", seconds=0.3)
    (root / "notes.txt").write_text("not audio")
    return root


def read(path: Path):
    lines = path.read_text().splitlines()
    return lines[0], [tuple(l.split("\t")) for l in lines[1:]]


def test_manifests_list_every_file_with_its_frames(folder, tmp_path):
    dest = tmp_path / "m"
    assert main([str(folder), "--dest", str(dest), "--valid-percent", "0.25", "--seed", "3"]) == 0
    root_t, train = read(dest / "train.tsv")
    root_v, valid = read(dest / "valid.tsv")
    assert root_t == root_v == str(folder.resolve())
    assert len(train) + len(valid) == 21 and len(valid) == 5
    for rel, frames in train + valid:
        assert int(frames) == sf.info(str(folder / rel)).frames
    # deterministic for a seed, different for another
    main([str(folder), "--dest", str(tmp_path / "m2"), "--valid-percent", "0.25", "--seed", "3"])
    assert (tmp_path / "m2" / "valid.tsv").read_text() == (dest / "valid.tsv").read_text()
    main([str(folder), "--dest", str(tmp_path / "m3"), "--valid-percent", "0.25", "--seed", "4"])
    assert (tmp_path / "m3" / "valid.tsv").read_text() != (dest / "valid.tsv").read_text()


def test_ext_filter_and_named_split(folder, tmp_path):
    dest = tmp_path / "m"
    assert main([str(folder), "--dest", str(dest), "--ext", "flac", "--valid-percent", "0", "--train-name", "test"]) == 0
    _, rows = read(dest / "test.tsv")
    assert [r[0] for r in rows] == ["extra.flac"]


def make_bad(kind: str, path: Path):
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(0).bytes(4000))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "8khz":
        tone(path, sr=8000)
    elif kind == "stereo":
        tone(path, channels=2)


@pytest.mark.parametrize("kind,reason", [("corrupt", "cannot decode"), ("empty", "empty file"),
                                         ("8khz", "sample rate 8000 Hz"), ("stereo", "2 channels")])
def test_bad_file_is_named_and_nothing_is_written(folder, tmp_path, kind, reason):
    bad = folder / "spk0" / f"bad_{kind}.wav"
    make_bad(kind, bad)
    dest = tmp_path / "m"
    dest.mkdir()
    (dest / "train.tsv").write_text("previous manifest\n")
    proc = run([sys.executable, "-m", "manifests.audio_manifest", folder, "--dest", dest], check=False)
    assert proc.returncode == 2
    assert f"error: {bad}: {reason}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (dest / "train.tsv").read_text() == "previous manifest\n"
    assert not (dest / "valid.tsv").exists()


def test_skip_bad_skips_and_counts(folder, tmp_path, capsys):
    make_bad("corrupt", folder / "c.wav")
    make_bad("stereo", folder / "s.wav")
    dest = tmp_path / "m"
    assert main([str(folder), "--dest", str(dest), "--skip-bad", "--valid-percent", "0"]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 of 23 files" in err and "c.wav" in err and "s.wav" in err
    _, rows = read(dest / "train.tsv")
    assert len(rows) == 21


def test_no_audio_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--dest", str(tmp_path / "m")]) == 2
    assert "no .flac/.wav files" in capsys.readouterr().err
