"""Turn a folder of audio into fairseq's wav2vec-style manifests ``train.tsv`` / ``valid.tsv``.

The first line of a manifest is the absolute root folder, then one ``relative/path<TAB>num_frames``
line per file. Every file is checked first: unreadable or corrupt, empty, not at ``--sample-rate``, not
mono, or floating-point files holding a NaN/infinite sample (read in full; integer files cannot) are listed on stderr as ``error: PATH: REASON`` and nothing is written (exit status 2);
``--skip-bad`` leaves them out instead and reports how many. Both manifests are written to temporary
files and renamed into place only when both are complete, so existing manifests are never half-replaced.

    python -m manifests.audio_manifest /data/LibriSpeech/train-960 --dest manifests --ext flac --valid-percent 0.01
"""

import argparse
import os
import random
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

CHECK_FRAMES = 1024  # frames decoded at each end of a file to catch corrupt or truncated data cheaply


class ManifestInputError(Exception):
    """The input cannot be turned into manifests; the message says why."""


def check_audio(path: Path, sample_rate: int) -> Tuple[Optional[int], Optional[str]]:
    """``(num_frames, None)`` for a usable file, else ``(None, reason)``."""
    try:
        if path.stat().st_size == 0:
            return None, "empty file (0 bytes)"
        info = sf.info(str(path))
        if info.frames <= 0:
            return None, "no audio frames"
        # A valid header says nothing about the data: decode a little at both ends, which finds
        # garbage and most truncations without reading whole files.
        with sf.SoundFile(str(path)) as f:
            head = f.read(min(info.frames, CHECK_FRAMES))
            if info.frames > CHECK_FRAMES:
                f.seek(info.frames - CHECK_FRAMES)
                tail = f.read(CHECK_FRAMES)
            else:
                tail = head
        if len(head) == 0 or len(tail) == 0:
            return None, f"header promises {info.frames} frames but no audio could be decoded (truncated?)"
        bad = first_non_finite(path, info.subtype)
        if bad is not None:
            return None, f"sample {bad} is NaN or infinite (float audio): it would make training diverge"
    except Exception as e:  # libsndfile and the OS raise assorted types; any of them makes the file unusable
        return None, f"cannot decode audio: {e}"
    if info.samplerate != sample_rate:
        return None, f"sample rate {info.samplerate} Hz, expected {sample_rate} Hz (resample it first)"
    if info.channels != 1:
        return None, f"{info.channels} channels, expected mono"
    return info.frames, None


def find_audio(root: Path, exts: Sequence[str], must_contain: Optional[str] = None) -> List[Path]:
    """Files under ``root`` (recursively) with one of ``exts`` (case-insensitive), sorted.

    ``must_contain`` filters on the path relative to ``root``, so the root's own name never matches.
    """
    wanted = {"." + e.lower().lstrip(".") for e in exts}
    found = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs.sort()  # os.walk order depends on the file system; sort for reproducible output
        for name in names:
            path = Path(folder) / name
            if path.suffix.lower() in wanted and (not must_contain or must_contain in relpath(path, root)):
                found.append(path)
    return sorted(found)


