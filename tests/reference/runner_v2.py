"""fairseq's bundled data2vec 2.0 model (``data2vec_multi``, the v2 reference): every workaround it needs on
this stack, in one place, applied only in the process that runs it.

The reference (``fairseq/examples/data2vec/models/data2vec2.py`` and ``models/modalities/``) registers model
names that d2v_plugin also registers, and the workarounds below (a stand-in ``timm``, hashable config
dataclasses, numpy aliases) must not leak into a process that runs our models. So this module imports
nothing of the reference at module level (the parity tests import ``run_v2_in_subprocess`` from here, next
to our models), and the reference runs in a process of its own:

- ``import_reference_v2()``: its ``Data2VecMultiConfig`` and ``Data2VecMultiModel``, with the import
  workarounds applied;
- ``build_reference_v2(modality, options)``: a model in train mode from ``v2_config``-style options;
- ``reference_v2_forward(model, modality, inputs, noise_seed)``: its forward on given masks;
- ``build_teacher_apart_from_student_v2(model)``: moves the student away from the teacher built in __init__;
- ``run_v2_in_subprocess(modality, out_path)``: ``python -m tests.reference.runner_v2 MODALITY OUT.pt`` in
  a fresh process, returning what that run saved (see ``run_v2``).

The architectures and batches live in ``v2_config``, which tests of our own models import without the
reference.
"""

import contextlib
import dataclasses
import importlib.util
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn

from tests.reference import v2_config
from tests.reference.runner import run_in_subprocess

MODALITIES = v2_config.MODALITIES
BUILD_SEED = 0  # torch's seed while the model (and its EMA teacher) is built
APART_SEED = 1  # the generator that moves the student away from its teacher
NOISE_SEED = 2  # torch's seed right before the forward: the decoder's mask-token noise is its only draw


# -- import workarounds ------------------------------------------------------------------------------------
def _to_2tuple(x):
    """timm's ``to_2tuple``: an iterable (not a string) as a tuple, anything else twice."""
    if isinstance(x, (list, tuple)):
        return tuple(x)
    return (x, x)


