"""Test-only user dir: the plugin, plus each rank saving its model state (and the mask and sample ids of its
last forward) at update $D2V_DUMP_AT.

fairseq saves checkpoints from rank 0 only; to compare ranks the test needs every rank's weights and masks.
data2vec 1.0 audio (``Data2VecAudioModel``) masks in ``apply_mask``: the dump holds its ``(B, T)`` mask and the
batch's sample ids. data2vec 2.0 draws the masks of its ``clone_batch`` copies in ``sample_mask`` (audio:
``Data2Vec2AudioModel``, text: ``Data2Vec2TextEncoder`` -> ``random_token_mask``, images:
``Data2Vec2ImageModel`` -> ``inverse_block_mask_2d``): the dump holds the ``(B*clone_batch, T)`` mask (images:
``(B*clone_batch, patches)``) and the ids that seeded its rows (``sample id * clone_batch + copy``,
:func:`~d2v_plugin.core.data2vec2.clone_sample_ids`).
"""

import inspect
import os

import torch
import torch.distributed as dist

import d2v_plugin  # noqa: F401
from d2v_plugin.audio.model import Data2VecAudioModel
from d2v_plugin.audio.model_v2 import Data2Vec2AudioModel
from d2v_plugin.image.model_v2 import Data2Vec2ImageModel
from d2v_plugin.text.model_v2 import Data2Vec2TextEncoder, Data2Vec2TextModel

_apply_mask = Data2VecAudioModel.apply_mask


def apply_mask(self, x, padding_mask, mask_indices=None, mask_channel_indices=None, sample_ids=None):
    x, mask = _apply_mask(self, x, padding_mask, mask_indices, mask_channel_indices, sample_ids)
    self._last_mask = {"mask": mask.clone(), "sample_ids": sample_ids.clone()}
    return x, mask


def patch_sample_mask(cls):
    """Keep the last mask ``cls.sample_mask`` drew with sample ids (pre-training's, not fine-tuning's)."""
    original = cls.sample_mask
    signature = inspect.signature(original)

    def sample_mask(self, *args, **kwargs):
        mask = original(self, *args, **kwargs)
        sample_ids = signature.bind(self, *args, **kwargs).arguments.get("sample_ids")
        if sample_ids is not None:
            self._last_mask = {"mask": mask.clone(), "sample_ids": sample_ids.clone()}
        return mask

    cls.sample_mask = sample_mask


def patch_set_num_updates(cls):
    original = cls.set_num_updates

    def set_num_updates(self, num_updates):
        original(self, num_updates)
        if num_updates == int(os.environ["D2V_DUMP_AT"]):
            rank = dist.get_rank() if dist.is_initialized() else 0
            # the module that drew the masks: the model, or its encoder (text)
            last_mask = next(m._last_mask for m in self.modules() if hasattr(m, "_last_mask"))
            torch.save(self.state_dict(), os.path.join(os.environ["D2V_DUMP_DIR"], f"rank{rank}.pt"))
            torch.save(last_mask, os.path.join(os.environ["D2V_DUMP_DIR"], f"rank{rank}_mask.pt"))

    cls.set_num_updates = set_num_updates


Data2VecAudioModel.apply_mask = apply_mask
for _cls in (Data2Vec2AudioModel, Data2Vec2TextEncoder, Data2Vec2ImageModel):
    patch_sample_mask(_cls)
for _cls in (Data2VecAudioModel, Data2Vec2AudioModel, Data2Vec2TextModel, Data2Vec2ImageModel):
    patch_set_num_updates(_cls)
