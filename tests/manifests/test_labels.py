"""manifests.labels: .wrd/.ltr/dict.ltr.txt from transcripts, and its errors."""

from pathlib import Path

import pytest

from manifests.labels import letters, main


def write_manifests(root: Path, splits):
    (root / "audio").mkdir(parents=True)
    for split, ids in splits.items():
        lines = [str(root / "audio")] + [f"sub/{i}.flac\t16000" for i in ids]
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n")


def test_letters_format():
    assert letters("HI  YOU") == "H I | Y O U |"


def test_writes_labels_and_dictionary(tmp_path):
    write_manifests(tmp_path, {"train": ["a", "b"], "valid": ["c"]})
    (tmp_path / "t.tsv").write_text("a\tHELLO WORLD\nb\tHOLD\nc\tWORD\n")
    assert main([str(tmp_path), "--transcripts", str(tmp_path / "t.tsv")]) == 0
    assert (tmp_path / "train.wrd").read_text() == "HELLO WORLD\nHOLD\n"
    assert (tmp_path / "train.ltr").read_text().splitlines()[0] == "H E L L O | W O R L D |"
    assert (tmp_path / "valid.ltr").read_text() == "W O R D |\n"
    counts = dict(line.split() for line in (tmp_path / "dict.ltr.txt").read_text().splitlines())
    assert counts["L"] == "4" and counts["|"] == "3" and set(counts) == set("HELOWRD|")


def test_librispeech_trans_files(tmp_path):
    write_manifests(tmp_path, {"train": ["19-198-0000", "19-198-0001"]})
    chapter = tmp_path / "LibriSpeech" / "19" / "198"
    chapter.mkdir(parents=True)
    (chapter / "19-198.trans.txt").write_text("19-198-0000 NORTHANGER ABBEY\n19-198-0001 THIS LITTLE WORK\n")
    assert main([str(tmp_path), "--librispeech", str(tmp_path / "LibriSpeech")]) == 0
    assert (tmp_path / "train.wrd").read_text() == "NORTHANGER ABBEY\nTHIS LITTLE WORK\n"


def test_missing_transcript_names_the_row_and_writes_nothing(tmp_path, capsys):
    write_manifests(tmp_path, {"train": ["a", "b"]})
    (tmp_path / "t.tsv").write_text("a\tHELLO\n")
    assert main([str(tmp_path), "--transcripts", str(tmp_path / "t.tsv")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'train.tsv'}:3: no transcript for sub/b.flac" in err
    assert not (tmp_path / "train.ltr").exists()


def test_letter_outside_dictionary_names_the_row(tmp_path, capsys):
    write_manifests(tmp_path, {"train": ["a"], "test": ["b"]})
    (tmp_path / "t.tsv").write_text("a\tHELLO\nb\tHEXLO\n")
    assert main([str(tmp_path), "--transcripts", str(tmp_path / "t.tsv")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'test.tsv'}:2: sub/b.flac has letters not in the dictionary: X" in err


def test_existing_dictionary(tmp_path, capsys):
    write_manifests(tmp_path, {"test": ["b"]})
    (tmp_path / "t.tsv").write_text("b\tHEY\n")
    (tmp_path / "d.txt").write_text("H 1\nE 1\n| 1\n")
    assert main([str(tmp_path), "--transcripts", str(tmp_path / "t.tsv"), "--dict", str(tmp_path / "d.txt")]) == 2
    assert "letters not in the dictionary: Y" in capsys.readouterr().err