def relpath(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def manifest_text(root: Path, rows: Sequence[Tuple[str, int]]) -> str:
    return "".join([f"{root}\n"] + [f"{rel}\t{frames}\n" for rel, frames in rows])


def write_atomically(files: Dict[Path, str]) -> None:
    """Write every file to ``NAME.tmp`` first, then rename all into place; on failure remove the temporaries."""
    tmps = {path: path.with_name(path.name + ".tmp") for path in files}
    try:
        for path, text in files.items():
            tmps[path].write_text(text, encoding="utf-8")
        for path in files:
            os.replace(tmps[path], path)
    finally:
        for tmp in tmps.values():
            if tmp.exists():
                tmp.unlink()


def first_non_finite(path: Path, subtype: str, block: int = 1 << 20) -> Optional[int]:
    """Index of the first NaN/inf sample of a floating-point file, else None.

    Only FLOAT/DOUBLE encodings can hold them (PCM and FLAC are integers), so only those files are read in
    full; for the usual 16-bit corpora this costs nothing.
    """
    if subtype not in ("FLOAT", "DOUBLE"):
        return None
    offset = 0
    for chunk in sf.blocks(str(path), blocksize=block, dtype="float64" if subtype == "DOUBLE" else "float32"):
        finite = np.isfinite(chunk)
        if not finite.all():
            return offset + int(np.argmin(finite.reshape(len(chunk), -1).all(axis=1)))
        offset += len(chunk)
    return None


def split_rows(rows: List[Tuple[str, int]], valid_percent: float,
               seed: int) -> Tuple[List[Tuple[str, int]], List[Tuple[str, int]]]:
    """(train, valid), each sorted; valid gets round(len(rows) * valid_percent) rows chosen by ``seed``,
    at least one when ``valid_percent > 0`` (a small folder would otherwise get an empty valid.tsv, on which
    fairseq's training fails later with a misleading "dataset is empty" message)."""
    shuffled = sorted(rows)  # sort first: the split must not depend on the order files were found in
    random.Random(seed).shuffle(shuffled)
    n_valid = int(round(len(shuffled) * valid_percent))
    if valid_percent > 0 and n_valid == 0:
        n_valid = 1
        print(f"note: --valid-percent {valid_percent} of {len(rows)} files rounds to 0; using 1 validation file",
              file=sys.stderr)
    if valid_percent > 0 and n_valid >= len(shuffled):
        raise ManifestInputError(f"--valid-percent {valid_percent} leaves no training files out of {len(rows)}; "
                                 "lower it or add files")
    return sorted(shuffled[n_valid:]), sorted(shuffled[:n_valid])


def build(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    if not root.is_dir():
        raise ManifestInputError(f"{args.root}: not a folder")
    exts = [e.strip().lower().lstrip(".") for e in args.ext.split(",") if e.strip()]
    if not exts:
        raise ManifestInputError(f"--ext {args.ext!r} names no extension")
    files = find_audio(root, exts, args.path_must_contain)
    if not files:
        where = f" whose path contains {args.path_must_contain!r}" if args.path_must_contain else ""
        raise ManifestInputError(f"no .{'/.'.join(exts)} files{where} under {root}")

    rows, problems = [], []
    for path in files:
        frames, reason = check_audio(path, args.sample_rate)
        if reason is not None:
            problems.append(f"{path}: {reason}")
        else:
            rows.append((relpath(path, root), frames))
    if problems and not args.skip_bad:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        raise ManifestInputError(f"{len(problems)} of {len(files)} files are unusable; nothing was written "
                                 "(fix or remove them, or pass --skip-bad to leave them out)")
    for line in problems:
        print(f"warning: skipping {line}", file=sys.stderr)
    if problems:
        print(f"skipped {len(problems)} of {len(files)} files", file=sys.stderr)
    if not rows:
        raise ManifestInputError("no usable audio files left; nothing was written")

    train, valid = split_rows(rows, args.valid_percent, args.seed)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    outputs = {dest / f"{args.train_name}.tsv": manifest_text(root, train)}
    # A differently named split written with --valid-percent 0 (e.g. a test set added to an existing
    # manifest folder) must not clobber that folder's valid.tsv with an empty one.
    if args.valid_percent > 0 or args.train_name == "train":
        outputs[dest / "valid.tsv"] = manifest_text(root, valid)
    write_atomically(outputs)
    seconds = sum(frames for _, frames in rows) / args.sample_rate
    print(", ".join(f"{len(rows_)} files in {path}" for path, rows_ in zip(outputs, (train, valid)))
          + f" ({seconds:.1f} s = {seconds / 3600:.2f} h of audio)")
    return 0


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("root", help="folder searched recursively for audio files; manifest paths are relative to it")
    p.add_argument("--dest", required=True, help="folder to write train.tsv and valid.tsv to (created if missing)")
    p.add_argument("--ext", default="flac,wav", help="comma-separated audio file extensions to include")
    p.add_argument("--valid-percent", type=float, default=0.01,
                   help="fraction (0-1) of the files that go to valid.tsv; "
                        "0 writes a valid.tsv with only the root line")
    p.add_argument("--seed", type=int, default=42, help="random seed of the train/valid split")
    p.add_argument("--sample-rate", type=int, default=16000, help="sample rate (Hz) every file must have")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out (and report) unusable files instead of failing without writing anything")
    p.add_argument("--path-must-contain", metavar="STR",
                   help="only include files whose path relative to ROOT contains STR")
    p.add_argument("--train-name", default="train", metavar="NAME",
                   help="write the non-valid split to NAME.tsv; with --valid-percent 0 and a NAME other than "
                        "'train' no valid.tsv is written (e.g. --train-name test to add a test split)")
    args = p.parse_args(argv)
    if args.train_name == "valid" and args.valid_percent > 0:
        p.error("--train-name valid needs --valid-percent 0")
    if not args.train_name or os.sep in args.train_name or "/" in args.train_name:
        p.error(f"--train-name must be a plain file name stem, got {args.train_name!r}")
    if not 0.0 <= args.valid_percent <= 1.0:
        p.error(f"--valid-percent must be between 0 and 1, got {args.valid_percent}")
    if args.sample_rate <= 0:
        p.error(f"--sample-rate must be positive, got {args.sample_rate}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return build(args)
    except (ManifestInputError, OSError) as e:  # OSError: e.g. --dest not writable; a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
