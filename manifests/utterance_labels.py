"""Write per-utterance class labels (speaker, accent, sound event) next to wav2vec-style manifests.

For every ``SPLIT.tsv`` in the manifest folder: ``SPLIT.lbl``, one line per manifest row in row order holding
that row's label (``--multi-label``: its labels, separated by spaces), and, from the training split,
``dict.lbl.txt`` (each label with its count, most frequent first; fairseq's ``Dictionary`` format, which the
``utterance_classification`` task reads with ``task.labels=lbl``: class ``i`` is line ``i`` of the file).

Labels come from one of:

- ``--labels FILE...``: ``ID<TAB>LABEL`` (or ``ID LABEL``) per line, an ID naming a manifest row as
  ``manifests.labels`` does: the path relative to the manifest root (``spk1/001.wav``), without extension
  (``spk1/001``) or the file name without extension (``001``). With ``--multi-label`` LABEL lists several
  labels separated by ``--separator`` (default ``,``; AudioSet style ``/m/09x0r,/m/05zppz``);
- ``--from-folder``: the first folder of each row's relative path (``dog/001.wav`` -> ``dog``), the layout of
  speaker- or class-per-folder corpora.

Every problem is an error naming the file and line, and nothing is written then (exit status 2): an ID that
names no manifest row (of any ``*.tsv`` in the folder), an ID given twice, an ID matching rows of different
audio files or a row matched by two IDs, a row without a label (the counts of labels and rows differ), an
empty label (also an empty item such as ``dog,,cat``), a label with whitespace (``.lbl`` files separate labels
by spaces) or named like fairseq's special symbols, a label given twice in one row, several labels without
``--multi-label``, and a label of another split that the training split never has. Each file is written to a
temporary name and renamed.

    python -m manifests.utterance_labels MANIFEST_DIR --labels speakers.tsv
    python -m manifests.utterance_labels MANIFEST_DIR --from-folder
    python -m manifests.utterance_labels MANIFEST_DIR --labels audioset.tsv --multi-label
"""

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from manifests.labels import Manifests, Transcript, match_rows, read_manifests, read_transcripts, write_atomic

SPECIAL_SYMBOLS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq's Dictionary adds these before the labels


class RowLabels(NamedTuple):
    where: str  # MANIFEST:LINE
    labels: Tuple[str, ...]


def parse_labels(text: str, where: str, multi_label: bool, separator: str) -> Tuple[Tuple[str, ...], List[str]]:
    """``("dog", "cat")`` from ``"dog,cat"`` and the errors found (each naming ``where``)."""
    items = [item.strip() for item in text.split(separator)] if separator else [text.strip()]
    errors = []
    if not text.strip():
        return (), [f"{where}: empty label"]
    if any(not item for item in items):
        errors.append(f"{where}: empty label in {text!r} (separator {separator!r})")
    for item in items:
        if item and len(item.split()) > 1:
            errors.append(f"{where}: label {item!r} contains whitespace (label files separate labels by spaces; "
                          f"write it e.g. as {'_'.join(item.split())!r})")
        if item in SPECIAL_SYMBOLS:
            errors.append(f"{where}: label {item!r} is one of fairseq's special symbols {' '.join(SPECIAL_SYMBOLS)}")
    repeated = sorted(k for k, n in Counter(i for i in items if i).items() if n > 1)
    if repeated:
        errors.append(f"{where}: label(s) given twice: {', '.join(repeated)}")
    labels = tuple(i for i in items if i)
    if not multi_label and len(labels) > 1:
        errors.append(f"{where}: {len(labels)} labels {list(labels)} but --multi-label is not set")
    return labels, errors


def match_ids(table: Dict[str, Transcript], manifests: Manifests,
              labelled: Sequence[str]) -> Tuple[Dict[Tuple[str, int], str], List[str]]:
    """``({(split, line): ID}, errors)`` for the rows of the ``labelled`` splits, by the matching rules of
    ``manifests.labels`` (:func:`manifests.labels.match_rows`); ``manifests`` holds every split of the folder,
    so an ID naming a row of an unlabelled split is not unknown, but an ID naming no row at all is an error."""
    id_of_row, rows_of_id, errors = match_rows(table, manifests, noun="ID", labelled=labelled,
                                               hint="use the path relative to the manifest root")
    for key, entry in table.items():
        if not rows_of_id.get(key):
            errors.append(f"{entry.where}: ID {key!r} names no row of the manifests "
                          f"({', '.join(m for m, _, _ in manifests.values())})")
    return id_of_row, errors


def labels_from_ids(table: Dict[str, Transcript], manifests: Manifests, labelled: Sequence[str], multi_label: bool,
                    separator: str) -> Tuple[Dict[str, List[RowLabels]], List[str]]:
    """``({split: [RowLabels per row]}, errors)`` from an ``ID<TAB>LABEL`` table."""
    id_of_row, errors = match_ids(table, manifests, labelled)
    out = {}
    for split in labelled:
        manifest, _, rows = manifests[split]
        out[split] = []
        missing = [row for row in rows if (split, row.line_no) not in id_of_row]
        for row in missing[:20]:
            errors.append(f"{manifest}:{row.line_no}: no label for {row.path}")
        if len(missing) > 20:
            errors.append(f"{manifest}: {len(missing) - 20} more rows without a label")
        if missing:
            errors.append(f"{manifest}: {len(rows) - len(missing)} labels for {len(rows)} rows")
        for row in rows:
            key = id_of_row.get((split, row.line_no))
            if key is not None:
                labels, problems = parse_labels(table[key].text, table[key].where, multi_label, separator)
                errors += problems
                out[split].append(RowLabels(f"{manifest}:{row.line_no}", labels))
    return out, errors


