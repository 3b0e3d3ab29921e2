"""Real(istic) speech through the real CLIs: a spoken digit corpus (manifests.spoken_corpus, eSpeak NG) ->
manifests -> labels -> pre-train -> CTC fine-tune -> fairseq-generate on held-out speakers.

Brief on purpose (the WER thresholds live in tests/audio/test_asr_cli.py on the faster whistled corpus, and
the low-label benchmark measures what pre-training buys on this one): every held-out utterance is decoded
and the WER line agrees with the per-utterance lines.
"""

import re

from tests.audio.test_asr_cli import generate, wer_line
from tests.cli import hydra_train, json_logs, module


def test_spoken_digits_pretrain_finetune_and_decode_held_out_speakers(tmp_path):
    audio, data = tmp_path / "audio", tmp_path / "data"
    module("manifests.spoken_corpus", audio / "train", "--num-utts", 80, "--seed", 1, "--speakers", "train")
    module("manifests.spoken_corpus", audio / "test", "--num-utts", 12, "--seed", 2, "--speakers", "heldout")
    train_speakers = {line.split("\t")[1] for line in (audio / "train" / "speakers.tsv").read_text().splitlines()}
    test_speakers = {line.split("\t")[1] for line in (audio / "test" / "speakers.tsv").read_text().splitlines()}
    assert train_speakers and test_speakers and train_speakers.isdisjoint(test_speakers)

    module("manifests.audio_manifest", audio / "train", "--dest", data, "--ext", "wav", "--valid-percent", 0.1)
    module("manifests.audio_manifest", audio / "test", "--dest", data, "--ext", "wav", "--valid-percent", 0,
           "--train-name", "test")
    module("manifests.labels", data, "--transcripts", audio / "train" / "transcripts.tsv",
           audio / "test" / "transcripts.tsv")

    pre = hydra_train("examples/audio/pretraining", "tiny_cpu", tmp_path / "pre_run",
                      [f"task.data={data}", f"checkpoint.save_dir={tmp_path / 'pre'}", "optimization.max_update=20",
                       "common.log_interval=5"])
    assert json_logs(pre.stdout + pre.stderr, "train_inner")
    ft = hydra_train("examples/audio/finetuning", "tiny_cpu", tmp_path / "ft_run",
                     [f"task.data={data}", f"model.w2v_path={tmp_path / 'pre' / 'checkpoint_last.pt'}",
                      f"checkpoint.save_dir={tmp_path / 'ft'}", "optimization.max_update=40",
                      "checkpoint.save_interval_updates=40", "dataset.validate_interval_updates=40"])
    assert json_logs(ft.stdout + ft.stderr, "valid")

    text = generate(data, tmp_path / "ft" / "checkpoint_last.pt", "--results-path", tmp_path / "decode")
    rows = len((data / "test.tsv").read_text().splitlines()) - 1
    assert rows == 12 and wer_line(text)[2] == rows
    assert len(re.findall(r"^H-\d+\t", text, re.M)) == len(re.findall(r"^T-\d+\t", text, re.M)) == rows
