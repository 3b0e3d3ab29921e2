"""Options checked when a model is built: one table of allowed ranges, applied by every model's build.

A value out of range would otherwise train silently wrong (``mask_prob=1.5`` masks nearly everything,
``ema_decay=1.5`` extrapolates the teacher, a negative learning rate trains backwards) or fail much later
with a message that does not name the option (``loss_beta=-1``: torch's, at the first forward; a tri_stage
schedule with a zero-length decay phase: fairseq's ``ZeroDivisionError``). Here every such option is
checked before any work is done, and the error names the option, its value and the allowed range::

    model.mask_prob=1.5 is out of range: must be in [0, 1]

:data:`TABLES` holds the rules per model (``data2vec_audio``, ``data2vec_text``, ``data2vec_image``, the
fine-tuning models) as plain :class:`Rule` rows; :func:`validate` applies a table (every violation in one
error), and the run-level checks (:func:`check_run`) when the config is a node of fairseq's run config.
The README's table "Options checked when a run starts" is :func:`markdown_table` (a test keeps them equal).

Decisions:

* ``ema_end_decay`` must be >= ``ema_decay``: the paper anneals the teacher from faster to slower; the
  other order is almost certainly swapped values. Both in [0, 1] (1 freezes the teacher).
* Dropout-like probabilities are in [0, 1) (1 drops everything); mask probabilities are in [0, 1], except
  where data2vec 2.0 must keep some tokens unmasked ([0, 1) for audio, whose fine-tuning may set 0;
  (0, 1) for text and images, which mask only in pre-training).
* Run-level options (``optimization.*``, ``lr_scheduler.*``) are not in ``cfg.model``, but fairseq builds
  the model from a copy whose parent is the run config: :func:`check_run` reads them there. When a
  fine-tuning model rebuilds its pre-training model, that checkpoint's own run config is the parent
  and is checked too; it passed the same checks when it ran.
* tri_stage with ``phase_ratio``: fairseq divides by the decay phase's length ``int(max_update *
  phase_ratio[2])``, so a run with too few updates fails with ``ZeroDivisionError``. We refuse it with the
  smallest ``max_update`` that works, rather than changing fairseq's schedule (a zero-length warmup or
  hold phase is fine there and is left alone).
"""

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigRangeError(ValueError):
    """One or more options are out of their allowed range; the message names each with its value and range."""


@dataclass(frozen=True)
class Ref:
    """A bound that depends on the config: ``label`` is how the error shows it; for another option of the
    same config (``is_option``) the label is its path, shown with the config's prefix (``model.encoder_layers``)."""

    label: str
    value: Callable[[Any], Any]
    is_option: bool = False


def option(path: str) -> Ref:
    """A bound equal to another option of the same config (``path`` dotted, e.g. ``transformer.encoder.layers``)."""
    return Ref(path, lambda cfg: lookup(cfg, path), is_option=True)


Bound = Union[None, float, Ref]


@dataclass(frozen=True)
class Range:
    """``low <= value <= high`` (``<`` where open); ``None`` allowed when ``none_ok``; ``divides``: the value
    must divide each of these (e.g. conv groups and their channels)."""

    low: Bound = None
    high: Bound = None
    low_open: bool = False
    high_open: bool = False
    none_ok: bool = False
    divides: Tuple[Ref, ...] = ()

    def or_none(self) -> "Range":
        return Range(self.low, self.high, self.low_open, self.high_open, True, self.divides)

    def describe(self, cfg: Any = None, prefix: str = "model.") -> str:
        """``"in [0, 1)"``, ``">= 1 or None"``, ``"in [1, model.encoder_layers = 4]"`` (values shown with ``cfg``)."""
        def show(bound):
            if isinstance(bound, Ref):
                label = prefix + bound.label if bound.is_option else bound.label
                value = _resolve(bound, cfg) if cfg is not None else None
                return label if value is None else f"{label} = {value:g}"
            return f"{bound:g}"

        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{show(self.low)}, {show(self.high)}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {show(self.low)}"
        elif self.high is not None:
            text = f"{'<' if self.high_open else '<='} {show(self.high)}"
        else:
            text = "a number"
        if self.divides:
            text += " and divide " + ", ".join(show(d) for d in self.divides)
        return text + (" or None" if self.none_ok else "")

    def contains(self, value: Any, cfg: Any) -> bool:
        if value is None:
            return self.none_ok
        low, high = _resolve(self.low, cfg), _resolve(self.high, cfg)
        # written as positive conditions, so NaN fails every one
        if low is not None and not (value > low if self.low_open else value >= low):
            return False
        if high is not None and not (value < high if self.high_open else value <= high):
            return False
        for ref in self.divides:
            other = _resolve(ref, cfg)
            if other is not None and (value == 0 or other % value):
                return False
        return True


