"""``d2v-extract CKPT INPUT OUT_DIR``: per-input representations of a data2vec checkpoint, as ``.npy`` files.

What is written, for each input (``T`` positions x ``D`` channels, float32; ``D`` alone with ``--pool mean``):

* default: the encoder's output, what the model's own ``extract_features`` returns (audio: frames; text:
  tokens, ``<s>`` and ``</s>`` included; images: ``1 + patches`` positions, [CLS] first). For pre-LN
  encoders (images 1.0, ``layer_norm_first``) that is after the encoder's final layer norm (fine-tuned image
  encoders drop that norm, as fine-tuning does); post-LN encoders (speech and text by default) have none;
* ``--layer N``: the output of block ``N`` (0-based, ``0 .. blocks-1``): what block ``N + 1`` reads, after
  the block's residual sums (post-LN blocks: and their own layer norm), never the encoder's final norm.
  For a post-LN encoder ``--layer blocks-1`` equals the default;
* ``--average-top-k K``: the regression targets of data2vec for the unmasked input: the top ``K`` blocks'
  outputs as the teacher takes them (the model's ``teacher_top_k_blocks``: feed-forward outputs before the
  last residual, or block ends with ``end_of_block_targets``; images: patches only), each normalised and
  averaged as configured in the checkpoint (:func:`d2v_plugin.core.targets.make_targets`). With the
  checkpoint's ``average_top_k_layers`` and ``--teacher`` (the EMA teacher's weights, pre-training
  checkpoints only) this is exactly the targets training builds for that input alone; without ``--teacher``
  the student's (the fine-tunable encoder's) weights are used. Statistics (instance norm over time, and
  ``batch_norm_target_layer``'s) are taken over each input's own positions, never over padding or other inputs;
  in a padded training batch instance norm also sees the padding (fairseq's behaviour).

``--pool mean`` averages over the input's positions (images: over the patches, [CLS] left out, as
``data2vec_image_classification`` pools). Outputs mirror the input's path relative to its folder or manifest
root (text: ``STEM/LINE.npy``, 6-digit line numbers); ``index.tsv`` lists ``input`` (text: ``FILE:LINE``),
``output`` and ``shape`` in input order, ``extraction.json`` the settings. Every
input is read and checked before the model runs (:mod:`d2v_plugin.inference.inputs`), and each file is
written atomically.

Batching does not change the results: padded positions are masked, and for speech the padded frames are also
zeroed before each of the stacked positional convolutions (data2vec's ``pos_conv_depth > 1``), which
otherwise carry the padding into every frame of a shorter utterance (differences of order 1 in the tiny
recipe's encoder output; training and ``fairseq-generate`` run them that way). With
``extractor_mode=default`` (a group norm over the whole, padded, time axis) only inputs of the same length
share a batch.
"""

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from d2v_plugin.core.block import Block
from d2v_plugin.core.targets import make_targets
from d2v_plugin.core.teacher_student import Views
from d2v_plugin.inference import inputs as inputs_lib
from d2v_plugin.inference.checkpoints import CheckpointError, LoadedModel, device_of, load_model
from d2v_plugin.inference.inputs import InputError, Item

logger = logging.getLogger(__name__)
POOLS = ("none", "mean")


@dataclass
class Representation:
    """Which representation (module docstring): the encoder output, block ``layer``, or the ``average_top_k``
    targets (``teacher``: with the EMA teacher's weights); ``pool``: ``none`` or ``mean``."""

    layer: Optional[int] = None
    average_top_k: Optional[int] = None
    teacher: bool = False
    pool: str = "none"

    def check(self, loaded: LoadedModel) -> None:
        """Refuse what the checkpoint cannot give, naming the option."""
        blocks = len(encoder_blocks(loaded.encoder))
        if self.layer is not None and self.average_top_k is not None:
            raise ValueError("--layer and --average-top-k exclude each other")
        if self.layer is not None and not 0 <= self.layer < blocks:
            raise ValueError(f"--layer {self.layer}: the encoder has blocks 0..{blocks - 1}")
        if self.average_top_k is not None and not 1 <= self.average_top_k <= blocks:
            raise ValueError(f"--average-top-k {self.average_top_k}: must be in 1..{blocks} (the encoder's blocks)")
        if self.teacher and self.average_top_k is None:
            raise ValueError("--teacher goes with --average-top-k (the targets the teacher builds)")
        if self.teacher and getattr(loaded.encoder, "ema_teacher", None) is None:
            raise ValueError(f"--teacher: {loaded.path} has no EMA teacher (a fine-tuned checkpoint)")
        if self.pool not in POOLS:
            raise ValueError(f"--pool {self.pool}: expected one of {', '.join(POOLS)}")

    def describe(self) -> str:
        if self.average_top_k is not None:
            weights = "teacher" if self.teacher else "student"
            return f"average of the top {self.average_top_k} blocks as targets ({weights})"
        return "encoder output" if self.layer is None else f"output of block {self.layer}"


