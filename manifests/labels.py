"""Write fairseq's CTC fine-tuning labels next to wav2vec-style manifests.

For every ``SPLIT.tsv`` in the manifest folder: ``SPLIT.wrd`` (the words of each row),
``SPLIT.ltr`` (letters separated by spaces, each word followed by ``|``) and, from the training split,
``dict.ltr.txt`` (letters with their counts; fairseq adds the special symbols itself).

Transcripts come from ``--transcripts`` files (``KEY<TAB>TEXT`` or ``KEY TEXT`` per line) and/or from
LibriSpeech-style ``*.trans.txt`` files found under the audio root (``--librispeech``). A KEY names a
manifest row by its path relative to the manifest root (``spk1/001.wav``), that path without the
extension (``spk1/001``) or the file name without extension (``001``). Each key and each row must be
matched at most once, so that no row can get another row's transcript:

- a key given twice (in one file or across files) is an error, even with the same text;
- a key that matches rows of different audio files (e.g. ``001`` for ``spk1/001.wav`` and
  ``spk2/001.wav``, in any of the labelled splits) is an error naming every such row: key those
  transcripts by relative path instead;
- a row matched by two different keys (e.g. ``spk1/001`` and ``001``) is an error.

A row without a transcript, or whose text uses letters the dictionary lacks, is an error naming the
manifest line and the utterance. Every error is printed as ``error: FILE:LINE: ...`` and nothing is
written then (exit status 2).

    python -m manifests.labels MANIFEST_DIR --transcripts transcripts.tsv
"""

import argparse
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from d2v_plugin.audio.manifest import ManifestRow, read_manifest
from d2v_plugin.core.errors import ManifestError

WORD_SEP = "|"


class Transcript(NamedTuple):
    text: str
    where: str  # FILE:LINE it was read from, for error messages


def letters(text: str) -> str:
    """``"HI YOU"`` -> ``"H I | Y O U |"`` (fairseq's letter target format)."""
    return " ".join(" ".join(word) + " " + WORD_SEP for word in text.split())


def read_transcripts(paths: Iterable[str]) -> Tuple[Dict[str, Transcript], List[str]]:
    """``({key: Transcript}, errors)``; a repeated key keeps its first text and is an error."""
    table: Dict[str, Transcript] = {}
    errors: List[str] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                where = f"{path}:{line_no}"
                key, sep, text = line.partition("\t") if "\t" in line else line.partition(" ")
                key = key.strip()
                if not sep or not key:
                    errors.append(f"{where}: expected 'ID<TAB>TEXT' or 'ID TEXT', got {line!r}")
                elif key in table:
                    # Even with the same text: a repeated id usually means two corpora share ids, and
                    # then some row would get the other corpus's transcript.
                    errors.append(f"{where}: transcript key {key!r} was already given at {table[key].where}")
                else:
                    table[key] = Transcript(" ".join(text.split()), where)
    return table, errors


def librispeech_transcripts(root: str) -> List[str]:
    return sorted(str(p) for p in Path(root).rglob("*.trans.txt"))


def candidate_keys(relpath: str) -> List[str]:
    """The transcript keys that name the manifest row ``relpath``, in lookup order, without repeats."""
    stem = os.path.splitext(relpath)[0]
    return list(dict.fromkeys((relpath, stem, os.path.basename(stem))))


Manifests = Dict[str, Tuple[str, str, List[ManifestRow]]]  # split -> (manifest path, root, rows)


def read_manifests(manifest_dir: str, splits: Sequence[str]) -> Tuple[Manifests, List[str]]:
    """``({split: (manifest path, root, rows)}, errors)`` for ``DIR/SPLIT.tsv`` of each split."""
    manifests, errors = {}, []
    for split in splits:
        manifest = os.path.join(manifest_dir, f"{split}.tsv")
        try:
            root, rows = read_manifest(manifest)
        except ManifestError as e:
            errors.append(str(e))
            continue
        manifests[split] = (manifest, root, rows)
    return manifests, errors


def match_rows(table: Dict[str, Transcript], manifests: Manifests, noun: str, hint: str,
               labelled: Optional[Sequence[str]] = None):
    """Match the keys of ``table`` to manifest rows (:func:`candidate_keys`) over all splits at once.

    Returns ``({(split, line): key}, {key: [(MANIFEST:LINE, audio file)]}, errors)``; rows of the ``labelled``
    splits only (None: all) get a key. Errors: a row matched by several keys, and a key naming two different
    audio files (a shared basename, or one relative path under two roots), which would give both the same
    label. ``noun`` names the keys in messages ("transcript key", "ID"); ``hint`` says how to fix the latter.
    """
    errors = []
    rows_of_key = defaultdict(list)
    key_of_row = {}
    for split, (manifest, root, rows) in manifests.items():
        for row in rows:
            where = f"{manifest}:{row.line_no}"
            keys = [k for k in candidate_keys(row.path) if k in table]
            for key in keys:
                rows_of_key[key].append((where, os.path.normpath(os.path.join(root, row.path))))
            if labelled is not None and split not in labelled:
                continue
            if len(keys) > 1:
                errors.append(f"{where}: {row.path} is matched by several {noun}s: "
                              + ", ".join(f"{k!r} ({table[k].where})" for k in keys))
            if keys:
                key_of_row[split, row.line_no] = keys[0]
    for key, places in rows_of_key.items():
        if len({audio for _, audio in places}) > 1:  # rows listing the same file may share its label
            errors.append(f"{table[key].where}: {noun} {key!r} matches {len(places)} manifest rows: "
                          f"{', '.join(where for where, _ in places)}; {hint}")
    return key_of_row, rows_of_key, errors


