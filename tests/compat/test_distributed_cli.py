"""Data-parallel pre-training on CPU through fairseq's launcher (d2v-hydra-train, gloo)."""

from pathlib import Path

import pytest
import torch

from manifests.toy_images import write_digits
from tests.cli import BIN, REPO, json_logs, module, run

UPDATES = 12
RANK_DUMP = REPO / "tests" / "rank_dump" / "d2v_rank_dump"
QUIET = ["common.log_interval=1", "checkpoint.no_save=true", "dataset.disable_validation=true"]
DETERMINISTIC = ["model.dropout=0.0", "model.attention_dropout=0.0"]  # the audio recipes' dropouts


def train(data, run_dir: Path, dump_dir: Path, *overrides, config: str = "tiny_cpu", updates: int = UPDATES,
          modality: str = "audio", dropouts=DETERMINISTIC):
    dump_dir.mkdir(parents=True)
    proc = run([BIN / "d2v-hydra-train", "--config-dir", REPO / f"examples/{modality}/pretraining", "--config-name",
                config, f"common.user_dir={RANK_DUMP}", "common.log_format=json", f"hydra.run.dir={run_dir}",
                f"task.data={data}", *QUIET, *dropouts, f"optimization.max_update={updates}", *overrides],
               env={"D2V_DUMP_AT": str(updates - 1), "D2V_DUMP_DIR": str(dump_dir)})
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


UPDATES_V2 = 8
# data2vec 2.0's other dropouts (the recipe's 0.1), off like the ones above
DETERMINISTIC_V2 = ["model.post_mlp_drop=0.0", "model.prenet_dropout=0.0", "model.decoder_input_dropout=0.0"]


