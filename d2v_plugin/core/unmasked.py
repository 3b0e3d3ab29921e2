"""data2vec 2.0's efficient student: encode only the unmasked tokens, then put the sequence back together.

MAE-style bookkeeping, written once for every modality:

- :func:`clone_rows`: the M masked copies of each sample (``clone_batch``) that share one teacher pass,
  in ``repeat_interleave`` order (rows ``b*M .. b*M+M-1`` are copies of sample ``b``), so targets of the
  teacher's ``(B, T, C)`` are matched with ``targets.repeat_interleave(M, 0)``, never ``repeat``;
- :class:`KeptTokens` / :func:`kept_tokens`: from a ``(B, T)`` mask with the same number of masked
  positions per row, the indices of the kept (unmasked) tokens in time order;
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
        keep: ``(B, K)`` long, the kept positions of each row in increasing order.
    """

    mask: Tensor
    keep: Tensor

    @property
    def num_kept(self) -> int:
        return self.keep.size(1)


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
    # a stable sort puts the kept positions (False) first, each group in time order
    order = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices
    keep = order[:, : mask.size(1) - (int(counts[0]) if counts.numel() else 0)]
    return KeptTokens(mask=mask, keep=keep)


def gather_kept(x: Tensor, kept: KeptTokens) -> Tensor:
    """``(B, T, ...) -> (B, K, ...)``: the rows of ``x`` at the kept positions."""
    index = kept.keep.view(*kept.keep.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, index)


def fill_masked(x_kept: Tensor, kept: KeptTokens, noise_std: float) -> Tensor:
    """``(B, K, C) -> (B, T, C)``: kept tokens back in place, masked ones drawn from ``N(0, noise_std)``.

    The noise is drawn as one ``(B, T - K, C)`` tensor from torch's generator (fairseq's data2vec_multi
    draws the same shape at the same point, which the parity tests rely on).
    """
    B, K, C = x_kept.shape
    T = kept.mask.size(1)
    noise = x_kept.new_empty(B, T - K, C).normal_(0, noise_std)
    out = x_kept.new_empty(B, T, C)
    out[kept.mask] = noise.reshape(-1, C)
    out.scatter_(1, kept.keep.unsqueeze(-1).expand(-1, -1, C), x_kept)
    return out