def closed(low: Bound, high: Bound) -> Range:
    return Range(low, high)


def half_open(low: Bound, high: Bound) -> Range:
    return Range(low, high, high_open=True)


def open_interval(low: Bound, high: Bound) -> Range:
    return Range(low, high, low_open=True, high_open=True)


def at_least(low: Bound) -> Range:
    return Range(low)


def above(low: Bound) -> Range:
    return Range(low, low_open=True)


PROBABILITY = closed(0, 1)
DROPOUT = half_open(0, 1)
COUNT = at_least(1)
NONNEGATIVE = at_least(0)


@dataclass(frozen=True)
class Rule:
    """``option`` (dotted path in the config) must lie in ``allowed``; only for ``versions`` of data2vec."""

    option: str
    allowed: Range
    versions: Tuple[int, ...] = (1, 2)
    why: str = ""


# -- the tables ------------------------------------------------------------------------------------------------
def _model_rules(layers: str, width: str) -> List[Rule]:
    """The options of :class:`~d2v_plugin.core.config.Data2VecConfig` and ``Data2Vec2Config``/``DecoderConfig``
    (shared by every pre-training model); ``layers``/``width``: the modality's names for depth and width."""
    v2 = (2,)
    return [
        Rule("average_top_k_layers", closed(1, option(layers))),
        Rule("ema_decay", PROBABILITY),
        Rule("ema_end_decay", closed(option("ema_decay"), 1),
             why="the decay anneals from ema_decay up to ema_end_decay"),
        Rule("ema_anneal_end_step", NONNEGATIVE),
        Rule("loss_beta", NONNEGATIVE, why="0: L2 loss, > 0: smooth L1 with this beta"),
        Rule("loss_scale", above(0).or_none()),
        Rule("min_target_var", NONNEGATIVE),
        Rule("min_pred_var", NONNEGATIVE),
        Rule("var_check_start_update", NONNEGATIVE.or_none()),
        Rule("var_check_patience", COUNT),
        Rule("clone_batch", COUNT, v2),
        Rule("mask_noise_std", NONNEGATIVE, v2),
        Rule("prenet_depth", NONNEGATIVE, v2),
        Rule("prenet_dropout", DROPOUT, v2),
        Rule("post_mlp_drop", DROPOUT, v2),
        Rule("norm_eps", above(0), v2),
        Rule("decoder_dim", COUNT, v2),
        Rule("decoder_kernel", COUNT, v2),
        Rule("decoder_layers", COUNT, v2),
        Rule("decoder_groups", Range(1, divides=(option("decoder_dim"), option(width))), v2),
        Rule("decoder_input_dropout", DROPOUT, v2),
        Rule("projection_layers", COUNT, v2),
        Rule("projection_ratio", above(0), v2),
    ]


AUDIO = _model_rules("encoder_layers", "encoder_embed_dim") + [
    Rule("mask_prob", PROBABILITY, (1,)),
    Rule("mask_prob", half_open(0, 1), (2,), why="data2vec 2.0 keeps some frames unmasked"),
    Rule("mask_length", COUNT),
    Rule("mask_other", NONNEGATIVE),
    Rule("mask_min_space", NONNEGATIVE),
    Rule("mask_dropout", DROPOUT),
    Rule("mask_channel_prob", PROBABILITY),
    Rule("mask_channel_length", COUNT),
    Rule("mask_channel_other", NONNEGATIVE),
    Rule("mask_channel_min_space", NONNEGATIVE),
    Rule("dropout", DROPOUT),
    Rule("attention_dropout", DROPOUT),
    Rule("activation_dropout", DROPOUT),
    Rule("dropout_input", DROPOUT),
    Rule("encoder_layerdrop", DROPOUT),
    Rule("feature_grad_mult", NONNEGATIVE),
    Rule("conv_pos", COUNT),
    Rule("pos_conv_depth", COUNT),
]