def labels_from_folders(manifests: Manifests, labelled: Sequence[str]) -> Tuple[Dict[str, List[RowLabels]], List[str]]:
    """``({split: [RowLabels per row]}, errors)``: each row's first folder (relative to the manifest root)."""
    out, errors = {}, []
    for split in labelled:
        manifest, _, rows = manifests[split]
        out[split] = []
        for row in rows:
            where = f"{manifest}:{row.line_no}"
            parts = Path(row.path).parts
            if len(parts) < 2:
                errors.append(f"{where}: {row.path} is in no folder (--from-folder labels a row by its first folder)")
                continue
            labels, problems = parse_labels(parts[0], where, False, "")
            errors += problems
            out[split].append(RowLabels(where, labels))
    return out, errors


def check_known(rows_of_split: Dict[str, List[RowLabels]], known: Sequence[str], source: str) -> List[str]:
    """A label outside ``known`` (the training split's labels, or a given dictionary) is an error."""
    known = set(known)
    errors = []
    for rows in rows_of_split.values():
        for row in rows:
            unknown = sorted(set(row.labels) - known)
            if unknown:
                errors.append(f"{row.where}: label(s) not in {source}: {', '.join(unknown)}")
    return errors


def read_dictionary(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [line.split()[0] for line in f if line.strip()]


def build(manifest_dir: str, label_files: Sequence[str], from_folder: bool, splits: Optional[Sequence[str]],
          train_split: str, dictionary: Optional[str], multi_label: bool,
          separator: str) -> Tuple[Dict[str, List[RowLabels]], Optional[Counter], List[str]]:
    """Everything the script writes, checked: ``({split: rows}, train label counts or None with
    ``dictionary``, errors)``. Raises ``ValueError`` for wrong arguments."""
    if bool(label_files) == bool(from_folder):
        raise ValueError("give either --labels FILE... or --from-folder")
    every = sorted(p.stem for p in Path(manifest_dir).glob("*.tsv")
                   if p.resolve() not in {Path(f).resolve() for f in label_files})
    if not every:
        raise ValueError(f"{manifest_dir}: no *.tsv manifests found")
    labelled = list(splits or every)
    absent = [s for s in labelled if s not in every]
    if absent:
        raise ValueError(f"--splits: no {', '.join(f'{s}.tsv' for s in absent)} in {manifest_dir}")
    if dictionary is None and train_split not in labelled:
        raise ValueError(f"--train-split {train_split!r} is not among the splits {labelled}; pass --dict to "
                         "reuse an existing dictionary")
    manifests, errors = read_manifests(manifest_dir, every)
    labelled = [s for s in labelled if s in manifests]
    if from_folder:
        rows, more = labels_from_folders(manifests, labelled)
    else:
        table, errors_ids = read_transcripts(label_files)
        errors += errors_ids
        rows, more = labels_from_ids(table, manifests, labelled, multi_label, separator)
    errors += more
    if dictionary is not None:
        return rows, None, errors + check_known(rows, read_dictionary(dictionary), dictionary)
    counts = Counter(label for row in rows.get(train_split, []) for label in row.labels)
    return rows, counts, errors + check_known(rows, list(counts), f"the {train_split!r} split")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest_dir", help="folder holding SPLIT.tsv manifests (label files are written here)")
    parser.add_argument("--labels", nargs="*", default=[], metavar="FILE",
                        help="'ID<TAB>LABEL' (or 'ID LABEL') files; ID as in manifests.labels, each ID once")
    parser.add_argument("--from-folder", action="store_true",
                        help="label each row by the first folder of its path relative to the manifest root")
    parser.add_argument("--multi-label", action="store_true",
                        help="a row may have several labels, separated by --separator (AudioSet style)")
    parser.add_argument("--separator", default=",", help="separates the labels of a row with --multi-label")
    parser.add_argument("--splits", nargs="*", help="splits to label (default: every *.tsv in manifest_dir)")
    parser.add_argument("--train-split", default="train", help="split whose labels make the dictionary")
    parser.add_argument("--dict", help="use this existing label dictionary instead of writing one")
    parser.add_argument("--ext", default="lbl", help="label file extension: SPLIT.EXT and dict.EXT.txt (task.labels)")
    args = parser.parse_args(argv)
    try:
        rows, counts, errors = build(args.manifest_dir, args.labels, args.from_folder, args.splits,
                                     args.train_split, args.dict, args.multi_label, args.separator)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        print(f"error: {len(errors)} problem(s); nothing was written", file=sys.stderr)
        return 2
    for split, labelled in rows.items():
        write_atomic(os.path.join(args.manifest_dir, f"{split}.{args.ext}"), (" ".join(r.labels) for r in labelled))
    if counts is not None:
        write_atomic(os.path.join(args.manifest_dir, f"dict.{args.ext}.txt"),
                     (f"{label} {n}" for label, n in counts.most_common()))
    classes = len(counts) if counts is not None else len(read_dictionary(args.dict))
    print(f"labelled {sum(map(len, rows.values()))} rows in {len(rows)} split(s) ({', '.join(rows)}) "
          f"with {classes} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
