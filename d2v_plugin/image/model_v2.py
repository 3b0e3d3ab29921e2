"""``data2vec_image`` with ``model.data2vec_version=2``: data2vec 2.0 for images (Baevski et al. 2023).

Student: patch embedding (a strided convolution) + fixed 2-D sin-cos positions -> ``clone_batch`` copies,
each with its own inverse block mask (the kept patches form blocks, :func:`~d2v_plugin.core.masking.
inverse_block_mask_2d`) -> only the kept patches, a learned [CLS] in front -> context layer norm ->
``prenet_depth`` blocks -> ``depth`` blocks -> 2-D conv decoder over the patch grid (noise tokens at the
masked patches) -> ``final_proj`` at the masked patches.
Teacher: an EMA copy of the [CLS], the prenet and the blocks and (``ema_transformer_only=false``, the
paper's ``ema_local_encoder``) of the patch embedding too, run once per image on the whole image; targets:
the instance-normed MLP outputs of its top-K blocks over the patches, averaged, then layer-normed
(``instance_norm_target_layer`` + ``layer_norm_targets``, :mod:`d2v_plugin.core.targets`).
[CLS] loss (``cls_loss``): the student's final [CLS] output of each copy regresses the mean over the
image's patches of its targets, with the regression loss (``loss_beta``, ``loss_scale``), summed and
multiplied by ``cls_loss`` times the batch's masked patches; returned as ``extra_losses["cls"]``, which the
``data2vec`` criterion adds to the loss and logs as ``loss_cls``.

Options read: ``image_size``, ``patch_size``, ``in_channels``, ``embed_dim``, ``depth``, ``num_heads``,
``mlp_ratio``, ``attention_dropout``, ``end_of_block_targets``, ``ema_transformer_only`` and those marked
"data2vec 2.0" in :class:`~d2v_plugin.image.model.Data2VecImageConfig`; version 1's ViT and mask options
(``layer_scale_init_value``, ``drop_path``, ``layer_norm_eps``, ``num_mask_patches``, ``*_mask_patches_per_block``,
``mask_min_aspect``) are not used.

Deliberate differences from fairseq's data2vec_multi (same loss with the same weights, masks and noise:
tests/image/test_model_v2.py):

* Masks are seeded per sample (``common.seed``, update, sample id; :meth:`mask_seed`); the reference draws
  them from torch's global generator, the same on every data-parallel rank. The mask semantics are the same.
* The decoder's input dropout is applied out of place (:mod:`d2v_plugin.core.decoder`). The reference's is in
  place on the encoder output, which its [CLS] loss reads afterwards: with ``decoder_input_dropout > 0`` its
  [CLS] prediction is the *dropped-out* output. Ours reads the encoder's output as it is. The paper's image
  recipe has that dropout at 0, where both agree.
* The reference marks 1-D parameters, biases and ALiBi scales for no weight decay
  (``optim_overrides = {"optimizer": {"weight_decay_scale": 0}}``), but fairseq's composite optimizer only
  applies that override when the optimizer config has an ``optimizer_config`` key, which it never has: every
  parameter gets the same weight decay in the reference's runs. So do ours (fairseq's adam here), which is
  what the reference actually trained with.
* The fixed positions are a buffer, computed here (not a frozen parameter); a reference checkpoint's copy
  loads into it, and equals ours.
"""

from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import Tensor, nn

from fairseq.models import BaseFairseqModel

from d2v_plugin.compat.data2vec_multi import shared_options
from d2v_plugin.core.criterion import regression_loss
from d2v_plugin.core.data2vec2 import Data2Vec2Mixin
from d2v_plugin.core.masking import inverse_block_mask_2d
from d2v_plugin.core.teacher_student import Views
from d2v_plugin.core.unmasked import clone_rows
from d2v_plugin.core.validation import validate


def sincos_positions_2d(dim: int, height: int, width: int) -> Tensor:
    """Fixed 2-D sine-cosine positions of a ``height x width`` patch grid, ``(H*W, dim)`` in row-major order.

    The first half of the channels encodes the patch's column, the second half its row; each half is
    ``[sin(p * f_k), cos(p * f_k)]`` over ``dim / 4`` frequencies ``f_k = 10000^(-k / (dim / 4))`` (MAE's and
    data2vec 2.0's layout). Computed in float64, returned as float32.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need an embedding dim divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                torch.arange(width, dtype=torch.float64), indexing="ij")

    def encode(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * freqs
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


class _TeacherScope(nn.Module):
    """What the teacher tracks, under the model's own parameter names: the [CLS] (``extra_tokens``), the
    transformer (``encoder``) and, with its own patch embedding, ``patch_embed``.

    A view, never registered in the model (so nothing appears twice in its state dict): the modules and the
    [CLS] parameter are the model's own objects, and the teacher is an EMA copy of this.
    """

    def __init__(self, model: "Data2Vec2ImageModel", own_patch_embed: bool):
        super().__init__()
        if own_patch_embed:
            self.patch_embed = model.patch_embed
        self.extra_tokens = model.extra_tokens
        self.encoder = model.encoder


@dataclass
class ImageViews(Views):
    """:class:`Views` plus ``cls_target``: ``(B, C)`` the mean over patches of each image's targets, set when
    the teacher's targets are made (what the [CLS] loss regresses)."""

    cls_target: Optional[Tensor] = None


