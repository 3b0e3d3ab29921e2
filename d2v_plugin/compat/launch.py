"""``d2v-hydra-train``: ``fairseq-hydra-train`` that can also train data-parallel on CPU.

fairseq's launcher counts CUDA devices. On a CPU machine ``distributed_training.distributed_world_size=2``
stops with "world size is 2 but have 0 available devices", and under ``torchrun`` every rank divides by
``torch.cuda.device_count()`` (ZeroDivisionError). The plugin cannot fix that from ``common.user_dir``:
fairseq imports user modules only inside the processes its launcher starts. This entry point loads the
plugin first and, *only* when ``common.cpu=true`` and the world size is above 1, starts the ranks the
way fairseq would on GPUs, with the gloo backend:

* ``d2v-hydra-train ... common.cpu=true distributed_training.distributed_world_size=2`` spawns 2 local
  processes (each with ``cores / world_size`` threads, so they don't slow each other down);
* ``torchrun --nproc_per_node=2 $(which d2v-hydra-train) ... common.cpu=true`` (and multi-node
  ``torchrun --nnodes``) uses the ranks torchrun started.

Everything else, GPU runs included, goes to fairseq's own launcher unchanged; then the process is
exactly ``fairseq-hydra-train``, except that a world size this machine cannot hold (the paper recipes' 16
GPUs on a CPU-only machine or a smaller GPU node) stops with one line naming the overrides that fit it
(:func:`devices_error`) instead of fairseq's assert.
"""

import os
import random

import torch
from omegaconf import open_dict
from torch.nn.parallel import DistributedDataParallel

from fairseq import distributed_utils
from fairseq.models import distributed_fairseq_model


class CpuFriendlyDistributedDataParallel(DistributedDataParallel):
    """PyTorch's DDP, minus the device ids fairseq passes for a module that lives on the CPU.

    fairseq 0.12's ``DistributedFairseqModel`` always passes ``device_ids=[device_id]``, which PyTorch
    rejects for a CPU module. Installed only by this launcher, only for CPU ranks.
    """

    def __init__(self, module, device_ids=None, output_device=None, *args, **kwargs):
        if all(p.device.type == "cpu" for p in module.parameters()):
            device_ids = output_device = None
        super().__init__(module, device_ids, output_device, *args, **kwargs)


def _use_cpu_ddp() -> None:
    """CPU ranks only: fairseq's DDP wrapper must not pass device ids (each rank process calls this)."""
    distributed_fairseq_model.DistributedDataParallel = CpuFriendlyDistributedDataParallel


def _cpu_worker(i: int, main, cfg, kwargs):
    _use_cpu_ddp()  # a spawned process starts fresh: nothing of the parent's patching carries over
    world = cfg.distributed_training.distributed_world_size
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    distributed_utils.distributed_main(i, main, cfg, kwargs)


def devices_error(world_size: int, cuda_devices: int, update_freq=(1,)):
    """Why fairseq's single-node launcher cannot start ``world_size`` GPU ranks here, and the overrides that
    keep the recipe's effective batch (world size x ``update_freq``); None when it can."""
    if world_size <= max(1, cuda_devices):  # one rank runs anywhere (fairseq falls back to the CPU)
        return None
    total = world_size * update_freq[0]
    if cuda_devices == 0:
        fit = (f"common.cpu=true common.fp16=false distributed_training.distributed_world_size=1 "
               f"+optimization.update_freq='[{total}]' (one CPU process, the same effective batch), or the "
               f"tiny_cpu recipe")
    else:
        fit = (f"distributed_training.distributed_world_size={cuda_devices} "
               f"+optimization.update_freq='[{max(1, total // cuda_devices)}]' (the same effective batch)")
    return (f"distributed_training.distributed_world_size={world_size} asks for {world_size} GPU ranks, but this "
            f"machine has {cuda_devices} CUDA device(s). To run here add: {fit}")


def _call_main(cfg, main, **kwargs):
    dt = cfg.distributed_training
    torchrun = all(k in os.environ for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"))
    world = int(os.environ["WORLD_SIZE"]) if torchrun else dt.distributed_world_size
    if not cfg.common.cpu or world <= 1 or dt.distributed_init_method is not None:
        single_node = not (cfg.common.cpu or cfg.common.tpu or torchrun or dt.distributed_init_method is not None
                               or dt.distributed_port > 0 or "SLURM_STEP_NODELIST" in os.environ)
        if single_node:  # where fairseq asserts "world size is 16 but have 0 available devices"
            error = devices_error(world, torch.cuda.device_count(), list(cfg.optimization.update_freq))
            if error is not None:
                raise SystemExit(f"d2v-hydra-train: {error}")
        return _fairseq_call_main(cfg, main, **kwargs)
    with open_dict(cfg):
        dt.distributed_backend = "gloo"
        dt.distributed_world_size = world
        if torchrun:  # ranks were started by torchrun: join them
            dt.distributed_init_method = "env://"
            dt.distributed_rank = int(os.environ["RANK"])
            dt.device_id = int(os.environ.get("LOCAL_RANK", 0))
            dt.distributed_no_spawn = True
            dt.distributed_num_procs = 1
            _use_cpu_ddp()
            return distributed_utils.distributed_main(dt.device_id, main, cfg, kwargs)
        port = dt.distributed_port if dt.distributed_port > 0 else random.randint(10000, 60000)
        dt.distributed_init_method = f"tcp://localhost:{port}"
        dt.distributed_num_procs = world
        start_rank, dt.distributed_rank = dt.distributed_rank, None  # assigned per spawned process
    torch.multiprocessing.spawn(_cpu_worker, args=(main, cfg, {**kwargs, "start_rank": start_rank}),
                                nprocs=world, join=True)


_fairseq_call_main = distributed_utils.call_main


def main():
    import d2v_plugin  # noqa: F401  (registers everything before hydra composes the config)
    from fairseq_cli import hydra_train

    distributed_utils.call_main = _call_main
    hydra_train.cli_main()


if __name__ == "__main__":
    main()
