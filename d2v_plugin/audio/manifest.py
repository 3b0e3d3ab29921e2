"""The one reader of wav2vec-style audio manifests (``SPLIT.tsv``), used by every part of the plugin.

Format (written by ``python -m manifests.audio_manifest``): the first line is the root folder; every
further line is ``relative/path<TAB>num_frames``. A final newline ends the last row.

Every problem is a :class:`~d2v_plugin.core.errors.ManifestError` whose message starts with
``MANIFEST:LINE:`` (1-based lines of the file): a missing root line, an empty line, a row without
exactly two tab-separated fields, an empty path, a frame count that is not a positive integer, and,
with ``check_files``, a missing root folder or audio file. The training task, the label script and
the CTC task all read manifests here, so a row means the same thing everywhere.
"""

import os
from typing import List, NamedTuple, Tuple

from d2v_plugin.core.errors import ManifestError


class ManifestRow(NamedTuple):
    line_no: int  # 1-based line of the manifest file (the root is line 1)
    path: str  # relative to the root line
    frames: int


def read_manifest(manifest: str, check_files: bool = False) -> Tuple[str, List[ManifestRow]]:
    """Read and validate ``manifest``: ``(root, [ManifestRow, ...])`` in file order."""
    if not os.path.isfile(manifest):
        raise ManifestError(f"{manifest}: manifest not found")
    with open(manifest, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start an empty one
    if not lines or not lines[0].strip():
        raise ManifestError(f"{manifest}:1: missing root folder line")
    root = lines[0].strip()
    if check_files and not os.path.isdir(root):
        raise ManifestError(f"{manifest}:1: root directory {root!r} does not exist")
    rows: List[ManifestRow] = []
    for line_no, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            raise ManifestError(f"{manifest}:{line_no}: empty line")
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0]:
            raise ManifestError(f"{manifest}:{line_no}: expected 'path<TAB>frames', got {line!r}")
        rel, frames_text = fields
        try:
            frames = int(frames_text)
        except ValueError:
            raise ManifestError(f"{manifest}:{line_no}: frame count {frames_text!r} is not an integer") from None
        if frames <= 0:
            raise ManifestError(f"{manifest}:{line_no}: frame count {frames} is not positive")
        if check_files and not os.path.isfile(os.path.join(root, rel)):
            raise ManifestError(f"{manifest}:{line_no}: audio file not found: {os.path.join(root, rel)}")
        rows.append(ManifestRow(line_no, rel, frames))
    return root, rows
