"""``data2vec_image``: data2vec pre-training for images (the paper's vision setting, BEiT's ViT).

Student: patch embedding (a strided convolution) -> [CLS] + patches -> block-wise masking (masked
patches replaced by a learned mask embedding) -> ViT encoder (:mod:`d2v_plugin.image.vit`) -> linear
regression head on the masked patches. Teacher: an EMA copy of the ViT encoder run on the same, unmasked
patch embeddings (the embedding is shared, fairseq's ``ema_transformer_only``); its targets are the
average of its top-K block outputs without [CLS] (:mod:`d2v_plugin.core.targets`).

Paper / data2vec_vision recipe (``examples/image/pretraining/base_imagenet.yaml``): ViT-B/16, 120 of
196 patches masked, K=6 block outputs taken after the residual sum (``end_of_block_targets``), the
average layer-normed (``layer_norm_targets``), smooth L1 with beta 2, EMA 0.999 -> 0.9998.

Differences from fairseq's bundled port (``fairseq.examples.data2vec.models.data2vec_vision``), all
deliberate; with the same weights and masks the loss is otherwise equal (tests/models/test_data2vec_image.py):

* The port never applies its ``final_proj``: it regresses the normed encoder output directly. We apply
  the linear head, as the original data2vec_vision code (``lm_head``) and the paper do. With the head
  set to the identity both give the same loss.
* Attention is fairseq's ``MultiheadAttention``, which has a key bias; BEiT's attention has none. A key
  bias adds the same value to all logits of a query, so softmax ignores it and it receives no gradient;
  converted weights set it to zero.
* LayerNorm epsilon is an option (``layer_norm_eps``), default 1e-6 as in BEiT / data2vec_vision; the
  port uses torch's default 1e-5.
* Masks are sampled by our own :func:`~d2v_plugin.core.masking.block_mask_2d`, each image's from
  ``(common.seed, update, sample id)``: reproducible, resumed runs draw the same masks and data-parallel
  ranks different ones; the port uses Python's ``random``.
* A reference state dict (``encoder.blocks.*``, flat ``_ema`` teacher) loads through
  :data:`REFERENCE_KEY_MAP`, with the fused ``qkv`` weight split into fairseq's q/k/v projections.
"""

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from fairseq.models import BaseFairseqModel, register_model

from d2v_plugin.core.config import Data2Vec2Config, Data2VecConfig, ModelMaskedConfig
from d2v_plugin.core.masking import block_mask_2d
from d2v_plugin.core.teacher_student import REFERENCE_TEACHER_KEY, TeacherStudentMixin, Views
from d2v_plugin.core.validation import validate
from d2v_plugin.image.vit import ViTEncoder


