"""``audio_ctc`` splits: only the training split is filtered/cropped, and loading a split never edits the config."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from omegaconf import OmegaConf

import d2v_plugin  # noqa: F401  (registers audio_ctc)
from d2v_plugin.audio.task import AudioCtcConfig, train_subset_of
from fairseq import tasks
from manifests import labels

SR = 16000
MIN_SAMPLES, MAX_SAMPLES = 1000, 4000
FRAMES = [800, 1200, 3000, 5000, 9000, 600]  # two clips shorter than MIN_SAMPLES, two longer than MAX_SAMPLES
TEXTS = ["A", "AB", "BA", "ABBA", "B A", "BB"]


def write_corpus(root: Path, splits) -> Path:
    """``root/data`` with SPLIT.tsv / SPLIT.ltr for every split (the same clips) and dict.ltr.txt."""
    audio, data = root / "audio", root / "data"
    audio.mkdir()
    data.mkdir()
    rng = np.random.default_rng(0)
    with open(root / "transcripts.tsv", "w") as f:
        for i, (frames, text) in enumerate(zip(FRAMES, TEXTS)):
            sf.write(str(audio / f"utt{i}.wav"), (0.1 * rng.standard_normal(frames)).astype(np.float32), SR,
                     subtype="PCM_16")
            f.write(f"utt{i}\t{text}\n")
    for split in splits:
        with open(data / f"{split}.tsv", "w") as f:
            f.write(f"{audio}\n")
            for i, frames in enumerate(FRAMES):
                f.write(f"utt{i}.wav\t{frames}\n")
    assert labels.main([str(data), "--transcripts", str(root / "transcripts.tsv"),
                        "--train-split", splits[0]]) == 0
    return data


def task_node(data: Path):
    return OmegaConf.merge(OmegaConf.structured(AudioCtcConfig), {
        "_name": "audio_ctc", "data": str(data), "labels": "ltr", "normalize": False,
        "min_sample_size": MIN_SAMPLES, "max_sample_size": MAX_SAMPLES, "tpu": False, "seed": 1,
    })


def audio_dataset(task, split):
    return task.datasets[split].dataset  # AddTargetDataset -> FileAudioDataset


def collated_frames(task, split) -> int:
    """The length of a batch of the whole split (labelled data is padded, and cropped to max_sample_size)."""
    ds = task.datasets[split]
    return ds.collater([ds[i] for i in range(len(ds))])["net_input"]["source"].size(-1)


def assert_filtered_and_cropped(task, split):
    ds = audio_dataset(task, split)
    kept = [f for f in FRAMES if f >= MIN_SAMPLES]
    assert len(task.datasets[split]) == len(kept)
    assert ds.min_sample_size == MIN_SAMPLES and ds.max_sample_size == MAX_SAMPLES
    assert list(ds.sizes) == kept
    assert collated_frames(task, split) == MAX_SAMPLES  # the long clips are cropped


def assert_every_row_uncropped(task, split):
    ds = audio_dataset(task, split)
    assert len(task.datasets[split]) == len(FRAMES)
    assert list(ds.sizes) == FRAMES
    assert collated_frames(task, split) == max(FRAMES)  # nothing cropped
    # every row keeps its own label (none dropped or shifted)
    assert [task.datasets[split].get_label(i).strip() for i in range(len(FRAMES))] == [labels.letters(t) for t in TEXTS]


def test_loading_valid_first_leaves_train_filtered_and_cropped(tmp_path):
    data = write_corpus(tmp_path, ["train", "valid"])
    task = tasks.setup_task(task_node(data))
    before = OmegaConf.to_container(task.cfg)
    cfg_object = task.cfg

    task.load_dataset("valid")  # fairseq-train loads the validation splits before the training split
    assert task.cfg is cfg_object and OmegaConf.to_container(task.cfg) == before
    assert_every_row_uncropped(task, "valid")

    task.load_dataset("train")
    assert_filtered_and_cropped(task, "train")
    assert OmegaConf.to_container(task.cfg) == before


def test_a_task_cfg_passed_in_is_not_changed(tmp_path):
    data = write_corpus(tmp_path, ["train", "valid"])
    task = tasks.setup_task(task_node(data))
    passed = task_node(data)
    before = OmegaConf.to_container(passed)
    task.load_dataset("valid", passed)
    assert OmegaConf.to_container(passed) == before
    assert_every_row_uncropped(task, "valid")
    assert task.cfg.min_sample_size == MIN_SAMPLES and task.cfg.max_sample_size == MAX_SAMPLES


def test_train_subset_follows_dataset_train_subset(tmp_path):
    data = write_corpus(tmp_path, ["mytrain", "train"])
    root = OmegaConf.create({"common": {"tpu": False, "seed": 1}, "dataset": {"train_subset": "mytrain"},
                             "task": task_node(data)})
    assert OmegaConf.to_container(root.task)["train_subset"] == "${dataset.train_subset}"
    task = tasks.setup_task(root.task)
    assert task.cfg.train_subset == "mytrain"
    task.load_dataset("train")  # not the training split here: every row
    assert_every_row_uncropped(task, "train")
    task.load_dataset("mytrain")
    assert_filtered_and_cropped(task, "mytrain")


def test_train_subset_defaults_to_train_outside_hydra():
    assert train_subset_of(OmegaConf.structured(AudioCtcConfig)) == "train"  # ${dataset.train_subset} unresolved
    assert train_subset_of(AudioCtcConfig()) == "train"  # the dataclass holds the "${...}" string
    assert train_subset_of(OmegaConf.merge(OmegaConf.structured(AudioCtcConfig), {"train_subset": "tr"})) == "tr"


@pytest.mark.parametrize("problem", ["count", "unknown_letter"])
def test_bad_labels_fail_naming_the_row(tmp_path, problem):
    """Checked when the split loads, before any update (no training run needed to see the message)."""
    from d2v_plugin.core.errors import ManifestError

    data = write_corpus(tmp_path, ["train", "valid"])
    lines = (data / "valid.ltr").read_text().splitlines()
    if problem == "count":
        lines, expected = lines[:-1], r"valid.ltr: 5 labels for 6 manifest rows .*row utt5.wav \(line 7\) has no label"
    else:
        lines[2] += " Q |"
        expected = r"valid.ltr:3: row utt2.wav has symbols not in the dictionary: \['Q'\]"
    (data / "valid.ltr").write_text("\n".join(lines) + "\n")
    task = tasks.setup_task(task_node(data))
    with pytest.raises(ManifestError, match=expected):
        task.load_dataset("valid")
