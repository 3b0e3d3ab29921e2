"""Write image manifests (``train.tsv``, ``valid.tsv``, ``labels.txt``) for d2v_plugin's image tasks.

    python -m manifests.image_manifest ROOT --dest DIR [--valid-percent 0.01] [--seed 42]

ROOT is searched recursively for images. When every image lies in a sub-folder of ROOT and there are
at least two such folders (ImageNet's ``ROOT/CLASS/*.JPEG`` layout), each top-level folder is a class:
manifest rows are ``relative/path<TAB>class`` and ``labels.txt`` lists the classes, one per line (the
line order is the label index). Otherwise rows are paths only (pre-training). ``--labels`` forces
either reading. The first manifest line is ROOT's absolute path. The valid split is drawn per class.

Every image is decoded once: an empty or undecodable file (a truncated JPEG, a text file named .png)
is reported with its path, and nothing is written (exit status 2) unless ``--skip-bad`` leaves such
files out. Files are written to temporaries and renamed into place only when all are complete.
"""

import argparse
import os
import random
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image

from d2v_plugin.image.transforms import to_rgb

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LABELS_FILE = "labels.txt"  # the name d2v_plugin.image.dataset reads


class ManifestInputError(Exception):
    """The input folder cannot be turned into manifests; the message says why."""


def find_images(root: str, extensions: Sequence[str]) -> List[str]:
    """Paths (relative to ``root``, '/'-separated, sorted) of files with an image extension."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(tuple(extensions)):
                found.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    return found


def check_image(path: str) -> Optional[str]:
    """Why ``path`` is not a usable image, or None. Decodes the whole image (finds truncation)."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as img:
            img.load()
            if img.width == 0 or img.height == 0:
                return "image has zero width or height"
            to_rgb(img)  # what training does with it: refuses float images, scales 16-bit grey
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        return f"cannot decode: {type(e).__name__}: {e}"
    return None


def class_names(paths: Sequence[str], mode: str) -> Optional[List[Optional[str]]]:
    """Each path's class (its top-level folder), or None for unlabelled data."""
    top = [p.split("/", 1)[0] if "/" in p else None for p in paths]
    folders = {t for t in top if t is not None}
    if mode == "none" or (mode == "auto" and (None in top or len(folders) < 2)):
        return None
    loose = [p for p, t in zip(paths, top) if t is None]
    if loose:
        raise ManifestInputError(f"--labels folders: {len(loose)} image(s) are not in a class folder, "
                                 f"e.g. {loose[0]}")
    return top


def split_rows(rows: List[Tuple[str, Optional[str]]], valid_fraction: float, seed: int):
    """Random train/valid split of ``(path, class)`` rows, drawn per class; both parts sorted."""
    groups: Dict[Optional[str], List[Tuple[str, Optional[str]]]] = {}
    for row in rows:
        groups.setdefault(row[1], []).append(row)
    rng = random.Random(seed)
    train, valid = [], []
    for key in sorted(groups, key=str):
        group = groups[key][:]
        rng.shuffle(group)
        n_valid = int(round(len(group) * valid_fraction))
        valid += group[:n_valid]
        train += group[n_valid:]
    return sorted(train), sorted(valid)


def manifest_text(root: str, rows: List[Tuple[str, Optional[str]]]) -> str:
    lines = [root] + [p if c is None else f"{p}\t{c}" for p, c in rows]
    return "\n".join(lines) + "\n"