@dataclass
class Data2VecImageConfig(Data2VecConfig, Data2Vec2Config, ModelMaskedConfig):
    """ViT and masking options (fairseq data2vec_vision's names) plus the shared data2vec ones.

    ``data2vec_version: 2`` builds data2vec 2.0's image model (:mod:`d2v_plugin.image.model_v2`, which
    lists the options it reads); the options marked "data2vec 2.0" are read only there.
    """

    image_size: int = field(default=224, metadata={"help": "input images are image_size x image_size pixels"})
    patch_size: int = field(default=16, metadata={"help": "patches are patch_size x patch_size pixels"})
    in_channels: int = field(default=3, metadata={"help": "image channels"})
    embed_dim: int = field(default=768, metadata={"help": "transformer width"})
    depth: int = field(default=12, metadata={"help": "number of transformer blocks"})
    num_heads: int = field(default=12, metadata={"help": "attention heads per block"})
    mlp_ratio: float = field(default=4.0, metadata={"help": "feed-forward width / embed_dim"})
    layer_scale_init_value: float = field(
        default=1e-4, metadata={"help": "initial value of the per-channel residual-branch scale; 0 disables it"}
    )
    drop_path: float = field(
        default=0.1, metadata={"help": "stochastic depth rate of the last block (linearly less below)"}
    )
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout on attention probabilities"})
    layer_norm_eps: float = field(default=1e-6, metadata={"help": "LayerNorm epsilon (BEiT: 1e-6)"})
    num_mask_patches: int = field(
        default=120, metadata={"help": "patches masked per image (paper: 120 of 196, ~60%; BEiT: 75)"}
    )
    min_mask_patches_per_block: int = field(
        default=16, metadata={"help": "smallest area of one masking block, in patches"}
    )
    max_mask_patches_per_block: Optional[int] = field(
        default=None, metadata={"help": "largest area of one masking block; None: no limit"}
    )
    mask_min_aspect: float = field(
        default=0.3, metadata={"help": "masking blocks have aspect ratios in [mask_min_aspect, 1/mask_min_aspect]"}
    )
    end_of_block_targets: bool = field(
        default=True,
        metadata={"help": "targets from block outputs after the last residual sum (data2vec vision); "
                          "False: from the feed-forward output before it (speech/text)"},
    )
    ema_transformer_only: bool = field(
        default=True,
        metadata={"help": "the teacher tracks the transformer and shares the patch embedding with the "
                          "student (version 1: False is not supported; data2vec 2.0: False gives the teacher "
                          "its own EMA patch embedding, run on the images, the paper's ema_local_encoder)"},
    )
    # -- data2vec 2.0 only ------------------------------------------------------------------------
    encoder_dropout: float = field(
        default=0.0, metadata={"help": "data2vec 2.0: dropout on each block's attention output (the MLP's: "
                                       "activation_dropout, post_mlp_drop)"})
    activation_dropout: float = field(
        default=0.0, metadata={"help": "data2vec 2.0: dropout after the MLP's activation"})
    dropout_input: float = field(
        default=0.0, metadata={"help": "data2vec 2.0: dropout on the prenet's output, before the blocks"})
    layerdrop: float = field(default=0.0, metadata={"help": "data2vec 2.0: probability of skipping a block"})
    layer_norm_first: bool = field(default=False, metadata={"help": "data2vec 2.0: pre-LN blocks (paper: post-LN)"})
    mask_prob: float = field(
        default=0.8, metadata={"help": "data2vec 2.0: fraction of patches masked; the kept ones form blocks "
                                       "(inverse block masking)"})
    mask_length: int = field(
        default=3, metadata={"help": "data2vec 2.0: side of a kept block, in patches (1: kept patches at random)"})
    mask_prob_adjust: float = field(
        default=0.07, metadata={"help": "data2vec 2.0: extra kept-block centres (overlaps are trimmed at random)"})
    mask_dropout: float = field(
        default=0.0, metadata={"help": "data2vec 2.0: draw (1 + mask_dropout) times as many kept-block centres"})
    cls_loss: float = field(
        default=0.01,
        metadata={"help": "data2vec 2.0: weight of the [CLS] loss (the student's final [CLS] output regresses "
                          "the mean of the image's targets), times the masked patches; 0: off"})


