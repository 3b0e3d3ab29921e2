"""The collapse / divergence guard of the data2vec criterion (d2v_plugin/core/criterion.py, CollapseGuard):
its rule on target_var/pred_var curves, the non-finite checks naming samples and files, and one CLI run
with a NaN wav."""

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import d2v_plugin  # noqa: F401  (applies the fairseq fixes: audio datasets know their manifest rows)
from d2v_plugin.core.criterion import (
    CollapseGuard, Data2VecCriterion, RepresentationCollapseError, TrainingDivergedError,
)
from tests.cli import hydra_train


def guard_cfg(**overrides):
    """The defaults of Data2VecConfig's guard options, for a run whose EMA anneals over 300 updates (tiny)."""
    return SimpleNamespace(**{"min_target_var": 0.1, "min_pred_var": 0.01, "var_check_start_update": None,
                              "var_check_patience": 10, "zero_init_regression_head": False,
                              "ema_anneal_end_step": 300, **overrides})


def run_curve(guard, cfg, curve):
    """Feed ``[(update, target_var, pred_var), ...]`` (one training batch each) to ``guard``."""
    for update, target_var, pred_var in curve:
        guard.check(cfg, update, {"target_var": target_var, "pred_var": pred_var})


def zero_head_curve(updates=300, seed=0):
    """pred_var of a zero-initialised head as the tiny speech recipe logged it (0.0015 at update 10, 0.007 at
    20, 0.022 at 30, ~0.5 from 100 on), with batch-to-batch noise that crosses 0.01 back and forth around
    update 22; target_var ~0.56 -> 0.8."""
    rng = np.random.default_rng(seed)
    logged = {0: 0.001, 10: 0.0015, 20: 0.0071, 30: 0.0218, 40: 0.0604, 50: 0.1631, 70: 0.329, 100: 0.54,
              300: 0.62}
    xs = sorted(logged)
    pred = np.interp(np.arange(updates), xs, [logged[x] for x in xs]) * rng.uniform(0.8, 1.2, updates)
    pred[25], pred[[26, 28, 29]] = 0.012, 0.008  # reached the minimum, then three noisy batches below it
    target = np.interp(np.arange(updates), [0, 100, 300], [0.56, 0.8, 0.7]) * rng.uniform(0.95, 1.05, updates)
    return [(u, float(t), float(p)) for u, (t, p) in enumerate(zip(target, pred))]


def test_the_default_start_scales_with_the_run():
    assert CollapseGuard.start_update(guard_cfg()) == 50  # tiny recipes: 300-update anneal
    assert CollapseGuard.start_update(guard_cfg(ema_anneal_end_step=100)) == 50  # tiny image recipes
    assert CollapseGuard.start_update(guard_cfg(ema_anneal_end_step=30000)) == 3000  # speech Base
    assert CollapseGuard.start_update(guard_cfg(ema_anneal_end_step=400000)) == 5000  # fairseq's fixed start
    assert CollapseGuard.start_update(guard_cfg(ema_anneal_end_step="${optimization.max_update}")) == 5000
    assert CollapseGuard.start_update(guard_cfg(var_check_start_update=7)) == 7


def test_a_healthy_zero_head_run_is_not_stopped():
    curve = zero_head_curve()
    crossings = sum(1 for (_, _, a), (_, _, b) in zip(curve, curve[1:]) if (a < 0.01) != (b < 0.01))
    assert crossings > 1  # the noisy rise crosses the minimum more than once
    run_curve(CollapseGuard(), guard_cfg(zero_init_regression_head=True), curve)
    # even checked from update 0
    run_curve(CollapseGuard(), guard_cfg(zero_init_regression_head=True, var_check_start_update=0), curve)


def test_a_small_random_head_below_the_minimum_early_on_is_not_stopped():
    """The tiny image recipe (random head, 100 updates): pred_var 0.008 at update 5, 0.0087 at 10, 0.0092 at 15,
    0.011 at 20, 0.026 at 30, 0.07 at 40; the default start (50) lies after that."""
    logged = {0: 0.0095, 5: 0.008, 10: 0.0087, 15: 0.0092, 20: 0.0109, 25: 0.0142, 30: 0.0258, 40: 0.0731, 100: 0.3}
    xs = sorted(logged)
    pred = np.interp(np.arange(100), xs, [logged[x] for x in xs])
    pred[0] = 0.012  # the first batch above the minimum: "reached", then 20 batches below it
    run_curve(CollapseGuard(), guard_cfg(ema_anneal_end_step=100), [(u, 0.87, float(p)) for u, p in enumerate(pred)])


