"""``d2v-transcribe``: a briefly fine-tuned tiny CTC model gives, per file, the transcript ``fairseq-generate``
prints for it (greedy, ``--post-process letter``); its encoder is what ``d2v-extract`` reads; bad input is named."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from fairseq import checkpoint_utils
from fairseq.data.audio.raw_audio_dataset import FileAudioDataset

import d2v_plugin  # noqa: F401
from d2v_plugin.audio.manifest import read_manifest
from d2v_plugin.inference.checkpoints import CheckpointError
from d2v_plugin.inference.extract import extract
from d2v_plugin.inference.inputs import InputError
from d2v_plugin.inference.transcribe import transcribe
from tests.cli import BIN, USER_DIR, hydra_train, run

NUM_FILES = 5


@pytest.fixture(scope="module")
def ctc(speech_data, pretrained, tmp_path_factory) -> Path:
    """The tiny CTC recipe on the pre-trained fixture, 7 updates (tri_stage needs a decay step; its random output layer gives non-trivial
    letter strings to compare)."""
    out = tmp_path_factory.mktemp("ctc")
    hydra_train("examples/audio/finetuning", "tiny_cpu", out / "run",
                [f"task.data={speech_data}", f"model.w2v_path={pretrained[0] / 'checkpoint_last.pt'}",
                 f"checkpoint.save_dir={out}", "optimization.max_update=7", "dataset.disable_validation=true"])
    return out / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def few(speech_data, tmp_path_factory):
    """A split ``few`` of NUM_FILES test utterances (manifest, letters, dictionary) for fairseq-generate."""
    data = tmp_path_factory.mktemp("few")
    lines = (speech_data / "test.tsv").read_text().splitlines()
    (data / "few.tsv").write_text("\n".join(lines[: NUM_FILES + 1]) + "\n")
    letters = (speech_data / "test.ltr").read_text().splitlines()
    (data / "few.ltr").write_text("\n".join(letters[:NUM_FILES]) + "\n")
    shutil.copy(speech_data / "dict.ltr.txt", data)
    root, rows = read_manifest(str(data / "few.tsv"))
    return data, [str(Path(root) / r.path) for r in rows]


def test_transcripts_are_fairseq_generates(ctc, few, tmp_path):
    data, paths = few
    run([BIN / "fairseq-generate", data, "--user-dir", USER_DIR, "--task", "audio_ctc", "--path", ctc,
         "--gen-subset", "few", "--labels", "ltr", "--post-process", "letter", "--batch-size", 1,
         "--results-path", tmp_path / "decode"])
    generated = dict(re.findall(r"^D-(\d+)\t[^\t]*\t(.*)$", (tmp_path / "decode" / "generate-few.txt").read_text(), re.M))
    assert len(generated) == NUM_FILES
    proc = run([BIN / "d2v-transcribe", ctc, *paths, "--batch-size", 3, "--device", "cpu"])
    lines = proc.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == paths  # one line per file, in the order given
    ours = [line.split("\t", 1)[1] for line in lines]
    assert ours == [generated[str(i)] for i in range(NUM_FILES)]
    assert any(ours), "every transcript is empty: the comparison would say little"


def test_extract_reads_the_fine_tuned_encoder(ctc, few, speech_data, tmp_path):
    data, paths = few
    (model,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(ctc)], arg_overrides={"data": str(speech_data)})
    encoder = model.eval().w2v_encoder.w2v_model
    rows = (Path(extract(str(ctc), str(data / "few.tsv"), str(tmp_path / "out"), device="cpu", progress=False,
                         batch_size=NUM_FILES, layer=2)).read_text().splitlines()[1:])
    dataset = FileAudioDataset(str(data / "few.tsv"), 16000, normalize=True)
    with torch.no_grad():
        for i, row in enumerate(rows):
            name, rel, _ = row.split("\t")
            assert name == paths[i]
            expected = encoder.extract_features(dataset[i]["source"][None], None, layer=2)["x"][0]
            assert np.abs(np.load(tmp_path / "out" / rel) - expected.numpy()).max() <= 1e-5


def test_bad_input_and_checkpoints_are_named(ctc, pretrained, few, tmp_path):
    _, paths = few
    sf.write(tmp_path / "44k.wav", np.zeros(44100, dtype=np.float32), 44100)
    with pytest.raises(InputError, match=r"44k.wav: sample rate 44100 Hz, but the checkpoint's task reads 16000 Hz"):
        transcribe(str(ctc), [paths[0], str(tmp_path / "44k.wav")])
    with pytest.raises(CheckpointError, match=r"'data2vec_audio' is not a CTC model"):
        transcribe(str(pretrained[0] / "checkpoint_last.pt"), paths[:1])