@register_model("data2vec_image", dataclass=Data2VecImageConfig)
class Data2VecImageModel(TeacherStudentMixin, BaseFairseqModel):
    def __init__(self, cfg: Data2VecImageConfig):
        super().__init__()
        check_config(cfg)
        self.cfg = cfg
        self.grid = (cfg.image_size // cfg.patch_size,) * 2
        self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)
        self.cls_emb = nn.Parameter(torch.empty(1, 1, cfg.embed_dim))
        self.mask_emb: Optional[nn.Parameter] = nn.Parameter(torch.empty(1, 1, cfg.embed_dim))
        for p in (self.patch_embed.weight, self.cls_emb, self.mask_emb):
            nn.init.trunc_normal_(p, std=0.02)
        nn.init.zeros_(self.patch_embed.bias)
        self.encoder = ViTEncoder(
            self.grid, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.attention_dropout,
            cfg.drop_path, cfg.layer_scale_init_value, cfg.layer_norm_eps,
        )
        self.final_proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.init_regression_head()
        self.build_ema_teacher("encoder")

    @classmethod
    def build_model(cls, cfg: Data2VecImageConfig, task=None):
        if getattr(task, "cfg", None) is not None:  # our image tasks' augmentation options
            validate(task.cfg, "image_task", prefix="task.", run=False)
        if cfg.data2vec_version == 2:
            from d2v_plugin.image.model_v2 import Data2Vec2ImageModel

            return Data2Vec2ImageModel(cfg)
        if cfg.data2vec_version != 1:
            raise ValueError(f"model.data2vec_version={cfg.data2vec_version} must be 1 or 2")
        return cls(cfg)

    def embed(self, source: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` -> [CLS] + patch embeddings ``(B, 1+N, D)``."""
        if source.shape[-2:] != (self.cfg.image_size, self.cfg.image_size):
            raise ValueError(f"expected {self.cfg.image_size}x{self.cfg.image_size} images "
                             f"(model.image_size), got {tuple(source.shape[-2:])}")
        x = self.patch_embed(source).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_emb.expand(x.size(0), -1, -1).to(x.dtype), x], dim=1)

    def sample_mask(self, batch: int, device=None, sample_ids: Optional[Tensor] = None) -> Tensor:
        """``(B, N)`` bool block mask over the patch grid, ``True`` = masked; per sample from ``sample_ids``
        (:meth:`mask_seed`)."""
        cfg = self.cfg
        return block_mask_2d(
            batch, *self.grid, cfg.num_mask_patches, min_block=cfg.min_mask_patches_per_block,
            max_block=cfg.max_mask_patches_per_block, min_aspect=cfg.mask_min_aspect, device=device,
            **(self.mask_seed(sample_ids) or {}),
        ).flatten(1)

    def forward(self, source: Tensor, mask: bool = True, features_only: bool = False,
                mask_indices: Optional[Tensor] = None, sample_ids: Optional[Tensor] = None):
        """Args:
            source: ``(B, C, H, W)`` normalised images.
            mask_indices: optional ``(B, N)`` or ``(B, H/p, W/p)`` bool patch mask to use instead of
                sampling one (``True`` = masked).
            sample_ids: ``(B,)`` ids of the samples (fairseq's ``sample["id"]``), which seed their masks.

        Returns ``{"pred": (M, D), "target": (M, D), "ema_decay": float}`` for the M masked patches,
        or with ``features_only`` ``{"x": (B, 1+N, D)}`` ([CLS] first) from the student.
        """
        x = self.embed(source)
        student_in = x
        if mask:
            if mask_indices is None:
                mask_indices = self.sample_mask(x.size(0), x.device, sample_ids)
            mask_indices = mask_indices.reshape(x.size(0), -1).bool()
            patches = torch.where(mask_indices.unsqueeze(-1), self.mask_emb.to(x.dtype), x[:, 1:])
            student_in = torch.cat([x[:, :1], patches], dim=1)
        if features_only:
            return {"x": self.encoder(student_in)}
        if mask_indices is None:
            raise ValueError("data2vec pre-training needs masked patches: call with mask=True")
        # The teacher sees the same patch embeddings, unmasked (no gradient flows through it).
        return self.data2vec_step(Views(student_in, x, mask_indices))

    def encode_student(self, views: Views) -> Tensor:
        """The encoder's patch outputs ``(B, N, D)`` ([CLS] dropped: the loss is over patches)."""
        return self.encoder(views.student)[:, 1:]

    def teacher_top_k_blocks(self, teacher: nn.Module, views: Views) -> List[Tensor]:
        """The teacher's top K block outputs over the patches, ``K x (B, N, D)`` ([CLS] dropped before
        the per-block normalisation)."""
        blocks = teacher(views.teacher, block_outputs="end" if self.cfg.end_of_block_targets else "fc",
                         top_k=self.cfg.average_top_k_layers)
        return [b[:, 1:] for b in blocks]

    def extract_features(self, source: Tensor, mask: bool = False):
        return self.forward(source, mask=mask, features_only=True)

    # -- fine-tuning ---------------------------------------------------------------------------
    def remove_pretraining_modules(self, last_layer: Optional[int] = None) -> None:
        """Also drop the mask embedding and the encoder's final LayerNorm (BEiT fine-tunes on the raw
        last block output, normalised after pooling by the classifier)."""
        super().remove_pretraining_modules(last_layer)
        self.mask_emb = None
        self.encoder.layer_norm = None

    def upgrade_state_dict_named(self, state_dict: Dict[str, Tensor], name: str) -> None:
        prefix = f"{name}." if name else ""
        if any(k.startswith(prefix + "encoder.blocks.") for k in state_dict):
            convert_reference_state_dict(state_dict, prefix)
        super().upgrade_state_dict_named(state_dict, name)
        removed = [key for key, module in (("mask_emb", self.mask_emb),
                                           ("encoder.layer_norm.", self.encoder.layer_norm)) if module is None]
        for k in [k for k in state_dict if any(k.startswith(prefix + r) for r in removed)]:
            del state_dict[k]


def check_config(cfg: Data2VecImageConfig) -> None:
    validate(cfg, "data2vec_image", version=1)  # every option's range (d2v_plugin/core/validation.py)
    if not cfg.ema_transformer_only:
        raise ValueError("model.ema_transformer_only=false is not supported: the teacher tracks the "
                         "encoder and shares the patch embedding with the student")
    if cfg.image_size % cfg.patch_size:
        raise ValueError(f"model.image_size={cfg.image_size} is not a multiple of model.patch_size={cfg.patch_size}")
    if cfg.embed_dim % cfg.num_heads:
        raise ValueError(f"model.embed_dim={cfg.embed_dim} is not a multiple of model.num_heads={cfg.num_heads}")


# -- fairseq reference checkpoints ----------------------------------------------------------------
# Reference (fairseq examples/data2vec data2vec_vision, BEiT naming) -> ours; "{}" is the block number.
# None: not a weight here (the relative position index is rebuilt from the grid).
REFERENCE_KEY_MAP: Dict[str, Optional[str]] = {
    "patch_embed.conv.weight": "patch_embed.weight",
    "patch_embed.conv.bias": "patch_embed.bias",
    "cls_emb": "cls_emb",
    "mask_emb": "mask_emb",
    "final_proj.weight": "final_proj.weight",
    "final_proj.bias": "final_proj.bias",
    "encoder.rel_pos_bias.relative_position_bias_table": "encoder.rel_pos_bias.table",
    "encoder.rel_pos_bias.relative_position_index": None,
    "encoder.norm.weight": "encoder.layer_norm.weight",
    "encoder.norm.bias": "encoder.layer_norm.bias",
    "encoder.blocks.{}.norm1.weight": "encoder.layers.{}.self_attn_layer_norm.weight",
    "encoder.blocks.{}.norm1.bias": "encoder.layers.{}.self_attn_layer_norm.bias",
    "encoder.blocks.{}.attn.q_bias": "encoder.layers.{}.self_attn.q_proj.bias",
    "encoder.blocks.{}.attn.v_bias": "encoder.layers.{}.self_attn.v_proj.bias",
    "encoder.blocks.{}.attn.proj.weight": "encoder.layers.{}.self_attn.out_proj.weight",
    "encoder.blocks.{}.attn.proj.bias": "encoder.layers.{}.self_attn.out_proj.bias",
    "encoder.blocks.{}.gamma_1": "encoder.layers.{}.attn_layer_scale",
    "encoder.blocks.{}.gamma_2": "encoder.layers.{}.ffn_layer_scale",
    "encoder.blocks.{}.norm2.weight": "encoder.layers.{}.final_layer_norm.weight",
    "encoder.blocks.{}.norm2.bias": "encoder.layers.{}.final_layer_norm.bias",
    "encoder.blocks.{}.mlp.0.weight": "encoder.layers.{}.fc1.weight",
    "encoder.blocks.{}.mlp.0.bias": "encoder.layers.{}.fc1.bias",
    "encoder.blocks.{}.mlp.2.weight": "encoder.layers.{}.fc2.weight",
    "encoder.blocks.{}.mlp.2.bias": "encoder.layers.{}.fc2.bias",
}
# Not in the map: "encoder.blocks.{}.attn.qkv.weight", BEiT's fused (3D, D) q/k/v weight, is split
# into self_attn.{q,k,v}_proj.weight, and self_attn.k_proj.bias (BEiT has none) is set to zero.


def _map_key(key: str) -> Optional[str]:
    """Our name for a reference key; raises KeyError for a key the map does not know."""
    match = re.search(r"\.blocks\.(\d+)\.", key)
    generic = key.replace(match.group(0), ".blocks.{}.", 1) if match else key
    if generic not in REFERENCE_KEY_MAP:
        raise KeyError(f"unknown data2vec_vision reference key {key!r}")
    ours = REFERENCE_KEY_MAP[generic]
    return ours.format(match.group(1)) if ours is not None and match else ours


def _convert(src: Dict[str, Tensor], key_prefix: str) -> Dict[str, Tensor]:
    """Convert reference weights named ``key_prefix + <reference model name>``."""
    out: Dict[str, Tensor] = {}
    for key, value in src.items():
        name = key_prefix + key
        match = re.fullmatch(r"encoder\.blocks\.(\d+)\.attn\.qkv\.weight", name)
        if match:
            attn = f"encoder.layers.{match.group(1)}.self_attn."
            for proj, w in zip("qkv", value.chunk(3, dim=0)):
                out[f"{attn}{proj}_proj.weight"] = w.clone()
            out[f"{attn}k_proj.bias"] = value.new_zeros(value.size(1))
            continue
        ours = _map_key(name)
        if ours is not None:
            out[ours] = value
    return out


def convert_reference_state_dict(state_dict: Dict[str, Tensor], prefix: str = "") -> None:
    """Rename, in place, a fairseq data2vec_vision state dict (under ``prefix``) to our names.

    The reference's teacher (``_ema``: encoder parameter names -> tensors) is renamed the same way
    and left under ``_ema`` for :class:`TeacherStudentMixin` to load into the teacher.
    """
    keys = [k for k in state_dict if k.startswith(prefix) and k != prefix + REFERENCE_TEACHER_KEY]
    converted = _convert({k[len(prefix):]: state_dict.pop(k) for k in keys}, "")
    state_dict.update({prefix + k: v for k, v in converted.items()})
    teacher = state_dict.get(prefix + REFERENCE_TEACHER_KEY)
    if teacher is not None:
        converted = _convert(teacher, "encoder.")
        state_dict[prefix + REFERENCE_TEACHER_KEY] = {k[len("encoder."):]: v for k, v in converted.items()}
