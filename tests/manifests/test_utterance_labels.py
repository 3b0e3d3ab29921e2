"""manifests.utterance_labels: SPLIT.lbl + dict.lbl.txt from ID<TAB>LABEL files or folders, and every bad input
named by file and line with nothing written."""

from pathlib import Path

import pytest

from manifests.utterance_labels import main


def write_manifests(root: Path, splits, folder: str = "sub"):
    (root / "audio").mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():
        lines = [str(root / "audio")] + [f"{folder}/{i}.flac\t16000" if folder else f"{i}.flac\t16000" for i in ids]
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n")


def run(tmp_path: Path, labels: str, *args) -> int:
    (tmp_path / "labels.txt").write_text(labels)
    return main([str(tmp_path), "--labels", str(tmp_path / "labels.txt"), *args])


def written(tmp_path: Path):
    return sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".lbl", ".txt") and p.name != "labels.txt")


def test_writes_one_label_per_row_and_the_dictionary(tmp_path):
    write_manifests(tmp_path, {"train": ["a", "b", "c"], "valid": ["d"]})
    # keys: path relative to the root, without extension, or the bare name; "ID LABEL" works too
    assert run(tmp_path, "sub/a.flac\tdog\nsub/b\tcat\nc dog\nd\tcat\n") == 0
    assert (tmp_path / "train.lbl").read_text() == "dog\ncat\ndog\n"
    assert (tmp_path / "valid.lbl").read_text() == "cat\n"
    assert (tmp_path / "dict.lbl.txt").read_text() == "dog 2\ncat 1\n"  # most frequent first: class 0 = dog


def test_multi_label_rows(tmp_path):
    write_manifests(tmp_path, {"train": ["a", "b"]})
    assert run(tmp_path, "a\t/m/speech, /m/dog\nb\t/m/dog\n", "--multi-label") == 0
    assert (tmp_path / "train.lbl").read_text() == "/m/speech /m/dog\n/m/dog\n"
    assert (tmp_path / "dict.lbl.txt").read_text() == "/m/dog 2\n/m/speech 1\n"


def test_labels_from_folders(tmp_path):
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\nspk1/x/a.wav\t5\nspk2/b.wav\t5\nspk1/c.wav\t5\n")
    assert main([str(tmp_path), "--from-folder"]) == 0
    assert (tmp_path / "train.lbl").read_text() == "spk1\nspk2\nspk1\n"


def test_folder_missing_names_the_row(tmp_path, capsys):
    (tmp_path / "train.tsv").write_text(f"{tmp_path}\nspk1/a.wav\t5\nb.wav\t5\n")
    assert main([str(tmp_path), "--from-folder"]) == 2
    assert f"{tmp_path / 'train.tsv'}:3: b.wav is in no folder" in capsys.readouterr().err
    assert written(tmp_path) == []


@pytest.mark.parametrize("labels, where, message, args", [
    # unknown id: names the label file's line
    ("a\tdog\nb\tcat\nzz\tdog\n", "labels.txt:3", "ID 'zz' names no row of the manifests", ()),
    # missing label (fewer labels than rows): names the manifest row, and the counts
    ("a\tdog\n", "train.tsv:3", "no label for sub/b.flac", ()),
    ("a\tdog\n", "train.tsv", "1 labels for 2 rows", ()),
    # duplicate id, even with the same label
    ("a\tdog\nb\tcat\na\tdog\n", "labels.txt:3", "key 'a' was already given at", ()),
    # empty label, empty item of a multi-label row, whitespace inside a label
    ("a\t \nb\tcat\n", "labels.txt:1", "empty label", ()),
    ("a\tdog,,cat\nb\tcat\n", "labels.txt:1", "empty label in 'dog,,cat'", ("--multi-label",)),
    ("a\tScottish English\nb\tcat\n", "labels.txt:1", "label 'Scottish English' contains whitespace", ()),
    # several labels without --multi-label; a label repeated in a row; fairseq's special symbols
    ("a\tdog,cat\nb\tcat\n", "labels.txt:1", "2 labels ['dog', 'cat'] but --multi-label is not set", ()),
    ("a\tdog,dog\nb\tcat\n", "labels.txt:1", "label(s) given twice: dog", ("--multi-label",)),
    ("a\t<unk>\nb\tcat\n", "labels.txt:1", "label '<unk>' is one of fairseq's special symbols", ()),
])
def test_bad_label_files_name_the_row_and_write_nothing(tmp_path, capsys, labels, where, message, args):
    write_manifests(tmp_path, {"train": ["a", "b"]})
    assert run(tmp_path, labels, *args) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / where}" in err and message in err, err
    assert "nothing was written" in err
    assert written(tmp_path) == []


def test_ambiguous_id_and_label_unseen_in_training(tmp_path, capsys):
    write_manifests(tmp_path, {"train": ["a"], "valid": ["b"]})
    (tmp_path / "audio" / "other").mkdir()
    (tmp_path / "test.tsv").write_text(f"{tmp_path / 'audio'}\nother/a.flac\t5\n")
    assert run(tmp_path, "a\tdog\nb\tcat\n", "--splits", "train", "valid") == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'labels.txt'}:1: ID 'a' matches 2 manifest rows" in err  # sub/a and other/a
    assert f"{tmp_path / 'valid.tsv'}:2: label(s) not in the 'train' split: cat" in err
    assert written(tmp_path) == []


def test_existing_dictionary(tmp_path, capsys):
    write_manifests(tmp_path, {"test": ["a", "b"]})
    (tmp_path / "dict.lbl.txt").write_text("dog 5\ncat 3\n")
    assert run(tmp_path, "a\tdog\nb\tcow\n", "--dict", str(tmp_path / "dict.lbl.txt")) == 2
    assert f"{tmp_path / 'test.tsv'}:3: label(s) not in {tmp_path / 'dict.lbl.txt'}: cow" in capsys.readouterr().err
    assert run(tmp_path, "a\tdog\nb\tcat\n", "--dict", str(tmp_path / "dict.lbl.txt")) == 0
    assert (tmp_path / "test.lbl").read_text() == "dog\ncat\n"
    assert (tmp_path / "dict.lbl.txt").read_text() == "dog 5\ncat 3\n"  # left as it was


def test_either_labels_or_folders(tmp_path, capsys):
    write_manifests(tmp_path, {"train": ["a"]})
    assert main([str(tmp_path)]) == 2
    assert "give either --labels FILE... or --from-folder" in capsys.readouterr().err
