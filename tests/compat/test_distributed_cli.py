"""Data-parallel pre-training on CPU through fairseq's launcher (d2v-hydra-train, gloo)."""

from pathlib import Path

import torch

from tests.cli import BIN, REPO, json_logs, run

UPDATES = 12
RANK_DUMP = REPO / "tests" / "rank_dump" / "d2v_rank_dump"
DETERMINISTIC = ["model.dropout=0.0", "model.attention_dropout=0.0", "common.log_interval=1",
                 f"optimization.max_update={UPDATES}", "checkpoint.no_save=true", "dataset.disable_validation=true"]


def train(data, run_dir: Path, dump_dir: Path, *overrides):
    dump_dir.mkdir(parents=True)
    proc = run([BIN / "d2v-hydra-train", "--config-dir", REPO / "examples/audio/pretraining", "--config-name",
                "tiny_cpu", f"common.user_dir={RANK_DUMP}", "common.log_format=json", f"hydra.run.dir={run_dir}",
                f"task.data={data}", *DETERMINISTIC, *overrides],
               env={"D2V_DUMP_AT": str(UPDATES - 1), "D2V_DUMP_DIR": str(dump_dir)})
    return [r["loss"] for r in json_logs(proc.stdout + proc.stderr, "train_inner")]


def test_two_cpu_processes_stay_in_sync_and_match_one_process(speech_data, tmp_path):
    two = train(speech_data, tmp_path / "r2", tmp_path / "dump2", "distributed_training.distributed_world_size=2",
                "dataset.max_tokens=80000")
    one = train(speech_data, tmp_path / "r1", tmp_path / "dump1", "dataset.max_tokens=80000",
                "optimization.update_freq=[2]")
    assert len(two) == len(one) == UPDATES

    # after UPDATES - 1 updates both ranks hold the same student and the same EMA teacher, bit for bit
    rank0 = torch.load(tmp_path / "dump2" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "dump2" / "rank1.pt", weights_only=True)
    assert any(k.startswith("ema_teacher.") for k in rank0)
    assert [k for k in rank0 if not torch.equal(rank0[k], rank1[k])] == []

    # ... but they masked different samples differently: masks are seeded per sample id (fairseq seeds
    # torch's generator alike on every rank, which used to give every rank the same masks)
    masks = [torch.load(tmp_path / "dump2" / f"rank{r}_mask.pt", weights_only=True) for r in (0, 1)]
    assert set(masks[0]["sample_ids"].tolist()).isdisjoint(masks[1]["sample_ids"].tolist())
    m0, m1 = masks[0]["mask"], masks[1]["mask"]
    assert m0.shape != m1.shape or not torch.equal(m0, m1)
    rows = min(len(m0), len(m1))
    t = min(m0.size(1), m1.size(1))
    assert not torch.equal(m0[:rows, :t], m1[:rows, :t])

    # same data and total batch per update: the loss curves agree (each sample's mask depends only on the
    # seed, the update and its id, not on the rank; the batches' crops and padding may still differ);
    # tolerance: 10% on the mean of each half of the run
    for part in (slice(0, UPDATES // 2), slice(UPDATES // 2, UPDATES)):
        a, b = sum(two[part]) / len(two[part]), sum(one[part]) / len(one[part])
        assert abs(a - b) <= 0.10 * b, (two, one)
