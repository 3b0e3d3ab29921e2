"""d2v-hydra-train's launcher: a world size the machine cannot hold is one line naming the overrides."""

import pytest
import torch
from omegaconf import OmegaConf

from d2v_plugin.compat.launch import devices_error
from tests.cli import BIN, REPO, run

BASE = REPO / "examples" / "audio" / "pretraining" / "base_librispeech.yaml"


def base_world_size() -> int:
    return OmegaConf.load(BASE).distributed_training.distributed_world_size


def test_paper_recipe_on_a_cpu_machine_names_the_four_overrides():
    world = base_world_size()
    message = devices_error(world, 0)
    assert message.startswith(f"distributed_training.distributed_world_size={world} asks for {world} GPU ranks, "
                              "but this machine has 0 CUDA device(s)")
    assert ("common.cpu=true common.fp16=false distributed_training.distributed_world_size=1 "
            f"+optimization.update_freq='[{world}]'") in message


def test_a_smaller_gpu_node_keeps_the_effective_batch():
    assert "distributed_world_size=8 +optimization.update_freq='[4]'" in devices_error(16, 8, [2])
    assert "distributed_world_size=3 +optimization.update_freq='[5]'" in devices_error(16, 3)  # rounded down


@pytest.mark.parametrize("world, devices", [(1, 0), (8, 8), (16, 16)])
def test_a_world_the_machine_holds_passes(world, devices):
    assert devices_error(world, devices) is None


@pytest.mark.skipif(torch.cuda.device_count() >= 16, reason="this machine can run the paper recipe")
def test_d2v_hydra_train_stops_before_building_anything(tmp_path):
    proc = run([BIN / "d2v-hydra-train", "--config-dir", REPO / "examples/audio/pretraining", "--config-name",
                "base_librispeech", f"common.user_dir={REPO / 'd2v_plugin'}", f"task.data={tmp_path / 'nowhere'}",
                f"hydra.run.dir={tmp_path / 'run'}", f"checkpoint.save_dir={tmp_path / 'ckpt'}"], check=False)
    assert proc.returncode != 0
    assert (f"d2v-hydra-train: {devices_error(base_world_size(), torch.cuda.device_count())}"
            in proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "ckpt").exists()
