"""d2v_plugin.audio.manifest.read_manifest: reads back what manifests.audio_manifest writes, names every bad row."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from d2v_plugin.audio.manifest import ManifestRow, read_manifest
from d2v_plugin.core.errors import ManifestError
from manifests.audio_manifest import main as write_manifests


def tone(path: Path, seconds: float = 0.25, sr: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), (0.3 * np.sin(np.arange(int(sr * seconds)) / 10)).astype(np.float32), sr, subtype="PCM_16")


def test_round_trip_with_the_manifest_writer(tmp_path):
    audio = tmp_path / "audio"
    for i in range(5):
        tone(audio / f"spk{i % 2}" / f"u{i}.wav", seconds=0.1 + i * 0.05)
    assert write_manifests([str(audio), "--dest", str(tmp_path / "m"), "--valid-percent", "0"]) == 0
    manifest = tmp_path / "m" / "train.tsv"
    root, rows = read_manifest(str(manifest), check_files=True)
    assert root == str(audio.resolve()) and len(rows) == 5
    assert [row.line_no for row in rows] == list(range(2, 7))  # the root is line 1
    for row in rows:
        assert isinstance(row, ManifestRow) and isinstance(row.frames, int)
        assert row.frames == sf.info(str(audio / row.path)).frames
    assert [row.path for row in rows] == sorted(p.relative_to(audio).as_posix() for p in audio.rglob("*.wav"))


@pytest.mark.parametrize("body,line_no,problem", [
    ("a.wav\t100\n\nb.wav\t100\n", 3, "empty line"),
    ("a.wav\t100\nb.wav 100\n", 3, "expected 'path<TAB>frames'"),
    ("a.wav\t100\textra\n", 2, "expected 'path<TAB>frames'"),
    ("a.wav\t100\n\t100\n", 3, "expected 'path<TAB>frames'"),  # empty path field
    ("a.wav\tlots\n", 2, "frame count 'lots' is not an integer"),
    ("a.wav\t0\n", 2, "frame count 0 is not positive"),
])
def test_bad_row_is_named_by_file_and_line(tmp_path, body, line_no, problem):
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"{tmp_path}\n{body}")
    with pytest.raises(ManifestError) as e:
        read_manifest(str(manifest))
    assert str(e.value).startswith(f"{manifest}:{line_no}: {problem}")
    assert isinstance(e.value, ValueError)  # callers that catch ValueError keep working


@pytest.mark.parametrize("text", ["", "\n", "\na.wav\t100\n"])
def test_missing_root_line(tmp_path, text):
    manifest = tmp_path / "train.tsv"
    manifest.write_text(text)
    with pytest.raises(ManifestError, match="train.tsv:1: missing root folder line"):
        read_manifest(str(manifest))


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(str(tmp_path / "nope.tsv"))


def test_missing_audio_file_only_with_check_files(tmp_path):
    tone(tmp_path / "a.wav")
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"{tmp_path}\na.wav\t4000\nsub/gone.wav\t4000\n")
    assert read_manifest(str(manifest))[1] == [(2, "a.wav", 4000), (3, "sub/gone.wav", 4000)]  # not checked by default
    with pytest.raises(ManifestError) as e:
        read_manifest(str(manifest), check_files=True)
    assert str(e.value).startswith(f"{manifest}:3: ") and str(e.value).endswith(str(tmp_path / "sub" / "gone.wav"))


def test_missing_root_folder_only_with_check_files(tmp_path):
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"{tmp_path / 'moved'}\na.wav\t4000\n")
    assert read_manifest(str(manifest)) == (str(tmp_path / "moved"), [(2, "a.wav", 4000)])
    with pytest.raises(ManifestError) as e:
        read_manifest(str(manifest), check_files=True)
    assert str(e.value).startswith(f"{manifest}:1: root directory") and str(tmp_path / "moved") in str(e.value)
