"""Inputs of ``d2v-extract`` / ``d2v-transcribe``: which files (or lines), and each one read as the tasks read it.

* audio: a folder (every ``.wav``/``.flac`` below it), a manifest ``.tsv`` (``manifests.audio_manifest``,
  read by :func:`d2v_plugin.audio.manifest.read_manifest`), or audio files. Read as fairseq's
  ``RawAudioDataset`` does: ``soundfile`` float32, channels averaged, the task's sample rate required,
  ``F.layer_norm`` over the whole waveform when the task has ``normalize``;
* image: a folder (every image below it) or a manifest ``.tsv`` (``manifests.image_manifest``, read by
  :func:`d2v_plugin.image.dataset.read_image_manifest`). Read as the image tasks' evaluation split
  (:class:`~d2v_plugin.image.transforms.EvalTransform` with the task's size, crop ratio, mean and std);
* text: a ``.txt`` file, one input per line. Encoded as ``manifests.text_manifest`` + ``fairseq-preprocess``
  do (trailing whitespace stripped, SentencePiece pieces, ``dict.txt`` ids, ``</s>``), with the token the
  task puts in front (``masked_lm``: ``<s>``; ``sentence_prediction``: its ``init_token``).

A bad input (unreadable, empty, NaN samples, another sample rate, an empty or too long line) raises
:class:`InputError` naming the file (and line); nothing is skipped.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

AUDIO_EXTENSIONS = (".wav", ".flac")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class InputError(ValueError):
    """An input that cannot be used; the message starts with its file (``FILE:LINE:`` for text lines)."""


@dataclass(frozen=True)
class Item:
    """One input: ``path`` to read (text: the ``.txt``, with ``line``, 1-based), ``name`` as errors and the
    index name it, ``output`` its ``.npy`` path relative to the output folder."""

    path: str
    name: str
    output: str
    line: Optional[int] = None


# -- which inputs -------------------------------------------------------------------------------------------
def list_inputs(modality: str, source: str) -> List[Item]:
    """Every input of ``source`` (a folder, a manifest ``.tsv``, a ``.txt`` for text), in a stable order."""
    if not os.path.exists(source):
        raise InputError(f"{source}: no such file or folder")
    if modality == "text":
        return text_items(source)
    extensions = AUDIO_EXTENSIONS if modality == "audio" else IMAGE_EXTENSIONS
    if os.path.isdir(source):
        files = sorted(p for p in Path(source).rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        if not files:
            raise InputError(f"{source}: no {'/'.join(extensions)} files in this folder")
        return [Item(str(p), str(p), output_name(p.relative_to(source))) for p in files]
    if source.endswith(".tsv"):
        root, rows = manifest_rows(modality, source)
        if not rows:
            raise InputError(f"{source}: the manifest lists no files")
        return [Item(os.path.join(root, rel), os.path.join(root, rel), output_name(rel)) for rel in rows]
    if source.lower().endswith(extensions):
        return [Item(source, source, output_name(os.path.basename(source)))]
    raise InputError(f"{source}: expected a folder, a manifest .tsv or a {'/'.join(extensions)} file")


def output_name(relative) -> str:
    """The ``.npy`` beside where the input sits relative to its folder or manifest root (never outside it)."""
    path = Path(relative)
    if path.is_absolute() or ".." in path.parts:
        raise InputError(f"{relative}: a manifest path outside its root would be written outside the output folder")
    return path.with_suffix(".npy").as_posix()


def manifest_rows(modality: str, manifest: str):
    """``(root, [relative path, ...])`` of an audio or image manifest, every file checked to exist."""
    if modality == "audio":
        from d2v_plugin.audio.manifest import read_manifest

        root, rows = read_manifest(manifest, check_files=True)
    else:
        from d2v_plugin.image.dataset import read_image_manifest

        root, rows = read_image_manifest(manifest, check_files=True)
    return root, [row.path for row in rows]


def text_items(source: str) -> List[Item]:
    if not os.path.isfile(source):
        raise InputError(f"{source}: text input is a .txt file with one input per line")
    with open(source, "rb") as f:
        count = sum(1 for _ in f)
    if count == 0:
        raise InputError(f"{source}: empty file")
    stem = Path(source).stem
    return [Item(source, f"{source}:{n}", f"{stem}/{n:06d}.npy", n) for n in range(1, count + 1)]


def check_unique_outputs(items: Sequence[Item]) -> None:
    """Two inputs must not write the same file (``a.wav`` and ``a.flac``)."""
    seen = {}
    for item in items:
        if item.output in seen:
            raise InputError(f"{item.name} and {seen[item.output]} would both be written to {item.output}")
        seen[item.output] = item.name


# -- audio ----------------------------------------------------------------------------------------------------
def read_audio(path: str, sample_rate: int, normalize: bool, min_samples: int = 1) -> Tensor:
    """``(S,)`` float32 waveform of ``path`` as the audio tasks read it (module docstring)."""
    import soundfile as sf

    try:
        wav, rate = sf.read(path, dtype="float32")
    except Exception as e:  # soundfile raises several types for unreadable files
        raise InputError(f"{path}: cannot read audio: {type(e).__name__}: {e}") from e
    if rate != sample_rate:
        raise InputError(f"{path}: sample rate {rate} Hz, but the checkpoint's task reads {sample_rate} Hz "
                         f"(resample the file first)")
    if wav.ndim == 2:
        wav = wav.mean(-1)  # fairseq's RawAudioDataset averages the channels
    if wav.shape[0] < min_samples:
        raise InputError(f"{path}: {wav.shape[0]} samples, fewer than the {min_samples} the model's conv "
                         f"feature encoder needs for one frame")
    bad = np.flatnonzero(~np.isfinite(wav))
    if bad.size:
        raise InputError(f"{path}: {bad.size} non-finite samples (NaN or inf), the first at sample {bad[0]}")
    x = torch.from_numpy(np.ascontiguousarray(wav))
    if normalize:
        x = F.layer_norm(x, x.shape)
    return x


def receptive_field(conv_layers) -> int:
    """Samples the conv feature encoder ``[(dim, kernel, stride), ...]`` needs for one output frame."""
    size = 1
    for _, kernel, stride in reversed(conv_layers):
        size = (size - 1) * stride + kernel
    return size


# -- images ---------------------------------------------------------------------------------------------------
def read_image(path: str, transform: Callable) -> Tensor:
    """``(3, S, S)`` normalised tensor of the image ``path`` (``transform``: an EvalTransform)."""
    from PIL import Image

    from d2v_plugin.image.transforms import to_rgb

    try:
        with Image.open(path) as f:
            img = to_rgb(f)
    except Exception as e:  # PIL raises many types; name the file
        raise InputError(f"{path}: cannot read image: {type(e).__name__}: {e}") from e
    return transform(img)


# -- text -----------------------------------------------------------------------------------------------------
def read_lines(path: str) -> List[str]:
    """The lines of ``path`` without line breaks and trailing whitespace (as ``manifests.text_manifest``)."""
    lines = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8").rstrip()
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{n}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} "
                                 f"of the line)") from None
            if not text:
                raise InputError(f"{path}:{n}: empty line (one input per line)")
            lines.append(text)
    return lines


def encode_line(text: str, spm, dictionary, first_token: Optional[int], max_tokens: int, name: str) -> Tensor:
    """``(T,)`` token ids of one line: ``[first_token] + dict ids of its pieces + </s>``."""
    pieces = spm.encode(text, out_type=str)
    ids = dictionary.encode_line(" ".join(pieces), add_if_not_exist=False, append_eos=True).long()
    if first_token is not None:
        ids = torch.cat([ids.new_tensor([first_token]), ids])
    if ids.numel() > max_tokens:
        raise InputError(f"{name}: {ids.numel()} tokens, more than the model's {max_tokens} positions")
    return ids


def first_token(task_cfg, dictionary) -> Optional[int]:
    """What the checkpoint's task puts before a sentence: sentence_prediction's ``init_token``, else ``<s>``."""
    if task_cfg.get("_name") == "sentence_prediction":
        return task_cfg.get("init_token")
    return dictionary.bos()
