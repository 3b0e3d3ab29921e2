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
    assert not (tmp_path / "t.wrd").exists()  # the transcripts file next to the manifests is not a split


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


def write_rows(manifest: Path, rels) -> None:
    """A manifest whose root is ``audio/`` next to it (the files need not exist)."""
    manifest.write_text("\n".join([str(manifest.parent / "audio")] + [f"{rel}\t16000" for rel in rels]) + "\n")


def label(tmp_path, transcripts: str) -> int:
    (tmp_path / "t.tsv").write_text(transcripts)
    return main([str(tmp_path), "--transcripts", str(tmp_path / "t.tsv")])


def test_malformed_manifests_are_all_named(tmp_path, capsys):
    write_rows(tmp_path / "train.tsv", ["sub/a.flac"])
    (tmp_path / "valid.tsv").write_text(f"{tmp_path}\nsub/b.flac\t0\n")  # the old reader took 0 frames
    (tmp_path / "test.tsv").write_text(f"{tmp_path}\n\t16000\n")  # empty path
    assert label(tmp_path, "a\tHI\nb\tHO\n") == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'valid.tsv'}:2: frame count 0 is not positive" in err
    assert f"error: {tmp_path / 'test.tsv'}:2: expected 'path<TAB>frames'" in err
    assert "Traceback" not in err and not list(tmp_path.glob("*.wrd"))


def test_duplicate_keys_are_errors(tmp_path, capsys):
    write_manifests(tmp_path, {"train": ["a", "b"]})
    (tmp_path / "t.tsv").write_text("a\tHELLO\nb\tHOLD\na\tHELLO\n")  # the same text again is still an error
    (tmp_path / "u.tsv").write_text("b WORLD\n")
    assert main([str(tmp_path), "--transcripts", str(tmp_path / "t.tsv"), str(tmp_path / "u.tsv")]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 't.tsv'}:3: transcript key 'a' was already given at {tmp_path / 't.tsv'}:1" in err
    assert f"error: {tmp_path / 'u.tsv'}:1: transcript key 'b' was already given at {tmp_path / 't.tsv'}:2" in err
    assert "2 problem(s); nothing was written" in err
    assert not list(tmp_path.glob("*.wrd")) and not (tmp_path / "dict.ltr.txt").exists()


def test_ambiguous_basename_is_an_error_until_keyed_by_relative_path(tmp_path, capsys):
    write_rows(tmp_path / "train.tsv", ["spk1/001.wav", "spk2/001.wav", "spk2/002.wav"])
    write_rows(tmp_path / "valid.tsv", ["spk3/001.wav"])
    # Before: both speakers' 001.wav (and spk3's) silently got the one '001' transcript.
    assert label(tmp_path, "001\tHELLO\n002\tHOLD\n") == 2
    err = capsys.readouterr().err
    train, valid = tmp_path / "train.tsv", tmp_path / "valid.tsv"
    assert (f"error: {tmp_path / 't.tsv'}:1: transcript key '001' matches 3 manifest rows: "
            f"{train}:2, {train}:3, {valid}:2; key these transcripts by the path relative to the manifest root") in err
    assert "'002'" not in err  # one row only: fine
    assert not list(tmp_path.glob("*.wrd"))

    assert label(tmp_path, "spk1/001\tHELLO\nspk2/001\tWORLD\n002\tHOLD\nspk3/001.wav\tLOW\n") == 0
    assert (tmp_path / "train.wrd").read_text() == "HELLO\nWORLD\nHOLD\n"
    assert (tmp_path / "valid.wrd").read_text() == "LOW\n"


def test_row_matched_by_two_keys_is_an_error(tmp_path, capsys):
    write_rows(tmp_path / "train.tsv", ["spk1/001.wav"])
    # Before: the relative-path key won silently, whichever text was meant.
    assert label(tmp_path, "spk1/001\tHELLO\n001\tWORLD\n") == 2
    err = capsys.readouterr().err
    t = tmp_path / "t.tsv"
    assert (f"error: {tmp_path / 'train.tsv'}:2: spk1/001.wav is matched by several transcript keys: "
            f"'spk1/001' ({t}:1), '001' ({t}:2)") in err
    assert not (tmp_path / "train.wrd").exists()


def test_the_same_file_in_two_splits_may_share_a_basename_key(tmp_path):
    write_rows(tmp_path / "train.tsv", ["spk1/001.wav"])
    write_rows(tmp_path / "valid.tsv", ["spk1/001.wav"])  # same root, same file: one utterance, one transcript
    assert label(tmp_path, "001\tHELLO\n") == 0
    assert (tmp_path / "train.wrd").read_text() == (tmp_path / "valid.wrd").read_text() == "HELLO\n"
