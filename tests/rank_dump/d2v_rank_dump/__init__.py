"""Test-only user dir: the plugin, plus each rank saving its model state (and the frame mask and sample ids
of its last forward) at update $D2V_DUMP_AT.

fairseq saves checkpoints from rank 0 only; to compare ranks the test needs every rank's weights and masks.
"""

import os

import torch
import torch.distributed as dist

import d2v_plugin  # noqa: F401
from d2v_plugin.audio.model import Data2VecAudioModel

_set_num_updates = Data2VecAudioModel.set_num_updates
_apply_mask = Data2VecAudioModel.apply_mask


def apply_mask(self, x, padding_mask, mask_indices=None, mask_channel_indices=None, sample_ids=None):
    x, mask = _apply_mask(self, x, padding_mask, mask_indices, mask_channel_indices, sample_ids)
    self._last_mask = {"mask": mask.clone(), "sample_ids": sample_ids.clone()}
    return x, mask


def set_num_updates(self, num_updates):
    _set_num_updates(self, num_updates)
    if num_updates == int(os.environ["D2V_DUMP_AT"]):
        rank = dist.get_rank() if dist.is_initialized() else 0
        torch.save(self.state_dict(), os.path.join(os.environ["D2V_DUMP_DIR"], f"rank{rank}.pt"))
        torch.save(self._last_mask, os.path.join(os.environ["D2V_DUMP_DIR"], f"rank{rank}_mask.pt"))


Data2VecAudioModel.apply_mask = apply_mask
Data2VecAudioModel.set_num_updates = set_num_updates
