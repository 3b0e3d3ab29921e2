"""manifests.text_manifest: documents kept whole, classification layout, every bad input named by file and line."""

from pathlib import Path

import pytest
import sentencepiece as spm

from fairseq.data import Dictionary, data_utils

from manifests.text_manifest import main

NAMES = ["tom", "sam", "nat", "tess", "cam", "seth", "nash", "moe", "tash", "sean", "mona", "chet"]
POSITIONS = ["one", "two", "three", "four"]
DOCS = len(NAMES)


def doc_lines(d: int):
    return [f"{NAMES[d]} {POSITIONS[i]} the cat sat on the mat" for i in range(2 + d % 3)]


def corpus(path: Path) -> Path:
    """DOCS documents of 2-4 lines; every line names its document and position ("tom two the cat ...")."""
    docs = ["\n".join(doc_lines(d)) for d in range(DOCS)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def read_split(dest: Path, split: str):
    """The binarized split decoded back to text lines ("" marks a document break)."""
    d = Dictionary.load(str(dest / "dict.txt"))
    sp = spm.SentencePieceProcessor(model_file=str(dest / "spm.model"))
    data = data_utils.load_indexed_dataset(str(dest / split), d)
    return [sp.decode(d.string(data[i]).split()) for i in range(len(data))]


@pytest.fixture(scope="module")
def pretraining_bin(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("text")
    dest = tmp / "bin"
    assert main([str(corpus(tmp / "c.txt")), "--dest", str(dest), "--vocab-size", "40",
                 "--character-coverage", "1", "--valid-percent", "0.25", "--seed", "3", "--workers", "1"]) == 0
    return dest


def test_documents_stay_whole_and_in_order(pretraining_bin):
    train, valid = read_split(pretraining_bin, "train"), read_split(pretraining_bin, "valid")
    for split in (train, valid):
        docs = "\n".join(split).strip("\n").split("\n\n")
        for doc in docs:
            lines = doc.split("\n")
            assert lines == doc_lines(NAMES.index(lines[0].split()[0]))
    assert train.count("") + valid.count("") == DOCS  # one blank line after each document
    assert valid.count("") == round(DOCS * 0.25)
    for name in ("dict.txt", "spm.model", "train.bin", "train.idx", "valid.bin", "valid.idx"):
        assert (pretraining_bin / name).is_file()
    assert not [p for p in pretraining_bin.parent.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_classification_pairs_use_the_pretraining_vocabulary(pretraining_bin, tmp_path):
    (tmp_path / "t.txt").write_text("the cat sat\ton the mat\nthe mat\tthe cat\nsat on\tthe cat sat\n")
    (tmp_path / "t.labels").write_text("yes\nno\nyes\n")
    (tmp_path / "v.txt").write_text("the cat\ton the mat\n")
    (tmp_path / "v.labels").write_text("no\n")
    dest = tmp_path / "cls"
    assert main([str(tmp_path / "t.txt"), "--labels", str(tmp_path / "t.labels"), "--valid-input",
                 str(tmp_path / "v.txt"), "--valid-labels", str(tmp_path / "v.labels"), "--spm-model",
                 str(pretraining_bin / "spm.model"), "--srcdict", str(pretraining_bin / "dict.txt"),
                 "--dest", str(dest), "--workers", "1"]) == 0
    for column in ("input0", "input1"):
        assert (dest / column / "dict.txt").read_text() == (pretraining_bin / "dict.txt").read_text()
        assert (dest / column / "train.bin").is_file() and (dest / column / "valid.bin").is_file()
    labels = Dictionary.load(str(dest / "label" / "dict.txt"))
    assert labels.index("yes") != labels.unk() and labels.index("no") != labels.unk()
    d = Dictionary.load(str(dest / "input1" / "dict.txt"))
    sp = spm.SentencePieceProcessor(model_file=str(pretraining_bin / "spm.model"))
    second = data_utils.load_indexed_dataset(str(dest / "input1" / "valid"), d)
    assert sp.decode(d.string(second[0]).split()) == "on the mat"


def classification_files(tmp_path: Path) -> list:
    """A tiny sentence classification set, as ``main``'s leading arguments."""
    (tmp_path / "t.txt").write_text("mat mat mat the\nsat sat on\nthe mat\n")
    (tmp_path / "t.labels").write_text("yes\nno\nyes\n")
    return [str(tmp_path / "t.txt"), "--labels", str(tmp_path / "t.labels"), "--valid-percent", "0", "--workers", "1"]


def test_spm_model_without_srcdict_reuses_the_dictionary_next_to_it(pretraining_bin, tmp_path, capsys):
    dest = tmp_path / "cls"
    assert main(classification_files(tmp_path) + ["--spm-model", str(pretraining_bin / "spm.model"),
                                                  "--dest", str(dest)]) == 0
    assert (dest / "input0" / "dict.txt").read_text() == (pretraining_bin / "dict.txt").read_text()
    assert f"using {pretraining_bin / 'dict.txt'}" in capsys.readouterr().err


def test_spm_model_without_any_dictionary_is_refused(pretraining_bin, tmp_path, capsys):
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "spm.model").write_bytes((pretraining_bin / "spm.model").read_bytes())
    with pytest.raises(SystemExit) as e:
        main(classification_files(tmp_path) + ["--spm-model", str(alone / "spm.model"), "--dest", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert f"--spm-model {alone / 'spm.model'} without --srcdict, and there is no dict.txt next to it" in err
    assert "--srcdict DATA_BIN/dict.txt" in err
    assert not (tmp_path / "o").exists()


def test_non_utf8_lines_are_reported_with_file_and_line(tmp_path, capsys):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    corpus(good)
    bad.write_bytes(b"fine line\n\ncaf\xe9 latin-1 line\nok\n\xff\xfe\n")
    dest = tmp_path / "out"
    assert main([str(good), str(bad), "--dest", str(dest), "--vocab-size", "40"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3: not valid UTF-8 (byte 0xe9 at byte 4 of the line)" in err
    assert f"{bad}:5: not valid UTF-8" in err
    assert "2 problems in the input" in err and "Traceback" not in err
    assert not dest.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "good.txt"]


@pytest.mark.parametrize("text, labels, message", [
    ("a b\nc d\n", "x\n", "t.labels: 1 labels for the 2 lines of"),
    ("a b\nc d\n", "x\ny z\n", "t.labels:2: a label must be one word, got 'y z'"),
    ("a b\n\n", "x\ny\n", "t.txt:2: expected a sentence or two TAB-separated sentences"),
    ("a\tb\nc d\n", "x\ny\n", "t.txt:2: 1 sentence(s), but line 1 has 2"),
])
def test_bad_classification_input_is_reported(tmp_path, capsys, text, labels, message):
    (tmp_path / "t.txt").write_text(text)
    (tmp_path / "t.labels").write_text(labels)
    assert main([str(tmp_path / "t.txt"), "--labels", str(tmp_path / "t.labels"), "--dest",
                 str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_valid_label_is_reported(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("a b\nc d\n")
    (tmp_path / "t.labels").write_text("x\ny\n")
    (tmp_path / "v.labels").write_text("z\n")
    (tmp_path / "v.txt").write_text("a b\n")
    assert main([str(tmp_path / "t.txt"), "--labels", str(tmp_path / "t.labels"), "--valid-input",
                 str(tmp_path / "v.txt"), "--valid-labels", str(tmp_path / "v.labels"), "--dest",
                 str(tmp_path / "out2")]) == 2
    assert "valid labels ['z'] never occur in the train labels" in capsys.readouterr().err


def test_conflicting_options_are_refused(tmp_path, capsys):
    corpus(tmp_path / "c.txt")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "c.txt"), "--dest", str(tmp_path / "o"), "--valid-input", str(tmp_path / "c.txt"),
              "--valid-percent", "0.1"])
    assert e.value.code == 2 and "either --valid-input or --valid-percent" in capsys.readouterr().err
