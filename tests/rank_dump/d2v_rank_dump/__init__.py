"""Test-only user dir: the plugin, plus each rank saving its model state at update $D2V_DUMP_AT.

fairseq saves checkpoints from rank 0 only; to compare ranks the test needs every rank's weights.
"""

import os

import torch
import torch.distributed as dist

import d2v_plugin  # noqa: F401
from d2v_plugin.audio.model import Data2VecAudioModel

_set_num_updates = Data2VecAudioModel.set_num_updates


def set_num_updates(self, num_updates):
    _set_num_updates(self, num_updates)
    if num_updates == int(os.environ["D2V_DUMP_AT"]):
        rank = dist.get_rank() if dist.is_initialized() else 0
        torch.save(self.state_dict(), os.path.join(os.environ["D2V_DUMP_DIR"], f"rank{rank}.pt"))


Data2VecAudioModel.set_num_updates = set_num_updates