class Data2Vec2ImageModel(Data2Vec2Mixin, BaseFairseqModel):
    """Built by ``Data2VecImageModel.build_model`` when ``cfg.data2vec_version == 2``."""

    reference_modality = "IMAGE"
    num_extra_tokens = 1  # [CLS]

    def __init__(self, cfg):
        super().__init__()
        check_config_v2(cfg)
        self.cfg = cfg
        side = cfg.image_size // cfg.patch_size
        self.grid = (side, side)
        dim = cfg.embed_dim
        self.patch_embed = nn.Conv2d(cfg.in_channels, dim, cfg.patch_size, stride=cfg.patch_size)
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.size(0), -1))  # as a linear map of the flattened patch (MAE)
        self.extra_tokens = nn.Parameter(torch.empty(1, self.num_extra_tokens, dim).normal_())
        self.register_buffer("positions", sincos_positions_2d(dim, side, side).unsqueeze(0))
        self.build_data2vec2(
            dim, cfg.num_heads, cfg.depth, cfg.mlp_ratio, dropout=cfg.encoder_dropout,
            attention_dropout=cfg.attention_dropout, activation_dropout=cfg.activation_dropout,
            dropout_input=cfg.dropout_input, layerdrop=cfg.layerdrop, layer_norm_first=cfg.layer_norm_first,
            grid=self.grid, end_of_block_targets=cfg.end_of_block_targets)
        # The teacher tracks a view whose names are the model's own (so its state-dict prefix is "").
        self.__dict__["teacher_tracked"] = _TeacherScope(self, own_patch_embed=not cfg.ema_transformer_only)
        self.build_ema_teacher("teacher_tracked")
        self.tracked_state_prefix = ""

    # -- embeddings ----------------------------------------------------------------------------
    def embed(self, source: Tensor, patch_embed: Optional[nn.Module] = None) -> Tensor:
        """Images ``(B, C, H, W)`` -> patch embeddings + fixed positions ``(B, N, D)`` (no [CLS])."""
        if source.shape[-2:] != (self.cfg.image_size, self.cfg.image_size):
            raise ValueError(f"expected {self.cfg.image_size}x{self.cfg.image_size} images "
                             f"(model.image_size), got {tuple(source.shape[-2:])}")
        x = (patch_embed or self.patch_embed)(source).flatten(2).transpose(1, 2)
        return x + self.positions.to(x.dtype)

    def with_cls(self, patches: Tensor, extra_tokens: Optional[Tensor] = None) -> Tensor:
        """``(B, N, D)`` -> ``(B, 1+N, D)``, [CLS] first."""
        cls = self.extra_tokens if extra_tokens is None else extra_tokens
        return torch.cat([cls.expand(patches.size(0), -1, -1).to(patches.dtype), patches], dim=1)

    def sample_mask(self, rows: int, sample_ids: Optional[Tensor] = None, device=None) -> Tensor:
        """``(rows, N)`` inverse block masks, the same number of masked patches per row, ``True`` = masked."""
        cfg = self.cfg
        return inverse_block_mask_2d(
            rows, *self.grid, cfg.mask_prob, cfg.mask_length, mask_prob_adjust=cfg.mask_prob_adjust,
            mask_dropout=cfg.mask_dropout, device=device, **(self.mask_seed(sample_ids) or {}),
        ).flatten(1)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, source: Tensor, mask: bool = True, features_only: bool = False,
                mask_indices: Optional[Tensor] = None, sample_ids: Optional[Tensor] = None, **unused):
        """Args:
            source: ``(B, C, H, W)`` normalised images.
            mask_indices: optional ``(B*clone_batch, N)`` (or ``(B*clone_batch, H/p, W/p)``) bool patch masks
                instead of sampled ones (copies of an image next to each other, ``True`` = masked, the same
                number of masked patches per row).
            sample_ids: ``(B,)`` sample ids (fairseq's ``sample["id"]``), which seed the masks.

        Returns ``{"pred": (M, D), "target": (M, D), "ema_decay", "extra_losses": {"cls": ()}}`` for the M masked
        patches of all copies (no ``extra_losses`` when ``cls_loss`` is 0), or with ``features_only`` (no
        masking) ``{"x": (B, 1+N, D)`` ([CLS] first), ``"layer_results"``: each block's MLP output over the
        patches ``}``.
        """
        patches = self.embed(source)
        if features_only or not mask:
            x, layer_results = self.encoder(self.with_cls(patches), extra_tokens=self.num_extra_tokens,
                                            min_target_layer=0)
            return {"x": x, "layer_results": layer_results}

        x, _, clone_ids = self.clones(patches, None, sample_ids)
        if mask_indices is None:
            mask_indices = self.sample_mask(x.size(0), clone_ids, x.device)
        mask_indices = mask_indices.reshape(x.size(0), -1).bool()
        student = self.student_tokens(x, None, mask_indices)
        teacher_input = patches if self.cfg.ema_transformer_only else source
        views = ImageViews(student, teacher_input, mask_indices)
        out = self.data2vec_step(views)
        cfg = self.cfg
        if cfg.cls_loss > 0:
            pred = student.extra_outputs[:, self.num_extra_tokens - 1]
            target = clone_rows(views.cls_target, cfg.clone_batch)
            loss = regression_loss(pred, target, cfg.loss_beta, cfg.loss_scale).sum()
            out["extra_losses"] = {"cls": loss * (cfg.cls_loss * out["pred"].size(0))}
        return out

    def teacher_targets(self, views: ImageViews, dtype: torch.dtype = torch.float32) -> Tensor:
        target = super().teacher_targets(views, dtype)
        views.cls_target = target.mean(dim=1)
        return target

    def teacher_top_k_blocks(self, teacher: nn.Module, views: Views) -> List[Tensor]:
        """The MLP outputs of the teacher's top K blocks over the patches of the whole images, ``K x (B, N, D)``."""
        if self.cfg.ema_transformer_only:
            patches = views.teacher  # the student's patch embeddings (with positions), unmasked
        else:  # its own EMA patch embedding on the images
            patches = self.embed(views.teacher.to(teacher.patch_embed.weight.dtype), teacher.patch_embed)
        _, targets = teacher.encoder(self.with_cls(patches, teacher.extra_tokens),
                                     extra_tokens=self.num_extra_tokens,
                                     min_target_layer=self.cfg.depth - self.cfg.average_top_k_layers)
        return targets

    def extract_features(self, source: Tensor, mask: bool = False):
        return self.forward(source, mask=False, features_only=True)