def test_v2_two_cpu_processes_stay_in_sync_and_match_one_process(speech_data, tmp_path):
    """The same for data2vec 2.0 (tiny_cpu_v2: 4 masked copies per sample, decoder, ALiBi): both ranks hold
    the same student and teacher, while each rank's copies got masks of their own."""
    v2 = dict(config="tiny_cpu_v2", updates=UPDATES_V2)
    two = train(speech_data, tmp_path / "r2", tmp_path / "dump2", *DETERMINISTIC_V2,
                "distributed_training.distributed_world_size=2", "dataset.max_tokens=80000", **v2)
    one = train(speech_data, tmp_path / "r1", tmp_path / "dump1", *DETERMINISTIC_V2, "dataset.max_tokens=80000",
                "optimization.update_freq=[2]", **v2)
    assert len(two) == len(one) == UPDATES_V2

    rank0 = torch.load(tmp_path / "dump2" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "dump2" / "rank1.pt", weights_only=True)
    assert any(k.startswith("ema_teacher.model.encoder.blocks.") for k in rank0)
    assert any(k.startswith("decoder.convs.") for k in rank0)
    assert [k for k in rank0 if not torch.equal(rank0[k], rank1[k])] == []
    # the teacher has moved away from the student: the comparison above covers two different sets of weights
    assert not torch.equal(rank0["ema_teacher.model.encoder.blocks.0.mlp.fc1.weight"],
                           rank0["encoder.blocks.0.mlp.fc1.weight"])

    # the (B * clone_batch, T) masks of the last forward, rows seeded by "sample id * clone_batch + copy"
    masks = [torch.load(tmp_path / "dump2" / f"rank{r}_mask.pt", weights_only=True) for r in (0, 1)]
    for m in masks:
        assert len(m["mask"]) == len(m["sample_ids"]) and len(m["sample_ids"]) % 4 == 0
        assert len(set(m["sample_ids"].tolist())) == len(m["sample_ids"])  # every copy its own seed
    samples = [set((m["sample_ids"] // 4).tolist()) for m in masks]
    assert samples[0].isdisjoint(samples[1])
    m0, m1 = masks[0]["mask"], masks[1]["mask"]
    rows, t = min(len(m0), len(m1)), min(m0.size(1), m1.size(1))
    assert not torch.equal(m0[:rows, :t], m1[:rows, :t])
    # the copies of one sample differ from each other too
    assert not torch.equal(m0[0], m0[1])

    # each rank's batch is the one the 1-process run accumulates in its place (crops seeded per sample): the
    # losses agree update by update up to summation order (rel. 3e-5 measured), checked at 1% per update
    assert all(abs(a - b) <= 0.01 * b for a, b in zip(two, one)), (two, one)


# -- data2vec 2.0 text and images -------------------------------------------------------------------------------

UPDATES_TEXT_IMAGE_V2 = 6


@pytest.fixture(scope="module")
def text_v2_data(tmp_path_factory):
    """A small masked_lm data-bin, made as tests/text/test_cli_v2.py makes its own (~370 blocks of 64 tokens)."""
    root = tmp_path_factory.mktemp("text_v2_ddp")
    module("manifests.toy_text", root / "raw", "--docs", 300, "--cls-train", 10, "--cls-valid", 10, "--seed", 1)
    module("manifests.text_manifest", root / "raw" / "pretrain.txt", "--dest", root / "data-bin", "--vocab-size",
           200, "--valid-percent", 0.05, "--workers", 1)
    return root / "data-bin"


@pytest.fixture(scope="module")
def image_v2_data(tmp_path_factory):
    """Digit PNGs and their manifests (180 train images: 12 batches of 16, one epoch of 6 updates on 2 ranks)."""
    root = tmp_path_factory.mktemp("image_v2_ddp")
    write_digits(str(root / "images"), per_class=20)
    module("manifests.image_manifest", root / "images", "--dest", root / "manifests", "--valid-percent", 0.1,
           "--seed", 1)
    return root / "manifests"


# every dropout of the model off ("++": image keys the recipe leaves at their defaults), plus the batch
V2_RECIPES = {
    "text": dict(
        dropouts=["model.transformer.dropout=0.0", "model.transformer.attention_dropout=0.0",
                  "model.transformer.activation_dropout=0.0", "model.post_mlp_drop=0.0",
                  "model.decoder_input_dropout=0.0"],  # no prenet (prenet_depth 0): no prenet dropout
        prefix="encoder.", masked=64 - int(64 * 0.52)),  # 31 of each 64-token block's tokens
    "image": dict(
        dropouts=["model.encoder_dropout=0.0", "model.attention_dropout=0.0", "++model.activation_dropout=0.0",
                  "++model.dropout_input=0.0", "model.post_mlp_drop=0.0", "++model.prenet_dropout=0.0",
                  "model.decoder_input_dropout=0.0", "++model.layerdrop=0.0", "dataset.batch_size=16"],
        prefix="", masked=52),  # 52 of the 64 patches
}


@pytest.mark.parametrize("modality", ["text", "image"])
def test_v2_text_and_images_two_cpu_processes_stay_in_sync_and_match_one_process(modality, request, tmp_path):
    """data2vec 2.0 text (masks: random_token_mask) and images (inverse_block_mask_2d), tiny_cpu_v2 with 4
    masked copies per sample: after a few updates on 2 gloo ranks both hold the same student and teacher, bit
    for bit, while each rank's copies got masks of their own; the losses are a 1-process run's."""
    data = request.getfixturevalue(f"{modality}_v2_data")
    recipe = V2_RECIPES[modality]
    v2 = dict(config="tiny_cpu_v2", updates=UPDATES_TEXT_IMAGE_V2, modality=modality, dropouts=recipe["dropouts"])
    two = train(data, tmp_path / "r2", tmp_path / "dump2", "distributed_training.distributed_world_size=2", **v2)
    one = train(data, tmp_path / "r1", tmp_path / "dump1", "optimization.update_freq=[2]", **v2)
    assert len(two) == len(one) == UPDATES_TEXT_IMAGE_V2

    p = recipe["prefix"]
    rank0 = torch.load(tmp_path / "dump2" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "dump2" / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    assert any(k.startswith(f"{p}ema_teacher.model.encoder.blocks.") for k in rank0)
    assert any(k.startswith(f"{p}decoder.convs.") for k in rank0)
    assert [k for k in rank0 if not torch.equal(rank0[k], rank1[k])] == []
    # the teacher has moved away from the student: the comparison above covers two different sets of weights
    assert not torch.equal(rank0[f"{p}ema_teacher.model.encoder.blocks.0.mlp.fc1.weight"],
                           rank0[f"{p}encoder.blocks.0.mlp.fc1.weight"])

    # the (B * clone_batch, tokens or patches) masks of the last forward, rows seeded by "sample id * 4 + copy"
    masks = [torch.load(tmp_path / "dump2" / f"rank{r}_mask.pt", weights_only=True) for r in (0, 1)]
    for m in masks:
        assert len(m["mask"]) == len(m["sample_ids"]) and len(m["sample_ids"]) % 4 == 0
        assert len(set(m["sample_ids"].tolist())) == len(m["sample_ids"])  # every copy its own seed
        assert m["mask"].sum(1).tolist() == [recipe["masked"]] * len(m["mask"])  # the model's masks, not padding
    samples = [set((m["sample_ids"] // 4).tolist()) for m in masks]
    assert samples[0].isdisjoint(samples[1])
    m0, m1 = masks[0]["mask"], masks[1]["mask"]
    rows = min(len(m0), len(m1))
    assert not torch.equal(m0[:rows], m1[:rows])
    assert not torch.equal(m0[0], m0[1])  # the copies of one sample differ from each other too

    # each rank's batch is the one the 1-process run accumulates in its place (text: fixed 64-token blocks;
    # images: crops seeded per sample): the losses agree update by update up to summation order and the
    # decoder's noise tokens (drawn by each rank where the 1-process run draws them twice in a row): rel. < 1e-4
    # measured for both, checked at 1% per update
    assert all(abs(a - b) <= 0.01 * b for a, b in zip(two, one)), (two, one)