class _DropPath(nn.Module):
    """timm's ``DropPath`` (stochastic depth per sample, survivors scaled by 1 / keep_prob)."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1 - self.drop_prob
        random_tensor = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        if keep_prob > 0.0 and self.scale_by_keep:
            random_tensor.div_(keep_prob)
        return x * random_tensor


class _Mlp(nn.Module):
    """timm's ``Mlp``, with its submodule names (``fc1``, ``act``, ``drop1``, ``norm``, ``fc2``, ``drop2``) so that
    parameter names (``mlp.fc1.weight``, ...) are those of a real data2vec 2.0 checkpoint."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, norm_layer=None,
                 bias=True, drop=0.0):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        bias, drop = _to_2tuple(bias), _to_2tuple(drop)
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias[0])
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop[0])
        self.norm = norm_layer(hidden_features) if norm_layer is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias[1])
        self.drop2 = nn.Dropout(drop[1])

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class _PatchEmbed(nn.Module):
    """timm's ``PatchEmbed`` (a strided conv, flattened to (B, patches, dim)); ``images.py`` gets it via ``mae.py``."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, norm_layer=None, flatten=True):
        super().__init__()
        self.img_size, self.patch_size = _to_2tuple(img_size), _to_2tuple(patch_size)
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.flatten = flatten
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x):
        assert tuple(x.shape[-2:]) == self.img_size, f"image size {tuple(x.shape[-2:])} != {self.img_size}"
        x = self.proj(x)
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)
        return self.norm(x)


class _Unavailable(nn.Module):
    """Stands for timm names the modules import but data2vec_multi never builds (MAE's ``Block``, ...)."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("not part of the timm stand-in of tests.reference.runner_v2")


def _install_timm_stand_in() -> None:
    """A minimal ``timm`` in ``sys.modules``: real timm needs torchvision, which has no CPU wheel for our torch.

    Names: ``timm.models.layers.to_2tuple`` (images.py), ``timm.models.vision_transformer.{DropPath, Mlp}``
    (AltBlock), ``{PatchEmbed, Block}`` (mae.py, imported by images.py for PatchEmbed and its sin-cos
    positions). Always the stand-in, never an installed timm, so the run does not depend on what is installed.
    """
    if getattr(sys.modules.get("timm"), "D2V_STAND_IN", False):
        return
    names = dict(D2V_STAND_IN=True, to_2tuple=_to_2tuple, DropPath=_DropPath, Mlp=_Mlp, PatchEmbed=_PatchEmbed,
                 Block=_Unavailable, Attention=_Unavailable)
    for name in ("timm", "timm.models", "timm.models.layers", "timm.models.vision_transformer"):
        module = types.ModuleType(name)
        module.__path__ = []  # a package, so `import timm.models.layers` looks no further
        module.__dict__.update(names)
        sys.modules[name] = module
    sys.modules["timm"].models = sys.modules["timm.models"]
    sys.modules["timm.models"].layers = sys.modules["timm.models.layers"]
    sys.modules["timm.models"].vision_transformer = sys.modules["timm.models.vision_transformer"]


def _install_examples_package() -> None:
    """Makes ``examples.data2vec...`` (the reference's own absolute imports) importable.

    ``examples`` is loaded from ``<site-packages>/fairseq/examples`` by file location rather than by putting
    ``<site-packages>/fairseq`` on sys.path: first on the path it shadows the stdlib ``logging`` (fairseq has a
    ``logging`` package), and by location the result does not depend on what else named ``examples`` is
    importable (this repository has an ``examples/`` folder of its own).
    ``examples.data2vec.data`` becomes an empty package over the real folder: its ``__init__`` imports the
    image datasets (torchvision, timm), while the model needs only ``data/modality.py`` (an Enum, no imports).
    """
    if "examples.data2vec.data" in sys.modules:
        return
    import fairseq

    root = Path(fairseq.__file__).parent / "examples"
    spec = importlib.util.spec_from_file_location("examples", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    examples = importlib.util.module_from_spec(spec)
    sys.modules["examples"] = examples
    spec.loader.exec_module(examples)
    import examples.data2vec  # noqa: F401  (empty __init__)

    data = types.ModuleType("examples.data2vec.data")
    data.__path__ = [str(root / "data2vec" / "data")]
    sys.modules["examples.data2vec.data"] = data
    sys.modules["examples.data2vec"].data = data


@contextlib.contextmanager
def _hashable_reference_dataclasses():
    """Python 3.10's tolerance of dataclass instances as field defaults, for the reference's classes only.

    Python 3.11 rejects a default whose class has ``__hash__ = None`` ("mutable default ... use
    default_factory"), which is every ``@dataclass`` instance: ``decoder: D2vDecoderConfig =
    D2vDecoderConfig()``, ``audio: D2vAudioConfig = D2vAudioConfig()``, ``modalities: D2vModalitiesConfig =
    D2vModalitiesConfig()``. While the reference is imported (its modules bind ``dataclasses.dataclass`` at
    import), classes of ``examples.*`` get ``object.__hash__`` right after being made dataclasses, before a
    later class uses their instances as defaults. ``dataclasses.dataclass`` is restored afterwards.
    """
    real = dataclasses.dataclass

    def dataclass(cls=None, /, **kwargs):
        def wrap(c):
            c = real(c, **kwargs)
            if c.__module__.startswith("examples.") and c.__hash__ is None:
                c.__hash__ = object.__hash__
            return c

        return wrap if cls is None else wrap(cls)

    dataclasses.dataclass = dataclass
    try:
        yield
    finally:
        dataclasses.dataclass = real


def import_reference_v2() -> SimpleNamespace:
    """The reference's ``Config`` (Data2VecMultiConfig), ``Model`` (Data2VecMultiModel) and ``Modality`` classes.

    Call only in a process that runs the reference: it installs a stand-in ``timm`` and numpy aliases.
    """
    import numpy as np

    if not hasattr(np, "float"):
        np.float = float  # removed in numpy 1.24; mae.get_1d_sincos_pos_embed_from_grid uses it (image positions)
    _install_timm_stand_in()
    _install_examples_package()
    with _hashable_reference_dataclasses():
        from examples.data2vec.data.modality import Modality
        from examples.data2vec.models.data2vec2 import Data2VecMultiConfig, Data2VecMultiModel

    return SimpleNamespace(Config=Data2VecMultiConfig, Model=Data2VecMultiModel, Modality=Modality)


# -- building and running ------------------------------------------------------------------------------------
def make_config(options: dict):
    """The reference's config: ``Data2VecMultiConfig`` merged with ``options``, interpolations resolvable.

    Its defaults interpolate ``model.num_heads`` / ``model.depth`` (each modality's ``num_alibi_heads`` and
    ``model_depth``), ``optimization.max_update`` and ``common.seed``, as in a hydra run: the config is placed
    under ``model`` of a root that has ``optimization`` and ``common``, so they resolve as they would there.
    """
    from omegaconf import OmegaConf

    ref = import_reference_v2()
    model = OmegaConf.merge(OmegaConf.structured(ref.Config), options)
    root = OmegaConf.create({"model": model,
                             "optimization": {"max_update": options.get("max_update", 10)},
                             "common": {"seed": options.get("seed", 1)}})
    return root.model


def build_reference_v2(modality: str, options: dict):
    """A ``data2vec_multi`` model of ``modality`` from ``options`` (``v2_config.TINY_V2`` style), in train mode.

    Its EMA teacher is made in ``__init__`` (a copy of the student at that point). Text gets a task whose
    ``source_dictionary`` is ``v2_config.make_dictionary_v2()`` (the text encoder reads ``pad()`` and ``len()``).
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    ref = import_reference_v2()
    cfg = make_config(options)
    assert cfg.supported_modality == ref.Modality[modality.upper()], cfg.supported_modality
    task = SimpleNamespace(source_dictionary=v2_config.make_dictionary_v2()) if modality == "text" else None
    model = ref.Model.build_model(cfg, task)
    model.train()
    return model


def build_teacher_apart_from_student_v2(model, seed: int = APART_SEED) -> None:
    """Moves the student away from the EMA teacher made in ``__init__``, as training does.

    A teacher equal to the student would hide a model that regresses the student's own outputs. Only
    trainable parameters move (an optimizer never touches the others: the image's fixed sin-cos positions, a
    non-learned ALiBi scale), each by N(0, 0.02). ``set_num_updates`` is NOT called: ``num_updates`` stays 0.
    (Calling ``set_num_updates(1)`` from 0 would step the EMA: teacher = d * teacher + (1 - d) * student for
    trainable parameters, and a copy of the student's for frozen ones; ``set_num_updates(n > 1)`` from 0 only
    records n. Neither is needed for one forward.)
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.02)


def reference_v2_forward(model, modality: str, inputs: dict, noise_seed: int = NOISE_SEED) -> dict:
    """The reference's forward result on ``inputs`` (``v2_config.make_batch_v2`` keys).

    ``precomputed_mask`` ``(B * clone_batch, T)`` replaces its mask sampler (no ``id`` is passed: it would only
    seed that sampler). ``torch.manual_seed(noise_seed)`` right before the call makes the one draw left
    reproducible: each clone's mask tokens, ``normal_(0, mask_noise_std)``, drawn in ``decoder_input`` as
    one ``(B * clone_batch, num_masked, embed_dim)`` tensor.
    """
    torch.manual_seed(noise_seed)
    return model(inputs["source"], padding_mask=inputs.get("padding_mask"),
                 precomputed_mask=inputs["precomputed_mask"])


@contextlib.contextmanager
def _recording(model):
    """Records, during one forward, what a re-implementation needs to match the reference piece by piece.

    ``targets``: ``make_targets``' result, the teacher's averaged, normalised block outputs, (B, T, D) before
    cloning and masking. ``predictions``: the modality decoder's output, (B * clone_batch, T, D), every
    position. ``decoder_input``: the decoder's input, (B * clone_batch, T, D): the student's outputs at kept
    positions, the mask-token noise at masked ones. ``ids_keep``: (B * clone_batch, T_kept), the positions the
    student kept, in the order its encoder saw them: ``mask.argsort(dim=1)`` (torch's unstable sort, so not
    ascending), which also decides which noise row lands on which masked position.
    """
    seen = {}
    make_targets = model.make_targets

    def recording_make_targets(y, num_layers):
        seen["targets"] = make_targets(y, num_layers).detach().clone()
        return seen["targets"]

    def record_decoder(module, args, out):
        x, mask_info = args
        seen["decoder_input"] = x.detach().clone()
        seen["ids_keep"] = mask_info.ids_keep[..., 0].clone()
        seen["predictions"] = out.detach().clone()

    decoder = model.modality_encoders[model.cfg.supported_modality.name].decoder
    hook = decoder.register_forward_hook(record_decoder)
    model.make_targets = recording_make_targets
    try:
        yield seen
    finally:
        hook.remove()
        del model.make_targets


def _plain(value):
    """A forward-result value as what ``torch.load(weights_only=True)`` accepts: detached tensors and numbers."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return value


def run_v2(modality: str, noise_seed: int = NOISE_SEED) -> dict:
    """The parity run of ``modality``: build (seed BUILD_SEED), move the student apart, one forward.

    Saved keys: ``modality`` (str); ``cfg`` (the resolved config, enums as names); ``state_dict`` (the
    student's, with ``_ema``: the teacher's fp32 parameters, a dict named as in the teacher module: text's
    teacher is the blocks only, ``0.attn.qkv.weight``...; audio/image's is the whole model less the decoder
    (and, audio, less local encoder/projection), ``blocks.0...``, ``modality_encoders.AUDIO...``);
    ``inputs`` (``source``, ``padding_mask`` or None, ``precomputed_mask``); ``noise_seed``, ``build_seed``,
    ``apart_seed``, ``num_updates`` (0); ``loss`` (the sum of every entry of every ``result["losses"]`` value,
    as fairseq's ``model`` criterion sums them); ``losses`` (name -> that loss summed); ``sample_size``
    (masked positions over all clones); ``target_var``, ``pred_var``, ``masked_pct``, ``ema_decay`` (result
    keys); ``targets``, ``predictions``, ``decoder_input``, ``ids_keep`` from ``_recording``.
    """
    from omegaconf import OmegaConf

    options = v2_config.TINY_V2[modality]
    torch.manual_seed(BUILD_SEED)
    model = build_reference_v2(modality, options)
    build_teacher_apart_from_student_v2(model)
    inputs = v2_config.make_batch_v2(modality)
    with _recording(model) as seen:
        result = reference_v2_forward(model, modality, inputs, noise_seed)
    losses = {name: value.detach().sum() for name, value in result["losses"].items()}
    out = {
        "modality": modality,
        "cfg": OmegaConf.to_container(model.cfg, resolve=True, enum_to_str=True),
        "state_dict": model.state_dict(),
        "inputs": inputs,
        "noise_seed": noise_seed,
        "build_seed": BUILD_SEED,
        "apart_seed": APART_SEED,
        "num_updates": model.num_updates,
        "loss": sum(losses.values()),
        "losses": losses,
        **{k: _plain(result[k]) for k in ("sample_size", "target_var", "pred_var", "masked_pct", "ema_decay")},
        **seen,
    }
    return out


def run_v2_in_subprocess(modality: str, out_path) -> dict:
    """Runs the v2 parity run of ``modality`` in a fresh process; returns what it saved at ``out_path``."""
    return run_in_subprocess(modality, out_path, runner="tests.reference.runner_v2")


def main(argv: list) -> None:
    if len(argv) != 2 or argv[0] not in MODALITIES:
        raise SystemExit(f"usage: python -m tests.reference.runner_v2 {{{','.join(MODALITIES)}}} OUT.pt")
    torch.save(run_v2(argv[0]), argv[1])


if __name__ == "__main__":
    main(sys.argv[1:])