def check_config_v2(cfg) -> None:
    validate(cfg, "data2vec_image", version=2)  # every option's range (d2v_plugin/core/validation.py)
    if cfg.image_size % cfg.patch_size:
        raise ValueError(f"model.image_size={cfg.image_size} is not a multiple of model.patch_size={cfg.patch_size}")
    if cfg.embed_dim % cfg.num_heads:
        raise ValueError(f"model.embed_dim={cfg.embed_dim} is not a multiple of model.num_heads={cfg.num_heads}")
    if cfg.embed_dim % 4:
        raise ValueError(f"model.embed_dim={cfg.embed_dim} must be a multiple of 4 (2-D sin-cos positions)")


def config_from_data2vec_multi(cfg: dict) -> dict:
    """Our ``data2vec_image`` options for a fairseq ``data2vec_multi`` image model config (a plain dict).

    Raises a ValueError naming any option we do not implement (see :mod:`d2v_plugin.compat.data2vec_multi`).
    ``init_extra_token_zero`` is accepted whatever its value: it only sets the [CLS]'s initial value, which
    a checkpoint's weights replace (ours starts from a normal draw, the paper's setting).
    """
    options, image = shared_options(cfg, "IMAGE")
    if cfg.get("ema_encoder_only", True):
        raise ValueError("data2vec_multi option model.ema_encoder_only=true (a teacher of the blocks only, fed "
                         "the student's prenet) is not supported for images")
    mask_length = image.get("mask_length", 5)
    checks = [("num_extra_tokens", image.get("num_extra_tokens", 0), 1),
              ("embed_dim", image.get("embed_dim", 768), cfg.get("embed_dim", 768)),
              ("fixed_positions", image.get("fixed_positions", True), True),
              ("use_alibi_encoder", image.get("use_alibi_encoder", False), False),
              ("transformer_decoder", image.get("transformer_decoder", False), False),
              ("enc_dec_transformer", image.get("enc_dec_transformer", False), False),
              ("mask_channel_prob", image.get("mask_channel_prob", 0), 0),
              ("local_grad_mult", image.get("local_grad_mult", 1.0), 1.0)]
    if mask_length > 1:  # with mask_length 1 the reference masks at random whatever inverse_mask says
        checks.append(("inverse_mask", image.get("inverse_mask", False), True))
    for name, value, supported in checks:
        if value != supported:
            raise ValueError(f"data2vec_multi option model.modalities.image.{name}={value!r} is not supported "
                             f"by d2v_plugin's data2vec 2.0 images (only {supported!r})")
    options.update(
        depth=cfg["depth"], embed_dim=cfg["embed_dim"], num_heads=cfg["num_heads"],
        mlp_ratio=cfg.get("mlp_ratio", 4.0), encoder_dropout=cfg.get("encoder_dropout", 0.1),
        attention_dropout=cfg.get("attention_dropout", 0.1), activation_dropout=cfg.get("activation_dropout", 0.0),
        dropout_input=cfg.get("dropout_input", 0.0), layerdrop=cfg.get("layerdrop", 0.0),
        layer_norm_first=cfg.get("layer_norm_first", False), end_of_block_targets=False,
        image_size=image.get("input_size", 224), patch_size=image.get("patch_size", 16),
        in_channels=image.get("in_chans", 3), cls_loss=cfg.get("cls_loss", 0.0),
        mask_prob_adjust=image.get("mask_prob_adjust", 0.0),
        ema_transformer_only=not image.get("ema_local_encoder", False),
    )
    return options
