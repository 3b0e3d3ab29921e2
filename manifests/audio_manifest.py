"""Turn a folder of audio into fairseq's wav2vec-style manifests ``train.tsv`` / ``valid.tsv``.

The first line of a manifest is the absolute root folder, then one ``relative/path<TAB>num_frames`` line
per file. Every file is checked first: unreadable or corrupt, empty, not at ``--sample-rate``, or not
mono files are listed with their path and the reason, and nothing is written (``--skip-bad`` skips
them instead and reports how many). Existing manifests are only replaced once everything succeeded.

    python -m manifests.audio_manifest /data/LibriSpeech/train-960 --dest manifests --ext flac --valid-percent 0.01
"""

import argparse
import os
import random
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import soundfile as sf


def check_audio(path: Path, sample_rate: int) -> Tuple[Optional[int], Optional[str]]:
    """(frames, None) for a usable file, else (None, reason)."""
    if path.stat().st_size == 0:
        return None, "empty file (0 bytes)"
    try:
        info = sf.info(str(path))
        with sf.SoundFile(str(path)) as f:  # decode a little: catches files with a valid header only
            f.read(min(info.frames, 1024))
            if info.frames > 1024:
                f.seek(info.frames - 1024)
                f.read(1024)
    except Exception as e:  # soundfile raises several types for undecodable data
        return None, f"cannot decode audio ({e})"
    if info.frames == 0:
        return None, "no audio frames"
    if info.samplerate != sample_rate:
        return None, f"sample rate {info.samplerate} Hz, expected {sample_rate} Hz (resample it first)"
    if info.channels != 1:
        return None, f"{info.channels} channels, expected mono"
    return info.frames, None


def find_audio(root: Path, exts: List[str], must_contain: Optional[str]) -> List[Path]:
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in exts]
    if must_contain:
        files = [p for p in files if must_contain in str(p)]
    return sorted(files)


def write_manifest(path: Path, root: Path, rows: List[Tuple[str, int]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{root}\n")
        for rel, frames in rows:
            f.write(f"{rel}\t{frames}\n")
    os.replace(tmp, path)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="folder searched recursively for audio files")
    p.add_argument("--dest", required=True, help="folder to write train.tsv and valid.tsv to")
    p.add_argument("--ext", default="flac,wav", help="comma-separated audio extensions to include")
    p.add_argument("--valid-percent", type=float, default=0.01,
                   help="fraction (0-1) of files that go to valid.tsv; 0 writes a valid.tsv with no rows")
    p.add_argument("--seed", type=int, default=42, help="seed of the train/valid split")
    p.add_argument("--sample-rate", type=int, default=16000, help="required sample rate in Hz")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) unusable files instead of failing")
    p.add_argument("--path-must-contain", help="only include files whose path contains this string")
    p.add_argument("--train-name", default="train", help="name of the training manifest (NAME.tsv)")
    args = p.parse_args(argv)

    root = Path(args.root).resolve()
    if not root.is_dir():
        print(f"error: {root}: not a folder", file=sys.stderr)
        return 2
    if not 0 <= args.valid_percent <= 1:
        print(f"error: --valid-percent {args.valid_percent} must be between 0 and 1", file=sys.stderr)
        return 2
    exts = [e.strip().lower().lstrip(".") for e in args.ext.split(",") if e.strip()]
    files = find_audio(root, exts, args.path_must_contain)
    if not files:
        print(f"error: no .{'/.'.join(exts)} files under {root}", file=sys.stderr)
        return 2

    rows, problems = [], []
    for path in files:
        frames, reason = check_audio(path, args.sample_rate)
        if reason:
            problems.append(f"{path}: {reason}")
        else:
            rows.append((str(path.relative_to(root)), frames))
    if problems and not args.skip_bad:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        print(f"error: {len(problems)} of {len(files)} files are unusable; nothing was written "
              "(fix them, or pass --skip-bad to leave them out)", file=sys.stderr)
        return 2
    for line in problems:
        print(f"warning: skipped {line}", file=sys.stderr)
    if problems:
        print(f"skipped {len(problems)} of {len(files)} files", file=sys.stderr)

    random.Random(args.seed).shuffle(rows)
    n_valid = int(round(len(rows) * args.valid_percent))
    valid, train = sorted(rows[:n_valid]), sorted(rows[n_valid:])
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    write_manifest(dest / f"{args.train_name}.tsv", root, train)
    if args.valid_percent > 0 or not (dest / "valid.tsv").exists():
        write_manifest(dest / "valid.tsv", root, valid)
    wrote_valid = f", {len(valid)} in {dest / 'valid.tsv'}" if args.valid_percent > 0 else ""
    print(f"{len(train)} files in {dest / (args.train_name + '.tsv')}{wrote_valid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
