"""The shared data2vec criterion: loss math, sample size, variance logging and the collapse guard."""

import json
import math
import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from d2v_plugin.core.criterion import (
    Data2VecCriterion, RepresentationCollapseError, mean_channel_stds, mean_std, regression_loss,
)
from d2v_plugin.audio.model import Data2VecAudioConfig, Data2VecAudioModel
from tests.reference.audio_config import TINY_AUDIO, make_batch


def test_l2_loss_when_beta_is_zero():
    torch.manual_seed(0)
    pred, target = torch.randn(5, 16), torch.randn(5, 16)
    got = regression_loss(pred, target, beta=0.0, scale=None)
    expected = [sum((pred[i, j] - target[i, j]) ** 2 for j in range(16)) / math.sqrt(16) for i in range(5)]
    torch.testing.assert_close(got, torch.stack(expected))


@pytest.mark.parametrize("beta", [0.25, 2.0, 4.0])
def test_smooth_l1_loss_when_beta_is_positive(beta):
    torch.manual_seed(0)
    pred, target = torch.randn(4, 8) * 3, torch.randn(4, 8)
    got = regression_loss(pred, target, beta=beta, scale=0.5)

    def smooth_l1(d):
        d = abs(d)
        return 0.5 * d * d / beta if d < beta else d - 0.5 * beta

    expected = [0.5 * sum(smooth_l1(float(pred[i, j] - target[i, j])) for j in range(8)) for i in range(4)]
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_mean_std_is_mean_channel_std():
    x = torch.randn(100, 6) * torch.arange(1, 7)
    torch.testing.assert_close(mean_std(x), torch.sqrt(x.var(dim=0) + 1e-6).mean())


def reference_mean_std(x: torch.Tensor) -> float:
    """The statistic in float64 (torch.std on the same values), with the < 2 positions case as variance 0."""
    x = x.reshape(-1, x.size(-1)).double()
    var = x.var(dim=0) if x.size(0) > 1 else torch.zeros(x.size(-1), dtype=torch.float64)
    return float(torch.sqrt(var + 1e-6).mean())


def test_mean_std_is_accurate_when_the_mean_is_large():
    torch.manual_seed(0)
    x = 1e4 + 1e-2 * torch.randn(2000, 8)  # fp32: a mean 1e6 times the std
    expected = reference_mean_std(x)
    assert float(mean_std(x)) == pytest.approx(expected, rel=1e-5)
    # The power-sum formula the distributed branch used is useless here (NaN or far off): this data
    # really tests the cancellation.
    n, s, ss = float(x.size(0)), x.sum(dim=0), (x * x).sum(dim=0)
    old = torch.sqrt(ss / (n - 1) - s * s / (n * (n - 1)) + 1e-6).mean()
    assert not (abs(float(old) - expected) < 0.1 * expected)


@pytest.mark.parametrize("rows", [0, 1])
def test_mean_std_with_fewer_than_two_positions_is_finite(rows):
    got = mean_channel_stds(torch.full((rows, 4), 3.0), torch.randn(rows, 5))
    torch.testing.assert_close(got, torch.full((2,), 1e-3))


def test_mean_channel_stds_does_each_tensor_apart():
    torch.manual_seed(0)
    a, b = torch.randn(50, 6) * 3, 100 + torch.randn(70, 4)
    got = mean_channel_stds(a, b)
    assert got.tolist() == pytest.approx([reference_mean_std(a), reference_mean_std(b)], rel=1e-5)


# -- the distributed branch: 2 gloo processes against one process on the concatenated data -----------

# (rows on rank 0, rows on rank 1): uneven shards, a rank with a single row, a rank with none.
SHARD_CASES = [(37, 1), (1, 23), (9, 0), (64, 41)]
DIM = 12


def shard_data(case: int, rank: int):
    """The (target, pred) shard of one rank: large means that differ between ranks, small spreads."""
    g = torch.Generator().manual_seed(1000 * case + rank)
    rows = SHARD_CASES[case][rank]
    target = 1e4 + 0.05 * rank + 1e-2 * torch.randn(rows, DIM, generator=g)
    pred = 3.0 * rank + torch.randn(rows, DIM, generator=g) * torch.linspace(0.5, 2.0, DIM)
    return target, pred