def test_without_the_zero_head_exemption_that_curve_would_stop():
    with pytest.raises(RepresentationCollapseError, match=r"pred_var = .* below model\.min_pred_var = 0\.01 at "
                                                          r"all \d+ training batches since the run \(re\)started"):
        run_curve(CollapseGuard(), guard_cfg(var_check_start_update=0), zero_head_curve())


@pytest.mark.parametrize("which", ["target_var", "pred_var"])
def test_a_collapse_is_stopped_after_patience_batches(which):
    curve = [(u, 0.6, 0.5) for u in range(100)]  # healthy
    collapsed = [(u, 0.001, 0.5) if which == "target_var" else (u, 0.6, 0.001) for u in range(100, 200)]
    guard, cfg = CollapseGuard(), guard_cfg(zero_init_regression_head=True)
    run_curve(guard, cfg, curve + collapsed[:9])  # 9 low batches: not yet
    with pytest.raises(RepresentationCollapseError) as e:
        run_curve(guard, cfg, collapsed[9:])
    assert str(e.value).startswith(f"{which} = 0.001 has been below model.min_{which} = "
                                   f"{0.1 if which == 'target_var' else 0.01:g} for 10 consecutive training "
                                   f"batches, at update 109: the representations collapsed")


def test_a_dip_shorter_than_the_patience_is_tolerated():
    curve = [(u, 0.6 if u % 20 else 0.05, 0.5) for u in range(300)]  # one low batch in 20
    run_curve(CollapseGuard(), guard_cfg(), curve)


def test_a_statistic_low_since_the_start_stops_at_the_start_update():
    guard, cfg = CollapseGuard(), guard_cfg()
    run_curve(guard, cfg, [(u, 0.05, 0.5) for u in range(50)])  # before update 50: not checked
    with pytest.raises(RepresentationCollapseError, match=r"target_var = 0\.05 .* since the run \(re\)started, "
                                                          r"at update 50"):
        run_curve(guard, cfg, [(50, 0.05, 0.5)])


def test_zero_minimum_turns_a_check_off():
    run_curve(CollapseGuard(), guard_cfg(min_target_var=0, min_pred_var=0), [(u, 0.0, 0.0) for u in range(100)])


# -- non-finite batches -----------------------------------------------------------------------------------------
class FixedModel(torch.nn.Module):
    """Returns the given (pred, target), like a data2vec model's forward; ``num_updates`` as fairseq sets it."""

    def __init__(self, pred, target, num_updates=7, **cfg):
        super().__init__()
        self.pred, self.target, self.num_updates = pred, target, num_updates
        self.cfg = SimpleNamespace(loss_beta=0.0, loss_scale=None, **vars(guard_cfg(**cfg)))

    def forward(self, source, padding_mask=None, sample_ids=None):
        return {"pred": self.pred, "target": self.target}


def nan_batch(pred_dtype=torch.float32):
    """4 samples, the input of sample id 12 (row 1) NaN in places; its NaN reaches the predictions and targets."""
    source = torch.randn(4, 1000)
    source[1, 100:110] = float("nan")
    pred, target = torch.randn(40, 8).to(pred_dtype), torch.randn(40, 8)
    pred[3], target[3] = float("nan"), float("nan")
    sample = {"id": torch.tensor([10, 12, 14, 16]), "net_input": {"source": source}}
    return FixedModel(pred, target), sample


@pytest.fixture
def audio_task(tmp_path):
    """An object with ``datasets["train"]``: fairseq's FileAudioDataset over a 4-row manifest (ids 0..3)."""
    from fairseq.data.audio.raw_audio_dataset import FileAudioDataset

    for i in range(4):
        sf.write(tmp_path / f"utt{i}.wav", np.zeros(4000, dtype=np.float32), 16000)
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"{tmp_path}\n" + "".join(f"utt{i}.wav\t4000\n" for i in range(4)))
    return SimpleNamespace(datasets={"train": FileAudioDataset(str(manifest), sample_rate=16000)}), manifest


def test_nan_input_stops_before_backward_naming_the_samples_and_their_manifest_rows(audio_task):
    task, manifest = audio_task
    model, sample = nan_batch()
    sample["id"] = torch.tensor([0, 2, 1, 3])  # dataset indices
    model.train()
    with pytest.raises(TrainingDivergedError) as e:
        Data2VecCriterion(task, cpu_keep_freed_memory=False)(model, sample)
    message = str(e.value)
    assert message.startswith("non-finite loss (nan) at update 7 (training): the input of 1 of 4 samples is NaN/Inf: ")
    assert f"sample id 2 = {manifest}:4 ({manifest.parent / 'utt2.wav'})" in message
    assert "sample id 0" not in message and "\n" not in message


