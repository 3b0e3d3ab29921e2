"""Test-only user dir: the plugin, plus each rank saving its model state (and the frame mask and sample ids
of its last forward) at update $D2V_DUMP_AT.

fairseq saves checkpoints from rank 0 only; to compare ranks the test needs every rank's weights and masks.
data2vec 1.0 (``Data2VecAudioModel``) masks in ``apply_mask``: the dump holds its ``(B, T)`` mask and the
batch's sample ids. data2vec 2.0 (``Data2Vec2AudioModel``) draws the masks of its ``clone_batch`` copies in
``sample_mask``: the dump holds the ``(B*clone_batch, T)`` mask and the ids that seeded its rows
(``sample id * clone_batch + copy``, :func:`~d2v_plugin.core.data2vec2.clone_sample_ids`).
"""

import os

import torch
import torch.distributed as dist

import d2v_plugin  # noqa: F401
from d2v_plugin.audio.model import Data2VecAudioModel
from d2v_plugin.audio.model_v2 import Data2Vec2AudioModel

_apply_mask = Data2VecAudioModel.apply_mask
_sample_mask = Data2Vec2AudioModel.sample_mask


def apply_mask(self, x, padding_mask, mask_indices=None, mask_channel_indices=None, sample_ids=None):
    x, mask = _apply_mask(self, x, padding_mask, mask_indices, mask_channel_indices, sample_ids)
    self._last_mask = {"mask": mask.clone(), "sample_ids": sample_ids.clone()}
    return x, mask


def sample_mask(self, rows, frames, padding_mask, sample_ids, device):
    mask = _sample_mask(self, rows, frames, padding_mask, sample_ids, device)
    if sample_ids is not None:  # pre-training's masks (not fine-tuning's, which have no sample ids)
        self._last_mask = {"mask": mask.clone(), "sample_ids": sample_ids.clone()}
    return mask


def patch_set_num_updates(cls):
    original = cls.set_num_updates

    def set_num_updates(self, num_updates):
        original(self, num_updates)
        if num_updates == int(os.environ["D2V_DUMP_AT"]):
            rank = dist.get_rank() if dist.is_initialized() else 0
            torch.save(self.state_dict(), os.path.join(os.environ["D2V_DUMP_DIR"], f"rank{rank}.pt"))
            torch.save(self._last_mask, os.path.join(os.environ["D2V_DUMP_DIR"], f"rank{rank}_mask.pt"))

    cls.set_num_updates = set_num_updates


Data2VecAudioModel.apply_mask = apply_mask
Data2Vec2AudioModel.sample_mask = sample_mask
patch_set_num_updates(Data2VecAudioModel)
patch_set_num_updates(Data2Vec2AudioModel)