def build_labels(manifest_dir: str, table: Dict[str, Transcript], splits: List[str], train_split: str,
                 dictionary: Optional[List[str]]) -> Tuple[Dict[str, Tuple[List[str], List[str]]], Counter, List[str]]:
    """Return ({split: (word lines, letter lines)}, letter counts of the train split, errors)."""
    manifests, errors = read_manifests(manifest_dir, splits)
    key_of_row, _, match_errors = match_rows(
        table, manifests, noun="transcript key",
        hint="key these transcripts by the path relative to the manifest root (or label those splits separately "
             "with --splits)")
    errors += match_errors

    out, counts, labelled = {}, Counter(), []
    for split, (manifest, _, rows) in manifests.items():
        wrd, ltr = [], []
        for row in rows:
            key = key_of_row.get((split, row.line_no))
            text = table[key].text if key is not None else ""
            if not text:
                errors.append(f"{manifest}:{row.line_no}: no transcript for {row.path}")
                continue
            wrd.append(text)
            ltr.append(letters(text))
            labelled.append((f"{manifest}:{row.line_no}", row.path, ltr[-1]))
            if split == train_split:
                counts.update(ltr[-1].split())
        out[split] = (wrd, ltr)
    known = set(dictionary) if dictionary is not None else set(counts)
    for where, relpath, line in labelled:
        unknown = sorted(set(line.split()) - known)
        if unknown:
            errors.append(f"{where}: {relpath} has letters not in the dictionary: {' '.join(unknown)}")
    return out, counts, errors


def write_atomic(path: str, lines: Iterable[str]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest_dir", help="folder holding SPLIT.tsv manifests (labels are written here)")
    parser.add_argument("--transcripts", nargs="*", default=[],
                        help="transcript files: 'ID<TAB>TEXT' or 'ID TEXT' per line (ID = path relative to the "
                             "manifest root, with or without extension, or the file name without extension; "
                             "each ID once)")
    parser.add_argument("--librispeech", metavar="ROOT",
                        help="also read LibriSpeech-style *.trans.txt files found under ROOT")
    parser.add_argument("--splits", nargs="*",
                        help="splits to label (default: every *.tsv in manifest_dir but the transcript files)")
    parser.add_argument("--train-split", default="train", help="split whose letters make dict.ltr.txt")
    parser.add_argument("--dict", help="use this existing dict.ltr.txt instead of building one")
    args = parser.parse_args(argv)

    try:
        files = list(args.transcripts) + (librispeech_transcripts(args.librispeech) if args.librispeech else [])
        if not files:
            raise ValueError("no transcripts: pass --transcripts FILE and/or --librispeech ROOT")
        table, errors = read_transcripts(files)
        # A transcripts.tsv kept next to the manifests is not a split.
        transcripts = {Path(f).resolve() for f in files}
        splits = args.splits or sorted(p.stem for p in Path(args.manifest_dir).glob("*.tsv")
                                       if p.resolve() not in transcripts)
        if not splits:
            raise ValueError(f"{args.manifest_dir}: no *.tsv manifests found")
        dictionary = None
        if args.dict:
            with open(args.dict, encoding="utf-8") as f:
                dictionary = [line.split()[0] for line in f if line.strip()]
        elif args.train_split not in splits:
            raise ValueError(f"--train-split {args.train_split!r} is not among the splits {splits}; "
                             "pass --dict to reuse an existing dictionary")
        labels, counts, label_errors = build_labels(args.manifest_dir, table, splits, args.train_split, dictionary)
        errors += label_errors
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        print(f"error: {len(errors)} problem(s); nothing was written", file=sys.stderr)
        return 2

    for split, (wrd, ltr) in labels.items():
        write_atomic(os.path.join(args.manifest_dir, f"{split}.wrd"), wrd)
        write_atomic(os.path.join(args.manifest_dir, f"{split}.ltr"), ltr)
    if dictionary is None:
        write_atomic(os.path.join(args.manifest_dir, "dict.ltr.txt"),
                     (f"{sym} {n}" for sym, n in counts.most_common()))
    print(f"labelled {sum(len(w) for w, _ in labels.values())} rows in {len(labels)} split(s): {', '.join(labels)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
