"""data2vec 2.0's efficient student: encode only the unmasked tokens, then put the sequence back together.

MAE-style bookkeeping, written once for every modality:

- :func:`clone_rows`: the M masked copies of each sample (``clone_batch``) that share one teacher pass,
  in ``repeat_interleave`` order (rows ``b*M .. b*M+M-1`` are copies of sample ``b``), so targets of the
  teacher's ``(B, T, C)`` are matched with ``targets.repeat_interleave(M, 0)``, never ``repeat``;
- :class:`KeptTokens` / :func:`kept_tokens`: from a ``(B, T)`` mask with the same number of masked
  positions per row, the indices of the kept (unmasked) tokens;
- :func:`gather_kept`: ``(B, T, ...) -> (B, K, ...)`` at those indices (features, padding, positions);
- :func:`fill_masked`: ``(B, K, C)`` student outputs back to ``(B, T, C)``, masked positions filled with
  noise tokens drawn as ``N(0, noise_std)`` (what the decoder sees there).
"""

from dataclasses import dataclass

import torch
from torch import Tensor


def clone_rows(x: Tensor, clones: int) -> Tensor:
    """``(B, ...) -> (B*clones, ...)``: each row repeated ``clones`` times in a row (repeat_interleave)."""
    return x if clones == 1 else x.repeat_interleave(clones, dim=0)


@dataclass
class KeptTokens:
    """Where the kept tokens of each row are.

    Attributes:
        mask: ``(B, T)`` bool, ``True`` = masked (the loss positions).
        order: ``(B, T)`` long, every position of a row, the ``K`` kept ones first, then the masked ones:
            ``x_kept`` is ``x`` gathered at ``order[:, :K]``, and the decoder's noise token ``j`` goes to
            ``order[:, K + j]``. It is ``torch.argsort`` of the mask, as in fairseq's data2vec_multi, so the
            same masks and noise give the same decoder input on both sides. That sort is not stable: the
            kept tokens need not be in time order. Nothing depends on it: attention is order-free and
            every position-dependent input (ALiBi, padding) is gathered with the same indices.
    """

    mask: Tensor
    order: Tensor

    @property
    def num_kept(self) -> int:
        return self.order.size(1) - int(self.mask[0].sum()) if self.mask.size(0) else 0

    @property
    def keep(self) -> Tensor:
        """``(B, K)`` the kept positions of each row."""
        return self.order[:, : self.num_kept]


def kept_tokens(mask: Tensor) -> KeptTokens:
    """The kept positions of a ``(B, T)`` bool mask in which every row masks the same number of positions.

    Equal counts are what let the kept tokens form a dense ``(B, K, C)`` batch; the mask samplers of
    :mod:`d2v_plugin.core.masking` guarantee them (``require_same_masks``), and a mask without them is
    an error here rather than a silently unmasked token.
    """
    mask = mask.bool()
    counts = mask.sum(dim=1)
    if counts.numel() and not bool((counts == counts[0]).all()):
        raise ValueError(f"data2vec 2.0 needs the same number of masked positions in every row, got "
                         f"{counts.tolist()}")
    return KeptTokens(mask=mask, order=mask.to(torch.uint8).argsort(dim=1))


def gather_kept(x: Tensor, kept: KeptTokens) -> Tensor:
    """``(B, T, ...) -> (B, K, ...)``: the rows of ``x`` at the kept positions."""
    keep = kept.keep
    index = keep.view(*keep.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, index)


def fill_masked(x_kept: Tensor, kept: KeptTokens, noise_std: float) -> Tensor:
    """``(B, K, C) -> (B, T, C)``: kept tokens back in place, masked ones drawn from ``N(0, noise_std)``.

    The noise is drawn as one ``(B, T - K, C)`` tensor from torch's generator, at the point and in the
    layout fairseq's data2vec_multi draws it (the parity tests rely on both).
    """
    B, K, C = x_kept.shape
    noise = x_kept.new_empty(B, kept.mask.size(1) - K, C).normal_(0, noise_std)
    rows = torch.cat([x_kept, noise], dim=1)  # row j goes to position order[:, j]
    return torch.empty_like(rows).scatter_(1, kept.order.unsqueeze(-1).expand(-1, -1, C), rows)
