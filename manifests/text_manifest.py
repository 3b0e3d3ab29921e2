"""Turn raw UTF-8 text into a fairseq data-bin for data2vec_text: SentencePiece, then fairseq-preprocess.

Pre-training input (the ``masked_lm`` task): text files with one sentence or paragraph per line and a
blank line between documents; a file without any blank line is read as one document per line.
Documents are split into train/valid whole, so ``sample_break_mode=complete_doc`` never crosses them.
Output in ``--dest``: ``dict.txt``, ``train.{bin,idx}``, ``valid.{bin,idx}`` and ``spm.model``.

    python -m manifests.text_manifest corpus/*.txt --dest data-bin --vocab-size 8000 --valid-percent 0.01

Sentence classification input (the ``sentence_prediction`` task, ``--labels``): one example per line
(a sentence, or a pair separated by a TAB) and a labels file with one label per line. Encode it with
the pre-trained model's SentencePiece model and dictionary so that the token ids match. Output:
``input0/`` (and ``input1/`` for pairs) and ``label/``, as fairseq expects. Without ``--srcdict`` the
``dict.txt`` next to ``--spm-model`` (a pre-training data-bin's) is used; with none there, classification
is refused.

    python -m manifests.text_manifest train.txt --labels train.labels --valid-input dev.txt \\
        --valid-labels dev.labels --spm-model data-bin/spm.model --srcdict data-bin/dict.txt --dest cls-bin

Every input line is checked first: lines that are not valid UTF-8 (and, for classification, empty
examples or labels) are reported as ``FILE:LINE: problem`` and nothing is written (exit status 2).
Everything is built in a temporary folder next to ``--dest`` and moved in only when complete.
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import sentencepiece as spm

MAX_REPORTED = 20  # problems listed before "... and N more"


class TextInputError(Exception):
    """The input cannot be turned into a data-bin; the message says why."""


def read_lines(path: Path, problems: List[str]) -> Iterator[Tuple[int, str]]:
    """``(line number, text)`` for each line of ``path``, without the line break and trailing spaces.

    Lines that are not valid UTF-8 are appended to ``problems`` as ``PATH:LINE: ...`` and skipped.
    """
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(f"{path}:{line_no}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte "
                                f"{e.start + 1} of the line)")
                continue
            yield line_no, text.rstrip()


def read_documents(paths: Sequence[Path], problems: List[str]) -> List[List[str]]:
    """Documents (lists of non-blank lines) of all ``paths``; see the module docstring for the format."""
    documents = []
    for path in paths:
        lines = [text for _, text in read_lines(path, problems)]
        if any(not line for line in lines):
            doc: List[str] = []
            for line in lines + [""]:
                if line:
                    doc.append(line)
                elif doc:
                    documents.append(doc)
                    doc = []
        else:
            documents.extend([line] for line in lines)
    return documents


def read_examples(text_path: Path, labels_path: Path, problems: List[str]) -> List[Tuple[Tuple[str, ...], str]]:
    """``((sentence, [second sentence]), label)`` from a text file (a TAB separates the sentences of a
    pair) and a labels file with one entry per line."""
    texts = list(read_lines(text_path, problems))
    labels = list(read_lines(labels_path, problems))
    examples = []
    for (line_no, text), (_, label) in zip(texts, labels):
        fields = tuple(f.strip() for f in text.split("\t"))
        if not all(fields) or len(fields) > 2:
            problems.append(f"{text_path}:{line_no}: expected a sentence or two TAB-separated sentences, "
                            f"got {text!r}")
        elif examples and len(fields) != len(examples[0][0]):
            problems.append(f"{text_path}:{line_no}: {len(fields)} sentence(s), but line 1 has "
                            f"{len(examples[0][0])}")
        examples.append((fields, label))
    for line_no, label in labels:
        if len(label.split()) != 1:
            problems.append(f"{labels_path}:{line_no}: a label must be one word, got {label!r}")
    if len(texts) != len(labels) and not problems:
        problems.append(f"{labels_path}: {len(labels)} labels for the {len(texts)} lines of {text_path}")
    return examples


def split(items: list, valid_percent: float, seed: int) -> Tuple[list, list]:
    """(train, valid) keeping the input order; valid gets round(len * valid_percent) items chosen by ``seed``."""
    n_valid = int(round(len(items) * valid_percent))
    valid_ids = set(random.Random(seed).sample(range(len(items)), n_valid))
    return ([x for i, x in enumerate(items) if i not in valid_ids],
            [x for i, x in enumerate(items) if i in valid_ids])


def train_spm(text_file: Path, prefix: Path, args: argparse.Namespace) -> Path:
    try:
        spm.SentencePieceTrainer.train(
            input=str(text_file), model_prefix=str(prefix), vocab_size=args.vocab_size,
            model_type=args.model_type, character_coverage=args.character_coverage,
            hard_vocab_limit=False,  # a small corpus may not support --vocab-size pieces: take fewer
            input_sentence_size=args.spm_sentences, shuffle_input_sentence=True,
            num_threads=args.workers, minloglevel=2,
        )
    except RuntimeError as e:
        raise TextInputError(f"cannot train a SentencePiece model with --vocab-size {args.vocab_size}: {e}") from None
    return prefix.with_suffix(".model")


def write_encoded(lines: Sequence[str], sp: spm.SentencePieceProcessor, path: Path) -> None:
    """One line of space-separated pieces per input line; blank lines (document breaks) stay blank."""
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(" ".join(sp.encode(line, out_type=str)) + "\n" if line else "\n")


def spm_dictionary(sp: spm.SentencePieceProcessor, encoded_train: Path, path: Path) -> Path:
    """A fairseq ``dict.txt`` with every SentencePiece piece, most frequent (in the train split) first.

    fairseq-preprocess would list only the pieces the train split happens to use, and map the others
    (in valid, or in later fine-tuning data) to ``<unk>``.
    """
    counts = {}
    with open(encoded_train, encoding="utf-8") as f:
        for line in f:
            for piece in line.split():
                counts[piece] = counts.get(piece, 0) + 1
    ids = [i for i in range(len(sp)) if not (sp.is_control(i) or sp.is_unknown(i))]
    pieces = sorted((sp.id_to_piece(i) for i in ids), key=lambda p: -counts.get(p, 0))  # stable: ties by id
    path.write_text("".join(f"{p} {counts.get(p, 0)}\n" for p in pieces), encoding="utf-8")
    return path


def preprocess(train: Path, valid: Optional[Path], destdir: Path, srcdict: Optional[Path], workers: int) -> None:
    """Binarize with ``fairseq-preprocess --only-source`` (a subprocess, as a user would run it)."""
    exe = Path(sys.executable).with_name("fairseq-preprocess")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "fairseq_cli.preprocess"]
    cmd += ["--only-source", "--trainpref", str(train), "--destdir", str(destdir), "--workers", str(workers)]
    if valid is not None:
        cmd += ["--validpref", str(valid)]
    if srcdict is not None:
        cmd += ["--srcdict", str(srcdict)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise TextInputError(f"fairseq-preprocess failed:\n{proc.stderr[-3000:]}")


def doc_lines(documents: Sequence[List[str]]) -> List[str]:
    """Documents as lines with a blank line after each (fairseq's document separator)."""
    return [line for doc in documents for line in doc + [""]]


def build(args: argparse.Namespace, work: Path) -> List[Path]:
    """Build the data-bin under ``work/out``; return its top-level entries."""
    problems: List[str] = []
    for path in args.inputs + (args.valid_input or []) + (args.labels or []) + (args.valid_labels or []):
        if not path.is_file():
            raise TextInputError(f"{path}: no such file")

    if args.labels:  # sentence classification
        train = read_examples(args.inputs[0], args.labels[0], problems)
        valid = read_examples(args.valid_input[0], args.valid_labels[0], problems) if args.valid_input else None
    else:
        train = read_documents(args.inputs, problems)
        valid = read_documents(args.valid_input, problems) if args.valid_input else None
    if problems:
        for line in problems[:MAX_REPORTED]:
            print(f"error: {line}", file=sys.stderr)
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        raise TextInputError(f"{len(problems)} problems in the input{more}; nothing was written")
    if valid is None:
        train, valid = split(train, args.valid_percent, args.seed)
    if not train:
        raise TextInputError("no text left for the train split")

    out = work / "out"
    out.mkdir()
    if args.labels:
        unknown = sorted({l for _, l in valid} - {l for _, l in train})
        if unknown:
            raise TextInputError(f"valid labels {unknown} never occur in the train labels")
        if valid and len(valid[0][0]) != len(train[0][0]):
            raise TextInputError("the train and valid examples differ in the number of sentences")
        # sentence_prediction reads the first sentences from input0/, the second ones from input1/
        columns = {f"input{i}": {"train": [x[0][i] for x in train], "valid": [x[0][i] for x in valid]}
                   for i in range(len(train[0][0]))}
    else:
        columns = {".": {"train": doc_lines(train), "valid": doc_lines(valid)}}
    spm_text = [line for splits in columns.values() for line in splits["train"]]
    (work / "train.txt").write_text("\n".join(spm_text) + "\n", encoding="utf-8")

    if args.spm_model:
        model = Path(args.spm_model)
    else:
        model = train_spm(work / "train.txt", work / "spm", args)
        shutil.copy(model.with_suffix(".vocab"), out / "spm.vocab")
    shutil.copy(model, out / "spm.model")
    sp = spm.SentencePieceProcessor(model_file=str(model))

    srcdict = args.srcdict
    for column, splits in columns.items():
        for name, lines in splits.items():
            write_encoded(lines, sp, work / f"{name}.spm")
        if srcdict is None:  # a second sentence uses the first one's dictionary
            srcdict = spm_dictionary(sp, work / "train.spm", work / "dict.txt")
        preprocess(work / "train.spm", work / "valid.spm" if valid else None, out / column, srcdict, args.workers)
    if args.labels:
        for name, items in (("train", train), ("valid", valid)):
            (work / f"{name}.label").write_text("".join(f"{l}\n" for _, l in items), encoding="utf-8")
        preprocess(work / "train.label", work / "valid.label" if valid else None, out / "label", None, 1)
    unit = "examples" if args.labels else "documents"
    print(f"{len(train)} train and {len(valid)} valid {unit}, {len(sp)} SentencePiece pieces -> {args.dest}")
    if not valid:
        print("no valid split was written: train with dataset.disable_validation=true", file=sys.stderr)
    return sorted(out.iterdir())


def move_into(entries: Sequence[Path], dest: Path) -> None:
    """Replace ``dest/<name>`` by each finished entry (files and folders)."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        target = dest / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", type=Path,
                   help="UTF-8 text files (with --labels: exactly one file, one example per line)")
    p.add_argument("--dest", required=True, type=Path, help="data-bin folder to write (created if missing)")
    p.add_argument("--vocab-size", type=int, default=8000, help="SentencePiece vocabulary size to train (at most; a small corpus may give fewer pieces)")
    p.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"], help="SentencePiece model type")
    p.add_argument("--character-coverage", type=float, default=0.9995,
                   help="share of characters SentencePiece must cover (1.0 for small alphabets)")
    p.add_argument("--spm-sentences", type=int, default=2_000_000,
                   help="at most this many sampled lines train SentencePiece")
    p.add_argument("--spm-model", type=Path,
                   help="use this SentencePiece model instead of training one (e.g. the pre-training data's)")
    p.add_argument("--srcdict", type=Path,
                   help="use this fairseq dict.txt instead of building one (needed to fine-tune a pre-trained "
                        "model: pass the pre-training data-bin's dict.txt); default with --spm-model: the "
                        "dict.txt next to it")
    p.add_argument("--valid-percent", type=float, default=None,
                   help="fraction (0-1) of the documents (examples) that go to valid; default 0.01, "
                        "not allowed with --valid-input")
    p.add_argument("--valid-input", nargs="+", type=Path,
                   help="use these files as the valid split instead of a random share of the inputs")
    p.add_argument("--labels", nargs=1, type=Path,
                   help="sentence classification: labels file, one label (one word) per input line")
    p.add_argument("--valid-labels", nargs=1, type=Path, help="labels of --valid-input (with --labels)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the train/valid split")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="processes for SentencePiece training and fairseq-preprocess")
    args = p.parse_args(argv)
    if args.valid_input and args.valid_percent is not None:
        p.error("give either --valid-input or --valid-percent")
    if args.valid_percent is None:
        args.valid_percent = 0.0 if args.valid_input else 0.01
    if not 0.0 <= args.valid_percent < 1.0:
        p.error(f"--valid-percent must be in [0, 1), got {args.valid_percent}")
    if args.labels and len(args.inputs) != 1:
        p.error("with --labels give exactly one input file")
    if bool(args.valid_labels) != bool(args.labels and args.valid_input):
        p.error("--valid-labels goes with --labels and --valid-input")
    if args.vocab_size < 8:
        p.error(f"--vocab-size must be at least 8, got {args.vocab_size}")
    for flag in ("spm_model", "srcdict"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            p.error(f"--{flag.replace('_', '-')} {path}: no such file")
    if args.spm_model is not None and args.srcdict is None:
        args.srcdict = neighbour_dictionary(args.spm_model, classification=bool(args.labels), parser=p)
    return args


def neighbour_dictionary(spm_model: Path, classification: bool, parser: argparse.ArgumentParser) -> Optional[Path]:
    """``--srcdict`` when only ``--spm-model`` is given: the ``dict.txt`` next to it.

    This script writes the two side by side; a dictionary built anew from this corpus would list the
    same pieces in another (frequency) order, so a pre-trained model would read scrambled token ids.
    Classification refuses to go on without one; pre-training builds its own (None).
    """
    neighbour = spm_model.parent / "dict.txt"
    if neighbour.is_file():
        print(f"--srcdict not given: using {neighbour}, the dictionary next to --spm-model", file=sys.stderr)
        return neighbour
    if classification:
        parser.error(f"--spm-model {spm_model} without --srcdict, and there is no dict.txt next to it "
                     f"({neighbour}): pass the pre-training data-bin's dictionary (--srcdict DATA_BIN/dict.txt); "
                     f"a dictionary built from this data would give other token ids than the pre-trained model's")
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        args.dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{args.dest.name}.", dir=args.dest.parent) as work:
            move_into(build(args, Path(work)), args.dest)
        return 0
    except (TextInputError, OSError) as e:  # OSError: e.g. --dest not writable; a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