# -- the encoder's pieces -------------------------------------------------------------------------------------
def encoder_blocks(encoder: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a data2vec encoder, lowest first."""
    stack = getattr(encoder, "sentence_encoder", None) or encoder.encoder  # text 1.0 / the others
    return stack.blocks if hasattr(stack, "blocks") else stack.layers


@contextlib.contextmanager
def block_output(encoder: nn.Module, index: int) -> Iterator[dict]:
    """Records the output of block ``index`` as ``captured["x"]`` ``(B, T, C)`` during the model's forward.

    data2vec 2.0 blocks (:class:`~d2v_plugin.core.block.Block`) run batch first, the 1.0 ones (fairseq's
    wav2vec/transformer layers, the ViT blocks) time first; each returns ``(output, ...)``.
    """
    captured = {}

    def hook(module, args, output):
        x = output[0]
        captured["x"] = x if isinstance(module, Block) else x.transpose(0, 1)

    handle = encoder_blocks(encoder)[index].register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@contextlib.contextmanager
def positional_convs_skip_padding(encoder: nn.Module, frames: Optional[Tensor]) -> Iterator[None]:
    """Zero the padded frames (``>= frames[b]``) of the input of every positional convolution of a speech
    encoder (the student's and the EMA teacher's): each then sees what it sees for the utterance alone,
    where the convolution's own zero padding stands beyond the last frame. ``frames``: ``(B,)``, None: no padding.
    """
    if frames is None:
        yield
        return
    convs = [conv for name, module in encoder.named_modules() if name.rsplit(".", 1)[-1] == "pos_conv"
             for conv in module.modules() if isinstance(conv, nn.Conv1d)]

    def zero_padding(module, args):
        x = args[0]  # (B, C, T)
        padded = torch.arange(x.size(-1), device=x.device)[None, :] >= frames.to(x.device)[:, None]
        return (x.masked_fill(padded[:, None, :], 0.0),) + tuple(args[1:])

    handles = [conv.register_forward_pre_hook(zero_padding) for conv in convs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def top_k_setting(cfg, k: int) -> Iterator[None]:
    """``cfg.average_top_k_layers = k`` while the teacher's blocks are taken (every modality reads it there)."""
    saved = cfg.average_top_k_layers
    cfg.average_top_k_layers = k
    try:
        yield
    finally:
        cfg.average_top_k_layers = saved


# -- one batch ------------------------------------------------------------------------------------------------
def collate(loaded: LoadedModel, xs: Sequence[Tensor]) -> dict:
    """The model's input for one batch: audio ``source (B, S)`` + ``padding_mask (B, S)`` (None without
    padding); text ``tokens (B, T)`` right-padded; images ``images (B, 3, S, S)``."""
    device = device_of(loaded.model)
    if loaded.modality == "audio":
        lengths = torch.tensor([x.numel() for x in xs])
        source = torch.zeros(len(xs), int(lengths.max()))
        for i, x in enumerate(xs):
            source[i, : x.numel()] = x
        padding = torch.arange(source.size(1))[None, :] >= lengths[:, None]
        return {"source": source.to(device), "padding_mask": padding.to(device) if padding.any() else None,
                "lengths": lengths}
    if loaded.modality == "text":
        from fairseq.data.data_utils import collate_tokens

        return {"tokens": collate_tokens(list(xs), loaded.dictionary.pad()).to(device)}
    return {"images": torch.stack(list(xs)).to(device)}


def frame_counts(loaded: LoadedModel, batch: dict) -> Optional[Tensor]:
    """Audio: ``(B,)`` conv frames per utterance when the batch is padded, else None."""
    if loaded.modality != "audio" or batch["padding_mask"] is None:
        return None
    from d2v_plugin.audio.front_end import conv_output_lengths

    return conv_output_lengths(batch["lengths"], loaded.encoder.conv_layers)


def encoder_output(loaded: LoadedModel, batch: dict) -> Tuple[Tensor, Tensor]:
    """The model's own ``extract_features`` on the batch: ``(B, T, C)`` and the ``(B,)`` valid positions."""
    enc = loaded.encoder
    if loaded.modality == "audio":
        out = enc.extract_features(batch["source"], batch["padding_mask"], mask=False)
        x, padding = out["x"], out["padding_mask"]
        lengths = torch.full((x.size(0),), x.size(1)) if padding is None else (~padding).sum(-1).cpu()
        return x, lengths
    if loaded.modality == "text":
        tokens = batch["tokens"]
        x, _ = enc.extract_features(tokens)
        return x, tokens.ne(loaded.dictionary.pad()).sum(-1).cpu()
    x = enc.extract_features(batch["images"])["x"]
    return x, torch.full((x.size(0),), x.size(1))


def unmasked_views(loaded: LoadedModel, batch: dict) -> Tuple[Views, Tensor]:
    """What each model's forward gives its teacher, for unmasked inputs, and the ``(B,)`` valid positions of the
    teacher's outputs (audio frames, text tokens, image patches)."""
    enc = loaded.encoder
    if loaded.modality == "audio":
        features, frame_padding = enc.encode_features(batch["source"], batch["padding_mask"])
        teacher_input = features if enc.cfg.ema_transformer_only else batch["source"]
        B, T = features.shape[:2]
        lengths = torch.full((B,), T) if frame_padding is None else (~frame_padding).sum(-1).cpu()
        return Views(None, teacher_input, None, frame_padding), lengths
    if loaded.modality == "text":
        tokens = batch["tokens"]
        lengths = tokens.ne(loaded.dictionary.pad()).sum(-1).cpu()
        if loaded.version == 1:
            return Views(None, tokens, None), lengths
        return Views(None, enc.local_encoder(tokens, dropout=False), None, enc.padding_mask(tokens)), lengths
    images = batch["images"]
    if loaded.version == 1:
        x = enc.embed(images)
        return Views(None, x, None), torch.full((x.size(0),), x.size(1) - 1)
    patches = enc.embed(images)
    teacher_input = patches if enc.cfg.ema_transformer_only else images
    return Views(None, teacher_input, None), torch.full((patches.size(0),), patches.size(1))


def top_k_targets(loaded: LoadedModel, batch: dict, k: int, teacher: bool) -> List[Tensor]:
    """Per input ``(T_i, C)``: :func:`make_targets` of the top ``k`` blocks of the model's
    ``teacher_top_k_blocks`` (EMA teacher's or student's weights), over that input's own positions."""
    enc = loaded.encoder
    views, lengths = unmasked_views(loaded, batch)
    module = enc.ema_teacher.model if teacher else getattr(enc, enc.teacher_tracks)
    with top_k_setting(enc.cfg, k):
        blocks = enc.teacher_top_k_blocks(module, views)
    return [make_targets([b[i: i + 1, :n] for b in blocks], enc.cfg)[0] for i, n in enumerate(lengths.tolist())]


@torch.no_grad()
def encode_batch(loaded: LoadedModel, xs: Sequence[Tensor], rep: Representation) -> List[Tensor]:
    """The representation ``rep`` of each input of ``xs`` (as :mod:`inputs` reads them): ``(T_i, D)`` fp32 on
    CPU, or ``(D,)`` with ``rep.pool == "mean"``."""
    batch = collate(loaded, xs)
    with positional_convs_skip_padding(loaded.encoder, frame_counts(loaded, batch)):
        if rep.average_top_k is not None:
            outputs = top_k_targets(loaded, batch, rep.average_top_k, rep.teacher)
            skip = 0
        else:
            hook = contextlib.nullcontext({}) if rep.layer is None else block_output(loaded.encoder, rep.layer)
            with hook as captured:
                x, lengths = encoder_output(loaded, batch)
            if rep.layer is not None:
                x = captured["x"][:, : x.size(1)]  # wav2vec's encoder may pad frames to a multiple internally
            outputs = [x[i, :n] for i, n in enumerate(lengths.tolist())]
            skip = 1 if loaded.modality == "image" else 0  # [CLS] is not a patch
    outputs = [y.float().cpu() for y in outputs]
    if rep.pool == "mean":
        outputs = [y[skip:].mean(0) for y in outputs]
    return outputs


def padded_batches_differ(loaded: LoadedModel) -> Optional[str]:
    """Why padding would change this model's outputs even with masks and :func:`positional_convs_skip_padding`
    (then only inputs of the same length share a batch), or None."""
    if loaded.modality == "audio" and loaded.encoder.cfg.extractor_mode == "default":
        return ("extractor_mode=default: the first conv layer's group norm normalises each channel over the whole "
                "(padded) time axis")
    return None


# -- files ----------------------------------------------------------------------------------------------------
class Reader:
    """Reads one :class:`Item` into the tensor :func:`encode_batch` takes; ``size(x)`` orders batches."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        task = loaded.task_cfg
        if loaded.modality == "audio":
            self.sample_rate = int(task.get("sample_rate", 16000))
            self.normalize = bool(task.get("normalize", False))
            self.min_samples = inputs_lib.receptive_field(loaded.encoder.conv_layers)
        elif loaded.modality == "image":
            from d2v_plugin.image.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform

            size = int(task.get("input_size", loaded.encoder.cfg.image_size))
            if size != loaded.encoder.cfg.image_size:
                raise CheckpointError(f"{loaded.path}: task.input_size={size} but model.image_size="
                                      f"{loaded.encoder.cfg.image_size}")
            self.transform = EvalTransform(size, float(task.get("eval_crop_ratio", 0.875)),
                                           list(task.get("normalization_mean", IMAGENET_MEAN)),
                                           list(task.get("normalization_std", IMAGENET_STD)))
        else:
            self.lines = {}
            self.first_token = inputs_lib.first_token(task, loaded.dictionary)
            self.max_tokens = text_max_positions(loaded.encoder)

    def read(self, item: Item) -> Tensor:
        if self.loaded.modality == "audio":
            return inputs_lib.read_audio(item.path, self.sample_rate, self.normalize, self.min_samples)
        if self.loaded.modality == "image":
            return inputs_lib.read_image(item.path, self.transform)
        if item.path not in self.lines:
            self.lines[item.path] = inputs_lib.read_lines(item.path)
        return inputs_lib.encode_line(self.lines[item.path][item.line - 1], self.loaded.spm, self.loaded.dictionary,
                                      self.first_token, self.max_tokens, item.name)


def text_max_positions(encoder: nn.Module) -> int:
    """The most tokens a text encoder embeds (its learned positions)."""
    embeddings = encoder.sentence_encoder if hasattr(encoder, "sentence_encoder") else encoder.local_encoder
    positions = embeddings.embed_positions
    return int(positions.max_positions) if positions is not None else sys.maxsize


def make_batches(sizes: Sequence[int], batch_size: int, same_size: bool) -> List[List[int]]:
    """Indices grouped into batches of up to ``batch_size``, longest first (least padding); with ``same_size``
    only equal sizes share a batch."""
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    batches: List[List[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and (not same_size or sizes[batches[-1][0]] == sizes[i]):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary file beside ``path``, then rename: never a truncated ``.npy``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def extract(checkpoint: str, source: str, out_dir: str, *, layer: Optional[int] = None,
            average_top_k: Optional[int] = None, teacher: bool = False, pool: str = "none", batch_size: int = 8,
            device: str = "cpu", spm_model: Optional[str] = None, dictionary: Optional[str] = None,
            progress: bool = True) -> Path:
    """Write the representation of every input of ``source`` under ``out_dir`` (module docstring); returns the
    path of ``index.tsv``. Raises :class:`InputError` / :class:`CheckpointError` / ValueError naming the file,
    line or option at fault, before anything is written."""
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: must be >= 1")
    loaded = load_model(checkpoint, spm_model=spm_model, dictionary=dictionary, device=device)
    rep = Representation(layer, average_top_k, teacher, pool)
    rep.check(loaded)
    items = inputs_lib.list_inputs(loaded.modality, source)
    inputs_lib.check_unique_outputs(items)
    reader = Reader(loaded)
    sizes = [reader.read(item).shape[0] for item in tqdm_or_plain(items, progress, "checking inputs")]
    same_size = padded_batches_differ(loaded)
    if same_size and batch_size > 1:
        logger.info(f"only inputs of the same length share a batch: {same_size}")
    logger.info(f"{loaded.path} ({loaded.name}, {loaded.modality}): {rep.describe()}, pool={pool}, "
                f"{len(items)} inputs -> {out_dir}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shapes = {}
    with tqdm_or_plain(None, progress, "extracting", total=len(items)) as bar:
        for batch in make_batches(sizes, batch_size, bool(same_size)):
            for i, y in zip(batch, encode_batch(loaded, [reader.read(items[i]) for i in batch], rep)):
                save_npy(out / items[i].output, y.numpy())
                shapes[i] = tuple(y.shape)
            bar.update(len(batch))
    rows = ["input\toutput\tshape"] + [f"{item.name}\t{item.output}\t{','.join(map(str, shapes[i]))}"
                                       for i, item in enumerate(items)]
    save_text(out / "index.tsv", "\n".join(rows) + "\n")
    settings = {"checkpoint": str(checkpoint), "model": loaded.name, "modality": loaded.modality, "layer": layer,
                "average_top_k": average_top_k, "teacher": teacher, "pool": pool, "inputs": str(source)}
    save_text(out / "extraction.json", json.dumps(settings, indent=1) + "\n")
    return out / "index.tsv"


def tqdm_or_plain(iterable, progress: bool, desc: str, total: Optional[int] = None):
    """fairseq's dependency tqdm, off when ``progress`` is False."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not progress, unit="input", leave=False)


# -- command line ---------------------------------------------------------------------------------------------
def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_cli(main: Callable[[], int]) -> int:
    """Run a console script's body: errors that name the file, line or option become ``error: ...``, exit 1."""
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    try:
        return main()
    except (InputError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="d2v-extract", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Per-input representations of a data2vec checkpoint, as .npy files.",
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("checkpoint", help="a data2vec checkpoint (pre-trained or fine-tuned; ours or fairseq's reference)")
    p.add_argument("input", help="audio/images: a folder or a manifest .tsv; text: a .txt file, one input per line")
    p.add_argument("out_dir", help="where the .npy files, index.tsv and extraction.json are written")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--layer", type=int, help="output of this block (0-based), before any final encoder norm")
    what.add_argument("--average-top-k", type=int, metavar="K",
                      help="average of the top K blocks, normalised as the checkpoint's targets are")
    p.add_argument("--teacher", action="store_true", help="with --average-top-k: the EMA teacher's weights "
                   "(pre-training checkpoints): exactly the training targets")
    p.add_argument("--pool", choices=POOLS, default="none", help="mean: one D vector per input")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", choices=("cpu", "cuda"), default=default_device())
    p.add_argument("--spm-model", help="text: the SentencePiece model (default: spm.model in the checkpoint's "
                   "data-bin)")
    p.add_argument("--dictionary", help="text: the data-bin's dict.txt (default: in the checkpoint's data-bin)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)

    def body() -> int:
        index = extract(a.checkpoint, a.input, a.out_dir, layer=a.layer, average_top_k=a.average_top_k,
                        teacher=a.teacher, pool=a.pool, batch_size=a.batch_size, device=a.device,
                        spm_model=a.spm_model, dictionary=a.dictionary, progress=not a.quiet)
        print(f"wrote {index}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