def test_image_manifest_rows_are_named_too(tmp_path):
    from d2v_plugin.image.dataset import ImageDataset

    for name in ("a", "b"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.png")
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"{tmp_path}\na.png\nb.png\n")
    task = SimpleNamespace(datasets={"train": ImageDataset(str(manifest), transform=None)})
    model, _ = nan_batch()
    images = torch.randn(2, 3, 8, 8)
    images[1, 0, 0, 0] = float("inf")
    with pytest.raises(TrainingDivergedError, match=re.escape(f"sample id 1 = {manifest}:3 ({tmp_path / 'b.png'})")):
        Data2VecCriterion(task, cpu_keep_freed_memory=False)(model, {"id": torch.tensor([0, 1]),
                                                                      "net_input": {"source": images}})


def test_a_model_that_diverged_on_finite_input_is_stopped_with_the_batch_ids():
    model, sample = nan_batch()
    sample["net_input"]["source"] = torch.randn(4, 1000)
    with pytest.raises(TrainingDivergedError, match=r"non-finite loss \(nan\) at update 7 \(training\): the inputs are "
                                                    r"finite, but 8 prediction and 8 target values are NaN/Inf: the "
                                                    r"model diverged .* Batch: sample id 10, sample id 12, sample id "
                                                    r"14, sample id 16\."):
        Data2VecCriterion(None, cpu_keep_freed_memory=False)(model, sample)


def test_validation_batches_are_checked_too():
    model, sample = nan_batch()
    model.eval()
    with pytest.raises(TrainingDivergedError, match=r"at update 7 \(validation\): the input of 1 of 4 samples .* "
                                                    r"sample id 12\."):
        Data2VecCriterion(None, cpu_keep_freed_memory=False)(model, sample)


def test_fp16_overflow_on_finite_input_is_left_to_fairseqs_loss_scaler(caplog):
    model, sample = nan_batch(torch.float16)
    sample["net_input"]["source"] = torch.randn(4, 1000)
    loss, _, _ = Data2VecCriterion(None, cpu_keep_freed_memory=False)(model, sample)
    assert math.isnan(loss.item()) and "left to fairseq's loss scaler" in caplog.text


def test_the_listed_samples_are_capped():
    model, sample = nan_batch()
    sample["id"] = torch.arange(4)
    sample["net_input"]["source"] = torch.full((4, 10), float("nan"))
    with pytest.raises(TrainingDivergedError, match=r"the input of 4 of 4 samples"):
        Data2VecCriterion(None, cpu_keep_freed_memory=False)(model, sample)
    from d2v_plugin.core.criterion import describe_samples

    assert describe_samples(None, list(range(20))).endswith("sample id 7 and 12 more")


# -- one real run --------------------------------------------------------------------------------------------------
def test_a_nan_wav_stops_the_tiny_recipe_with_one_short_message(tmp_path):
    """fairseq-hydra-train, tiny speech recipe, a manifest (written here, not by the manifest script) whose 4th
    row is a float32 wav with NaN samples: training stops in the first update's forward, naming the file; no
    'gradients are Nan/Inf' and no NanDetector tensor dumps."""
    rng = np.random.default_rng(0)
    audio = tmp_path / "audio"
    audio.mkdir()
    rows = []
    for i in range(6):
        wav = (0.1 * rng.standard_normal(16000)).astype(np.float32)
        if i == 2:
            wav[5000:5100] = np.nan
        name = "bad.wav" if i == 2 else f"ok{i}.wav"
        sf.write(audio / name, wav, 16000, subtype="FLOAT")
        rows.append(f"{name}\t16000\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.tsv").write_text(f"{audio}\n" + "".join(rows))
    assert np.isnan(sf.read(audio / "bad.wav", dtype="float32")[0]).any()
    proc = hydra_train("examples/audio/pretraining", "tiny_cpu", tmp_path / "run",
                       [f"task.data={data}", f"checkpoint.save_dir={tmp_path / 'ckpt'}", "optimization.max_update=3",
                        "dataset.disable_validation=true"], check=False, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    message = [line for line in out.splitlines() if line.startswith("d2v_plugin.core.criterion.TrainingDivergedError")]
    assert len(message) == 1, out[-3000:]
    assert re.search(rf"non-finite loss \(nan\) at update 0 \(training\): the input of 1 of \d samples is NaN/Inf: "
                     rf"sample id 2 = {re.escape(str(data / 'train.tsv'))}:4 \({re.escape(str(audio / 'bad.wav'))}\)",
                     message[0]), message[0]
    assert "gradients are Nan/Inf" not in out and "NanDetector" not in out and "tensor(" not in out
    assert out.count("Traceback (most recent call last)") == 1
    ending = proc.stderr[proc.stderr.index("Traceback (most recent call last)"):]
    assert len(ending.splitlines()) < 60, ending  # fairseq's traceback and the one message, nothing else
    assert len(out.splitlines()) < 400, len(out.splitlines())  # all of it, fairseq's start-up logs included
