"""Write fairseq's CTC fine-tuning labels next to wav2vec-style manifests.

For every ``SPLIT.tsv`` in the manifest folder: ``SPLIT.wrd`` (the words of each row),
``SPLIT.ltr`` (letters separated by spaces, each word followed by ``|``) and, from the training split,
``dict.ltr.txt`` (letters with their counts; fairseq adds the special symbols itself).

Transcripts come from ``--transcripts`` files (``KEY<TAB>TEXT`` or ``KEY TEXT`` per line, KEY being an
utterance id = file name without extension, or the path relative to the manifest root) and/or from
LibriSpeech-style ``*.trans.txt`` files found under the audio root (``--librispeech``).

A row without a transcript, or whose text uses letters the dictionary lacks, is an error naming the
manifest line and the utterance; nothing is written then.

    python -m manifests.labels MANIFEST_DIR --transcripts transcripts.tsv
"""

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

WORD_SEP = "|"


def letters(text: str) -> str:
    """``"HI YOU"`` -> ``"H I | Y O U |"`` (fairseq's letter target format)."""
    return " ".join(" ".join(word) + " " + WORD_SEP for word in text.split())


def read_transcripts(paths: Iterable[str]) -> Dict[str, str]:
    table: Dict[str, str] = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                key, sep, text = line.partition("\t") if "\t" in line else line.partition(" ")
                if not sep:
                    raise ValueError(f"{path}:{line_no}: expected 'ID<TAB>TEXT' or 'ID TEXT', got {line!r}")
                table[key.strip()] = " ".join(text.split())
    return table


def librispeech_transcripts(root: str) -> List[str]:
    return sorted(str(p) for p in Path(root).rglob("*.trans.txt"))


def read_manifest_rows(manifest: str) -> Tuple[str, List[Tuple[int, str]]]:
    with open(manifest, encoding="utf-8") as f:
        root = f.readline().strip()
        rows = []
        for line_no, line in enumerate(f, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2 or not fields[0]:
                raise ValueError(f"{manifest}:{line_no}: expected 'path<TAB>frames', got {line.strip()!r}")
            rows.append((line_no, fields[0]))
    return root, rows


def lookup(table: Dict[str, str], relpath: str) -> Optional[str]:
    stem = os.path.splitext(relpath)[0]
    for key in (relpath, stem, os.path.basename(stem)):
        if key in table:
            return table[key]
    return None


def build_labels(manifest_dir: str, table: Dict[str, str], splits: List[str], train_split: str,
                 dictionary: Optional[List[str]]) -> Tuple[Dict[str, Tuple[List[str], List[str]]], Counter, List[str]]:
    """Return ({split: (word lines, letter lines)}, letter counts of the train split, errors)."""
    out, errors, counts = {}, [], Counter()
    for split in splits:
        manifest = os.path.join(manifest_dir, f"{split}.tsv")
        _, rows = read_manifest_rows(manifest)
        wrd, ltr = [], []
        for line_no, relpath in rows:
            text = lookup(table, relpath)
            if text is None or not text:
                errors.append(f"{manifest}:{line_no}: no transcript for {relpath}")
                continue
            wrd.append(text)
            ltr.append(letters(text))
            if split == train_split:
                counts.update(ltr[-1].split())
        out[split] = (wrd, ltr)
    known = set(dictionary) if dictionary is not None else set(counts)
    for split in splits:
        manifest = os.path.join(manifest_dir, f"{split}.tsv")
        _, rows = read_manifest_rows(manifest)
        labelled = [(n, p) for n, p in rows if lookup(table, p)]  # rows without text were reported
        for (line_no, relpath), line in zip(labelled, out[split][1]):
            unknown = sorted(set(line.split()) - known)
            if unknown:
                errors.append(f"{manifest}:{line_no}: {relpath} has letters not in the dictionary: {' '.join(unknown)}")
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
                        help="transcript files: 'ID<TAB>TEXT' or 'ID TEXT' per line (ID = file stem or relative path)")
    parser.add_argument("--librispeech", metavar="ROOT",
                        help="also read LibriSpeech-style *.trans.txt files found under ROOT")
    parser.add_argument("--splits", nargs="*", help="splits to label (default: every *.tsv in manifest_dir)")
    parser.add_argument("--train-split", default="train", help="split whose letters make dict.ltr.txt")
    parser.add_argument("--dict", help="use this existing dict.ltr.txt instead of building one")
    args = parser.parse_args(argv)

    try:
        files = list(args.transcripts) + (librispeech_transcripts(args.librispeech) if args.librispeech else [])
        if not files:
            raise ValueError("no transcripts: pass --transcripts FILE and/or --librispeech ROOT")
        table = read_transcripts(files)
        splits = args.splits or sorted(p.stem for p in Path(args.manifest_dir).glob("*.tsv"))
        if not splits:
            raise ValueError(f"{args.manifest_dir}: no *.tsv manifests found")
        dictionary = None
        if args.dict:
            with open(args.dict, encoding="utf-8") as f:
                dictionary = [line.split()[0] for line in f if line.strip()]
        elif args.train_split not in splits:
            raise ValueError(f"--train-split {args.train_split!r} is not among the splits {splits}; "
                             "pass --dict to reuse an existing dictionary")
        labels, counts, errors = build_labels(args.manifest_dir, table, splits, args.train_split, dictionary)
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