TEXT = _model_rules("transformer.encoder.layers", "transformer.encoder.embed_dim") + [
    Rule("transformer.dropout", DROPOUT),
    Rule("transformer.attention_dropout", DROPOUT),
    Rule("transformer.activation_dropout", DROPOUT),
    Rule("transformer.encoder.layerdrop", DROPOUT),
    Rule("head_layers", COUNT, (1,)),
    Rule("mask_prob", open_interval(0, 1), (2,), why="data2vec 2.0 masks some tokens and keeps some"),
]

def _patches(cfg: Any) -> int:
    size, patch = lookup(cfg, "image_size"), lookup(cfg, "patch_size")
    if size % patch:  # no patch grid: the model's own check names image_size and patch_size
        raise ArithmeticError
    return (size // patch) ** 2


_PATCHES = Ref("the number of patches", _patches)
IMAGE = _model_rules("depth", "embed_dim") + [
    Rule("image_size", COUNT),
    Rule("patch_size", COUNT),
    Rule("attention_dropout", DROPOUT),
    Rule("drop_path", DROPOUT, (1,)),
    Rule("layer_scale_init_value", NONNEGATIVE, (1,)),
    Rule("layer_norm_eps", above(0), (1,)),
    Rule("num_mask_patches", closed(1, _PATCHES), (1,)),
    Rule("min_mask_patches_per_block", COUNT, (1,)),
    Rule("max_mask_patches_per_block", at_least(option("min_mask_patches_per_block")).or_none(), (1,)),
    Rule("mask_min_aspect", Range(0, 1, low_open=True), (1,)),
    Rule("encoder_dropout", DROPOUT, (2,)),
    Rule("activation_dropout", DROPOUT, (2,)),
    Rule("dropout_input", DROPOUT, (2,)),
    Rule("layerdrop", DROPOUT, (2,)),
    Rule("mask_prob", open_interval(0, 1), (2,), why="data2vec 2.0 masks some patches and keeps some"),
    Rule("mask_length", COUNT, (2,)),
    Rule("mask_prob_adjust", NONNEGATIVE, (2,)),
    Rule("mask_dropout", DROPOUT, (2,)),
    Rule("cls_loss", NONNEGATIVE, (2,)),
]

AUDIO_CTC = [
    Rule("mask_prob", PROBABILITY),
    Rule("mask_length", COUNT),
    Rule("mask_other", NONNEGATIVE),
    Rule("mask_dropout", DROPOUT),
    Rule("mask_channel_prob", PROBABILITY),
    Rule("mask_channel_length", COUNT),
    Rule("mask_channel_other", NONNEGATIVE),
    Rule("dropout", DROPOUT),
    Rule("attention_dropout", DROPOUT),
    Rule("activation_dropout", DROPOUT),
    Rule("dropout_input", DROPOUT),
    Rule("final_dropout", DROPOUT),
    Rule("layerdrop", DROPOUT),
    Rule("feature_grad_mult", NONNEGATIVE),
    Rule("freeze_finetune_updates", NONNEGATIVE),
]

# data2vec_audio_classification: the CTC model's encoder options (both are fairseq's Wav2VecEncoder) + its head
AUDIO_CLASSIFICATION = AUDIO_CTC + [
    Rule("classifier_proj_size", COUNT),
]

TEXT_CLASSIFICATION = [
    Rule("dropout", DROPOUT.or_none()),
    Rule("attention_dropout", DROPOUT.or_none()),
    Rule("pooler_dropout", DROPOUT),
]

IMAGE_CLASSIFICATION = [
    Rule("drop_path", DROPOUT.or_none()),
    Rule("num_classes", NONNEGATIVE, why="0: the task's labels.txt"),
]

# Options of our image tasks (image_pretraining, image_classification), checked by the image models' builds.
IMAGE_TASK = [
    Rule("input_size", COUNT),
    Rule("crop_min_scale", Range(0, 1, low_open=True)),
    Rule("crop_max_scale", closed(option("crop_min_scale"), 1)),
    Rule("crop_min_ratio", above(0)),
    Rule("crop_max_ratio", at_least(option("crop_min_ratio"))),
    Rule("hflip_prob", PROBABILITY),
    Rule("color_jitter", NONNEGATIVE),
    Rule("eval_crop_ratio", Range(0, 1, low_open=True)),
]

TABLES: Dict[str, List[Rule]] = {
    "data2vec_audio": AUDIO,
    "data2vec_text": TEXT,
    "data2vec_image": IMAGE,
    "data2vec_audio_ctc": AUDIO_CTC,
    "data2vec_audio_classification": AUDIO_CLASSIFICATION,
    "data2vec_text_classification": TEXT_CLASSIFICATION,
    "data2vec_image_classification": IMAGE_CLASSIFICATION,
    "image_task": IMAGE_TASK,
}


# -- applying them -----------------------------------------------------------------------------------------------
_UNSET = object()


def lookup(cfg: Any, path: str) -> Any:
    """``cfg.<path>`` for a dataclass, an OmegaConf node or a dict; ``_UNSET`` when absent or unresolvable
    (an interpolation such as ``${optimization.max_update}`` in a config built outside fairseq)."""
    value = cfg
    for part in path.split("."):
        try:
            value = value.get(part, _UNSET) if isinstance(value, dict) else getattr(value, part, _UNSET)
        except OmegaConfBaseException:
            return _UNSET
        if value is _UNSET:
            return _UNSET
    if isinstance(value, str) and value.startswith("${"):
        return _UNSET
    return value


def _resolve(bound: Bound, cfg: Any) -> Any:
    if not isinstance(bound, Ref):
        return bound
    try:
        value = bound.value(cfg)
    except (ArithmeticError, TypeError):  # e.g. patch_size 0: its own rule reports it
        return None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def violations(cfg: Any, rules: Sequence[Rule], version: Optional[int] = None, prefix: str = "model.") -> List[str]:
    """One message per option of ``cfg`` outside its range (options absent from ``cfg`` are skipped)."""
    found = []
    for rule in rules:
        if version is not None and version not in rule.versions:
            continue
        value = lookup(cfg, rule.option)
        if value is _UNSET or isinstance(value, bool) or not (value is None or isinstance(value, (int, float))):
            continue
        if not rule.allowed.contains(value, cfg):
            why = f" ({rule.why})" if rule.why else ""
            found.append(f"{prefix}{rule.option}={value!r} is out of range: must be "
                         f"{rule.allowed.describe(cfg, prefix)}{why}")
    return found


def validate(cfg: Any, table: str, version: Optional[int] = None, prefix: str = "model.", run: bool = True) -> None:
    """Raise :class:`ConfigRangeError` naming every option of ``cfg`` outside its range in ``TABLES[table]``,
    and every run-level problem (:func:`check_run`) when ``cfg`` is a node of fairseq's run config.

    ``version``: the data2vec version (``cfg.data2vec_version`` when None and the config has one);
    ``run=False``: the option ranges only (a task's config, whose run the model's build checks).
    """
    if version is None:
        v = lookup(cfg, "data2vec_version")
        version = v if isinstance(v, int) else None
    problems = violations(cfg, TABLES[table], version, prefix)
    if run:
        problems += run_problems(run_config(cfg))
    if problems:
        raise ConfigRangeError("; ".join(problems))


def run_config(cfg: Any) -> Optional[DictConfig]:
    """The run config ``cfg`` belongs to (fairseq builds models and criteria from a node whose parent is
    the whole config), or None for a config on its own (a dataclass, a root node)."""
    if not OmegaConf.is_config(cfg):
        return None
    parent = cfg._get_parent()
    return parent if isinstance(parent, DictConfig) and "optimization" in parent else None


def check_run(run: Optional[DictConfig]) -> None:
    """Raise :class:`ConfigRangeError` for the run-level problems of :func:`run_problems`."""
    problems = run_problems(run)
    if problems:
        raise ConfigRangeError("; ".join(problems))


def _select(run: DictConfig, path: str) -> Any:
    try:
        return OmegaConf.select(run, path, default=None)
    except OmegaConfBaseException:
        return None


def run_problems(run: Optional[DictConfig]) -> List[str]:
    """Run-level options that silently break (or crash) a data2vec run:

    * ``optimization.lr``: every entry > 0 (a negative rate trains backwards, 0 not at all);
    * tri_stage (``lr_scheduler._name=tri_stage``): the decay phase needs at least one update, or fairseq
      divides by zero: ``int(optimization.max_update * lr_scheduler.phase_ratio[2])`` with ``phase_ratio``,
      else ``lr_scheduler.decay_steps``; ``phase_ratio`` needs ``max_update > 0`` and must sum to 1 (fairseq
      asserts exact equality).
    """
    if run is None:
        return []
    found = []
    lr = _select(run, "optimization.lr")
    if lr is not None:
        values = list(lr) if OmegaConf.is_list(lr) or isinstance(lr, (list, tuple)) else [lr]
        bad = [v for v in values if not (isinstance(v, (int, float)) and v > 0)]
        if bad:
            found.append(f"optimization.lr={_plain(lr)} is out of range: every entry must be > 0 "
                         f"(a negative learning rate trains backwards, 0 not at all)")
    if _select(run, "lr_scheduler._name") == "tri_stage":
        found += _tri_stage_problems(run)
    return found


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _tri_stage_problems(run: DictConfig) -> List[str]:
    ratios = _select(run, "lr_scheduler.phase_ratio")
    if ratios is None:
        decay = _select(run, "lr_scheduler.decay_steps")
        if isinstance(decay, int) and decay < 1:
            return [f"lr_scheduler.decay_steps={decay} is out of range: must be >= 1 with lr_scheduler tri_stage "
                    f"(fairseq divides by it), or set lr_scheduler.phase_ratio"]
        return []
    ratios = [float(r) for r in ratios]
    max_update = _select(run, "optimization.max_update")
    shown = f"lr_scheduler.phase_ratio={ratios}"
    if len(ratios) != 3 or any(not (r >= 0) for r in ratios) or sum(ratios) != 1:
        return [f"{shown} is out of range: must be 3 non-negative fractions adding up to exactly 1 "
                f"(warmup, hold, decay; fairseq's tri_stage asserts it)"]
    if not isinstance(max_update, int) or max_update <= 0:
        return [f"optimization.max_update={max_update} is out of range: lr_scheduler tri_stage with {shown} "
                f"needs max_update > 0 (the phases are fractions of it)"]
    decay = int(max_update * ratios[2])
    if decay >= 1:
        return []
    if ratios[2] == 0:
        return [f"{shown} is out of range: the decay fraction (last entry) must be > 0, fairseq's tri_stage "
                f"divides by the decay phase's length"]
    need = max(1, math.ceil(1 / ratios[2]))
    while int(need * ratios[2]) < 1:
        need += 1
    return [f"optimization.max_update={max_update} is out of range with lr_scheduler tri_stage and {shown}: the "
            f"decay phase would last int({max_update} * {ratios[2]:g}) = 0 updates and fairseq divides by its "
            f"length; optimization.max_update must be >= {need} (or give the decay phase a larger ratio)"]


# -- the README's table ------------------------------------------------------------------------------------------
_SHORT = {"data2vec_audio": "audio", "data2vec_text": "text", "data2vec_image": "image",
          "data2vec_audio_ctc": "CTC", "data2vec_audio_classification": "audio classification",
          "data2vec_text_classification": "text classification",
          "data2vec_image_classification": "image classification", "image_task": "image tasks"}


def markdown_table() -> str:
    """The README's "Options checked when a run starts" table, from :data:`TABLES` and :func:`run_problems`:
    one row per allowed range, listing its options; where an option's range differs between models, the
    models are named next to it."""
    ranges: Dict[str, Dict[str, List[str]]] = {}  # option -> allowed range -> where
    for table, rules in TABLES.items():
        prefix = "task." if table == "image_task" else "model."
        for rule in rules:
            versions = "" if rule.versions == (1, 2) else f" v{rule.versions[0]}"
            allowed = rule.allowed.describe(prefix=prefix)
            if rule.option == "average_top_k_layers":
                allowed = "in [1, the number of blocks]"  # encoder_layers, transformer.encoder.layers, depth
            if rule.option == "decoder_groups":
                allowed = ">= 1 and divide model.decoder_dim and the model width"
            ranges.setdefault(f"`{prefix}{rule.option}`", {}).setdefault(allowed, []).append(_SHORT[table] + versions)
    rows: Dict[str, List[str]] = {}
    for name, by_range in ranges.items():
        for allowed, where in by_range.items():
            rows.setdefault(allowed, []).append(name if len(by_range) == 1 else f"{name} ({', '.join(where)})")
    lines = ["| allowed | options |", "|---|---|"]
    lines += [f"| {allowed} | {', '.join(names)} |" for allowed, names in rows.items()]
    lines += [
        "| every entry > 0 | `optimization.lr` |",
        "| tri_stage: a decay phase of >= 1 update, `int(max_update * phase_ratio[2])` (else "
        "`lr_scheduler.decay_steps` >= 1); `phase_ratio`: 3 fractions adding up to 1 | "
        "`optimization.max_update`, `lr_scheduler.phase_ratio` |",
    ]
    return "\n".join(lines)
