"""The fixes to fairseq: applied from one function, listed in the README, causes kept chained; and no
process-wide setting (allocator, DDP wrapper) changes unless training asks for it."""

import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from d2v_plugin.compat import fairseq_fixes
from d2v_plugin.core.errors import ManifestError
from tests.cli import REPO


def test_readme_lists_exactly_the_fixes_the_code_applies():
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Fixes to fairseq", 1)[1].split("\n#", 1)[0]
    listed = re.findall(r"^\d+\. `([a-z_]+)`", section, flags=re.M)
    assert listed == list(fairseq_fixes.FIXES)


def test_apply_is_idempotent_and_patches_once():
    from fairseq.data import data_utils

    before = data_utils.batch_by_size
    fairseq_fixes.apply()
    fairseq_fixes.apply()
    assert data_utils.batch_by_size is before and getattr(before, "_d2v_keeps_tail", False)


def test_unreadable_audio_names_the_row_and_keeps_the_cause(tmp_path):
    from fairseq.data.audio.raw_audio_dataset import FileAudioDataset

    sf.write(tmp_path / "a.wav", np.zeros(4000, dtype=np.float32), 16000)
    (tmp_path / "b.wav").write_bytes(b"RIFF not really a wav file at all" * 10)
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"{tmp_path}\na.wav\t4000\nb.wav\t4000\n")
    dataset = FileAudioDataset(str(manifest), sample_rate=16000)
    with pytest.raises(ManifestError, match=rf"{re.escape(str(manifest))}:3: cannot read audio") as e:
        dataset[1]
    assert e.value.__cause__ is not None  # the soundfile error is chained, not hidden


def test_clips_below_min_sample_size_are_a_warning_naming_them_and_the_option(tmp_path, caplog):
    from fairseq.data.audio.raw_audio_dataset import FileAudioDataset

    for name, n in (("long.wav", 8000), ("short.wav", 1000)):
        sf.write(tmp_path / name, np.zeros(n, dtype=np.float32), 16000)
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"{tmp_path}\nlong.wav\t8000\nshort.wav\t1000\n")
    with caplog.at_level("WARNING", logger="d2v_plugin.compat.fairseq_fixes"):
        dataset = FileAudioDataset(str(manifest), sample_rate=16000, min_sample_size=4000)
    assert len(dataset) == 1
    assert (f"1 of 2 clips are shorter than task.min_sample_size=4000 samples and are left out (lower "
            f"task.min_sample_size to keep them): {manifest}:3 short.wav (1000 samples)") in caplog.text
    with pytest.raises(ManifestError, match=r"all 2 clips are shorter than task.min_sample_size=9000 samples "
                                            r"\(the longest has 8000\); lower task.min_sample_size"):
        FileAudioDataset(str(manifest), sample_rate=16000, min_sample_size=9000)


PROBE = """
import ctypes, torch
import d2v_plugin
from d2v_plugin.compat import cpu_allocator
from fairseq.models import distributed_fairseq_model
from d2v_plugin.audio.model import Data2VecAudioConfig, Data2VecAudioModel
from tests.reference import audio_config
Data2VecAudioModel(Data2VecAudioConfig(**audio_config.TINY_AUDIO))
print("after model:", cpu_allocator._applied)
print("ddp is torch's:", distributed_fairseq_model.DistributedDataParallel is torch.nn.parallel.DistributedDataParallel)
from d2v_plugin.core.criterion import Data2VecCriterion
Data2VecCriterion(None, cpu_keep_freed_memory={keep})
print("after criterion:", cpu_allocator._applied)
"""


@pytest.mark.parametrize("keep", [True, False])
def test_only_cpu_training_changes_the_allocator_and_nothing_patches_ddp(keep):
    out = subprocess.run([sys.executable, "-c", PROBE.format(keep=keep)], cwd=REPO, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, check=True).stdout
    assert "after model: None" in out  # building (or loading) a model leaves glibc alone
    assert "ddp is torch's: True" in out  # the CPU DDP wrapper is d2v-hydra-train's, for CPU ranks only
    assert f"after criterion: {True if keep else None}" in out


def test_importing_the_plugin_leaves_logging_as_it_was():
    """fairseq's import calls logging.basicConfig(level=DEBUG); in a program that had not configured logging
    the plugin undoes it (else PIL and friends print debug lines in the manifest scripts)."""
    probe = ("import logging; import d2v_plugin; root = logging.getLogger(); "
             "print(root.level, len(root.handlers))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["30", "0"], out.stdout + out.stderr
    configured = "import logging; logging.basicConfig(level=logging.INFO); " + probe
    out = subprocess.run([sys.executable, "-c", configured], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["20", "1"], out.stdout + out.stderr