def write_atomically(files: Dict[str, str]) -> None:
    """Write every file to a temporary next to it, then rename them all into place."""
    temps = []
    try:
        for path, text in files.items():
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".part")
            temps.append((tmp, path))
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.remove(tmp)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m manifests.image_manifest",
        description="Write train/valid image manifests (and labels.txt for class folders) for d2v_plugin.",
    )
    p.add_argument("root", metavar="ROOT", help="folder of images, optionally one sub-folder per class")
    p.add_argument("--dest", required=True, help="folder to write the manifests to (created if missing)")
    p.add_argument("--valid-percent", type=float, default=0.01,
                   help="fraction (0..1) of the images, per class, put in the valid split (default 0.01)")
    p.add_argument("--seed", type=int, default=42, help="random seed of the train/valid split (default 42)")
    p.add_argument("--ext", default=",".join(e[1:] for e in IMAGE_EXTENSIONS),
                   help="comma-separated image file extensions, case-insensitive (default: %(default)s)")
    p.add_argument("--labels", choices=("auto", "folders", "none"), default="auto",
                   help="classes from top-level folders ('folders'), none, or 'auto': folders when every "
                        "image is in one of at least two top-level folders (default auto)")
    p.add_argument("--train-name", default="train", help="name of the train split file (default train)")
    p.add_argument("--valid-name", default="valid", help="name of the valid split file (default valid)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out empty/undecodable images (listed on stderr) instead of failing")
    p.add_argument("--workers", type=int, default=1, help="processes decoding images (default 1)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        return run(args)
    except ManifestInputError as e:
        print(f"image_manifest: error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.valid_percent <= 1:
        raise ManifestInputError(f"--valid-percent must be a fraction in [0, 1], got {args.valid_percent}")
    root = os.path.realpath(args.root)
    if not os.path.isdir(root):
        raise ManifestInputError(f"{args.root}: not a directory")
    extensions = ["." + e.strip().lower().lstrip(".") for e in args.ext.split(",") if e.strip()]
    paths = find_images(root, extensions)
    if not paths:
        raise ManifestInputError(f"{root}: no files with extensions {', '.join(extensions)}")
    for p in paths:
        if "\t" in p or "\n" in p:
            raise ManifestInputError(f"{os.path.join(root, p)}: tabs and newlines cannot appear in manifest paths")

    full = [os.path.join(root, p) for p in paths]
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            problems = list(pool.map(check_image, full, chunksize=64))
    else:
        problems = [check_image(p) for p in full]
    bad = [(f, why) for f, why in zip(full, problems) if why is not None]
    for f, why in bad:
        print(f"{'skipping ' if args.skip_bad else ''}{f}: {why}", file=sys.stderr)
    if bad and not args.skip_bad:
        raise ManifestInputError(f"{len(bad)} unreadable image(s) under {root}; nothing written "
                                 "(fix or remove them, or pass --skip-bad to leave them out)")
    paths = [p for p, why in zip(paths, problems) if why is None]
    if not paths:
        raise ManifestInputError(f"{root}: no readable images")

    classes = class_names(paths, args.labels)
    rows = list(zip(paths, classes if classes is not None else [None] * len(paths)))
    train, valid = split_rows(rows, args.valid_percent, args.seed)
    if not train:
        raise ManifestInputError(f"the {args.train_name} split would be empty: lower --valid-percent")

    os.makedirs(args.dest, exist_ok=True)
    files = {os.path.join(args.dest, f"{args.train_name}.tsv"): manifest_text(root, train)}
    if valid:
        files[os.path.join(args.dest, f"{args.valid_name}.tsv")] = manifest_text(root, valid)
    if classes is not None:
        labels_path = os.path.join(args.dest, LABELS_FILE)
        names = sorted(set(classes))
        if os.path.exists(labels_path):  # a second split of the same data set: keep its class order
            with open(labels_path, encoding="utf-8") as f:
                existing = [line.rstrip("\n") for line in f if line.strip()]
            unknown = sorted(set(names) - set(existing))
            if unknown:
                raise ManifestInputError(f"{labels_path} exists and lacks class(es) {', '.join(unknown[:5])}; "
                                         "use another --dest")
        else:
            files[labels_path] = "\n".join(names) + "\n"
    write_atomically(files)

    summary = [f"{args.train_name}.tsv: {len(train)} images"]
    if valid:
        summary.append(f"{args.valid_name}.tsv: {len(valid)} images")
    if classes is not None:
        summary.append(f"{len(set(classes))} classes")
    if bad:
        summary.append(f"skipped {len(bad)} unreadable image(s)")
    print(f"{args.dest}: " + ", ".join(summary))
    stale = os.path.join(args.dest, f"{args.valid_name}.tsv")
    if not valid and os.path.exists(stale):
        print(f"note: {stale} (not written by this run) was left as it is", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