class ShardModel(torch.nn.Module):
    """Returns a fixed (pred, target) pair, like a data2vec model's forward."""

    def __init__(self, pred, target):
        super().__init__()
        self.pred, self.target = pred, target
        self.cfg = SimpleNamespace(loss_beta=0.0, loss_scale=None, min_target_var=0.0, min_pred_var=0.0,
                                   var_check_start_update=0)

    def forward(self, source, sample_ids=None):
        return {"pred": self.pred, "target": self.target}


COLLECTIVES = ["all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
               "reduce", "reduce_scatter", "gather", "scatter", "all_to_all"]


def distributed_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        calls = []
        for name in COLLECTIVES:
            if hasattr(dist, name):
                def counted(*args, _fn=getattr(dist, name), _name=name, **kwargs):
                    calls.append(_name)
                    return _fn(*args, **kwargs)
                setattr(dist, name, counted)
        crit = Data2VecCriterion(task=None, cpu_keep_freed_memory=False)
        results = []
        for case in range(len(SHARD_CASES)):
            target, pred = shard_data(case, rank)
            calls.clear()
            _, _, log = crit(ShardModel(pred, target), {"net_input": {"source": None}})
            results.append({"target_var": log["target_var"], "pred_var": log["pred_var"], "calls": list(calls)})
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_statistics_equal_the_single_process_ones_with_one_collective(tmp_path):
    world_size = 2
    mp.spawn(distributed_worker, args=(world_size, free_port(), str(tmp_path)), nprocs=world_size, join=True)
    for rank in range(world_size):
        with open(tmp_path / f"rank{rank}.json") as f:
            results = json.load(f)
        for case, got in enumerate(results):
            shards = [shard_data(case, r) for r in range(world_size)]
            target = torch.cat([t for t, _ in shards])
            pred = torch.cat([p for _, p in shards])
            single = mean_channel_stds(target, pred).tolist()  # one process, no torch.distributed
            assert [got["target_var"], got["pred_var"]] == pytest.approx(single, rel=1e-5), (rank, case)
            assert single == pytest.approx([reference_mean_std(target), reference_mean_std(pred)], rel=1e-5)
            assert len(got["calls"]) == 1, (rank, case, got["calls"])  # one collective for both statistics


def tiny_model(**overrides):
    torch.manual_seed(0)
    model = Data2VecAudioModel(Data2VecAudioConfig(**{**TINY_AUDIO, **overrides}))
    model.train()
    return model


def test_criterion_normalises_by_masked_positions_and_logs():
    model = tiny_model()
    source, padding_mask, mask = make_batch()
    sample = {"id": torch.arange(2), "net_input": {"source": source, "padding_mask": padding_mask, "mask_indices": mask}}
    crit = Data2VecCriterion(task=None)
    loss, sample_size, log = crit(model, sample)
    assert sample_size == int(mask.sum())
    out = model(source, padding_mask, mask_indices=mask)
    expected = regression_loss(out["pred"], out["target"], 0.0, None).sum()
    torch.testing.assert_close(loss, expected)
    assert set(log) >= {"loss", "sample_size", "target_var", "pred_var", "ema_decay"}
    assert log["ema_decay"] == pytest.approx(0.99)
    loss.backward()
    assert model.final_proj.weight.grad is not None
    assert all(p.grad is None for p in model.ema_teacher.parameters())


@pytest.mark.parametrize("which", ["target", "pred"])
def test_collapse_stops_training_with_a_clear_error(which):
    model = tiny_model(**{f"min_{which}_var": 100.0, "var_check_start_update": 3})
    source, padding_mask, mask = make_batch()
    sample = {"net_input": {"source": source, "padding_mask": padding_mask, "mask_indices": mask}}
    crit = Data2VecCriterion(task=None)
    crit(model, sample)  # before var_check_start_update: no check
    model.set_num_updates(3)
    with pytest.raises(RepresentationCollapseError, match=f"{which}_var = .* below model.min_{which}_var"):
        crit(model, sample)
