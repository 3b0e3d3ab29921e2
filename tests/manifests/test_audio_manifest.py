"""manifests.audio_manifest: wav2vec-style manifests, a clear error for every kind of bad file.

Reading manifests back is tested with the reader, in tests/audio/test_manifest.py.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from manifests.audio_manifest import main

REPO = Path(__file__).resolve().parents[2]


def tone(path: Path, seconds: float = 0.25, sr: int = 16000, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = (0.3 * np.sin(np.arange(int(sr * seconds)) / 10)).astype(np.float32)
    sf.write(str(path), np.stack([x] * channels, axis=1) if channels > 1 else x, sr, subtype="PCM_16")


def make_bad(kind: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(0).bytes(4000))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "8khz":
        tone(path, sr=8000)
    elif kind == "stereo":
        tone(path, channels=2)
    elif kind == "nan":  # float wav, one NaN deep inside (not in the first or last 1024 frames)
        x = np.zeros(16000, dtype=np.float32)
        x[7777] = np.nan
        sf.write(str(path), x, 16000, subtype="FLOAT")
    else:
        raise ValueError(kind)


def cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "manifests.audio_manifest", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, **kwargs)


def read(path: Path):
    lines = path.read_text().splitlines()
    return lines[0], [tuple(line.split("\t")) for line in lines[1:]]


@pytest.fixture
def folder(tmp_path) -> Path:
    """20 wav files in 3 speaker folders (different lengths), one flac, and a non-audio file."""
    root = tmp_path / "audio"
    for i in range(20):
        tone(root / f"spk{i % 3}" / "sub" / f"u{i:02d}.wav", seconds=0.1 + i * 0.01)
    tone(root / "extra.flac", seconds=0.3)
    (root / "notes.txt").write_text("not audio")
    return root


def test_manifests_list_every_file_with_its_frames(folder, tmp_path):
    dest = tmp_path / "m"
    assert main([str(folder), "--dest", str(dest), "--valid-percent", "0.25", "--seed", "3"]) == 0
    root_t, train = read(dest / "train.tsv")
    root_v, valid = read(dest / "valid.tsv")
    assert root_t == root_v == str(folder.resolve())
    assert len(valid) == 5 and len(train) == 16  # round(21 * 0.25) = 5
    all_files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix in (".wav", ".flac"))
    assert sorted(rel for rel, _ in train + valid) == all_files
    for rel, frames in train + valid:
        assert int(frames) == sf.info(str(folder / rel)).frames
    assert [r for r, _ in train] == sorted(r for r, _ in train)
    assert not list(dest.glob("*.tmp"))


def test_split_is_deterministic_for_a_seed(folder, tmp_path):
    def valid_for(seed: int, name: str) -> str:
        assert main([str(folder), "--dest", str(tmp_path / name), "--valid-percent", "0.25", "--seed", str(seed)]) == 0
        return (tmp_path / name / "valid.tsv").read_text()

    assert valid_for(3, "a") == valid_for(3, "b")
    assert valid_for(3, "a") != valid_for(4, "c")


def test_cli_ext_filter_and_zero_valid_percent(folder, tmp_path):
    dest = tmp_path / "m"
    proc = cli(folder, "--dest", dest, "--ext", "flac", "--valid-percent", "0")
    assert proc.returncode == 0, proc.stderr
    assert read(dest / "train.tsv")[1] == [("extra.flac", "4800")]
    assert (dest / "valid.tsv").read_text() == f"{folder.resolve()}\n"
    assert main([str(folder), "--dest", str(dest), "--ext", "WAV", "--valid-percent", "0"]) == 0
    assert len(read(dest / "train.tsv")[1]) == 20


def test_path_must_contain_and_train_name(folder, tmp_path):
    dest = tmp_path / "m"
    (dest).mkdir()
    (dest / "valid.tsv").write_text("keep me\n")
    assert main([str(folder), "--dest", str(dest), "--path-must-contain", "spk1/", "--valid-percent", "0",
                 "--train-name", "test"]) == 0
    rows = read(dest / "test.tsv")[1]
    assert len(rows) == 7 and all(rel.startswith("spk1/sub/") for rel, _ in rows)
    assert (dest / "valid.tsv").read_text() == "keep me\n"  # a named split leaves valid.tsv alone
    assert not (dest / "train.tsv").exists()


@pytest.mark.parametrize("kind,reason", [("corrupt", "cannot decode"), ("empty", "empty file"),
                                         ("8khz", "sample rate 8000 Hz"), ("stereo", "2 channels"),
                                         ("nan", "sample 7777 is NaN or infinite")])
def test_bad_file_is_named_and_nothing_is_written(folder, tmp_path, kind, reason):
    bad = folder / "spk0" / f"bad_{kind}.wav"
    make_bad(kind, bad)
    dest = tmp_path / "m"
    dest.mkdir()
    (dest / "train.tsv").write_text("previous manifest\n")
    proc = cli(folder, "--dest", dest)
    assert proc.returncode == 2
    assert f"error: {bad}: {reason}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (dest / "train.tsv").read_text() == "previous manifest\n"
    assert sorted(p.name for p in dest.iterdir()) == ["train.tsv"]  # no valid.tsv, no leftover .tmp


def test_every_bad_file_is_reported(folder, tmp_path, capsys):
    bad = {kind: folder / f"bad_{kind}.wav" for kind in ("corrupt", "empty", "8khz", "stereo")}
    for kind, path in bad.items():
        make_bad(kind, path)
    assert main([str(folder), "--dest", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    for path in bad.values():
        assert f"error: {path}: " in err
    assert "4 of 25 files are unusable" in err
    assert not (tmp_path / "m").exists()


def test_skip_bad_skips_and_counts(folder, tmp_path, capsys):
    make_bad("corrupt", folder / "c.wav")
    make_bad("stereo", folder / "s.wav")
    make_bad("empty", folder / "spk2" / "e.wav")
    dest = tmp_path / "m"
    assert main([str(folder), "--dest", str(dest), "--skip-bad", "--valid-percent", "0"]) == 0
    err = capsys.readouterr().err
    assert "skipped 3 of 24 files" in err
    for name in ("c.wav", "s.wav", "e.wav"):
        assert any(line.startswith("warning:") and name in line for line in err.splitlines())
    rels = [rel for rel, _ in read(dest / "train.tsv")[1]]
    assert len(rels) == 21 and not {"c.wav", "s.wav", "spk2/e.wav"} & set(rels)


def test_no_audio_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    assert main([str(tmp_path / "empty"), "--dest", str(tmp_path / "m")]) == 2
    assert "no .flac/.wav files" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), "--dest", str(tmp_path / "m")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_small_folder_still_gets_a_validation_file(tmp_path):
    """--valid-percent 0.01 of 30 clips rounds to 0 files: one is taken (and said), never an empty valid.tsv."""
    for i in range(30):
        tone(tmp_path / "clips" / f"c{i:02d}.wav")
    proc = cli(tmp_path / "clips", "--dest", tmp_path / "m", "--valid-percent", 0.01)
    assert proc.returncode == 0, proc.stderr
    assert "rounds to 0; using 1 validation file" in proc.stderr
    assert len(read(tmp_path / "m" / "valid.tsv")[1]) == 1 and len(read(tmp_path / "m" / "train.tsv")[1]) == 29
    tone(tmp_path / "one" / "only.wav")
    proc = cli(tmp_path / "one", "--dest", tmp_path / "m1", "--valid-percent", 0.5)
    assert proc.returncode == 2 and "leaves no training files out of 1" in proc.stderr
