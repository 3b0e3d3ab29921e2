"""Speech recognition end to end through the real CLIs: pre-train -> CTC fine-tune -> fairseq-generate."""

import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.cli import BIN, USER_DIR, hydra_train, json_logs, module, run

# The tiny recipe runs 1500 updates; the tests use fewer. Within 600 updates the tiny CTC model learns the
# toy corpus's letters both from the tiny pre-trained checkpoint and from random init (see README and
# benchmarks/asr_pretraining_benefit.py for other seeds), and the tests assert a WER threshold for both.
FINETUNE_UPDATES = 600


@pytest.fixture(scope="module")
def finetuned(speech_data, pretrained, tmp_path_factory):
    ckpt_dir, _ = pretrained
    out = tmp_path_factory.mktemp("finetune")
    proc = hydra_train("examples/audio/finetuning", "tiny_cpu", out / "run",
                       [f"task.data={speech_data}", f"model.w2v_path={ckpt_dir / 'checkpoint_last.pt'}",
                        f"checkpoint.save_dir={out / 'ckpt'}", f"optimization.max_update={FINETUNE_UPDATES}"])
    return out / "ckpt", proc.stdout + proc.stderr


def generate(data, checkpoint, *extra):
    """Decode the test split; returns what fairseq-generate printed (to stdout, or to --results-path)."""
    proc = run([BIN / "fairseq-generate", data, "--user-dir", USER_DIR, "--task", "audio_ctc", "--path", checkpoint,
                "--gen-subset", "test", "--labels", "ltr", "--post-process", "letter", "--scoring", "wer_ler",
                "--max-tokens", 400000, *extra])
    if "--results-path" in extra:
        return (Path(extra[extra.index("--results-path") + 1]) / "generate-test.txt").read_text()
    return proc.stdout


def wer_line(output: str):
    m = re.search(r"Generate test with beam=\d+: WER: ([\d.]+) .*\| LER: ([\d.]+) .*\| (\d+) utterances", output)
    assert m, output[-3000:]
    return float(m.group(1)), float(m.group(2)), int(m.group(3))


def test_finetune_logs_validation_wer_and_checkpoints_load_safely(finetuned):
    ckpt_dir, output = finetuned
    valid = json_logs(output, "valid")
    assert valid and "valid_wer" in valid[-1] and "valid_uer" in valid[-1]
    train = [r["loss"] for r in json_logs(output, "train_inner")]
    assert sum(train[-3:]) / 3 < 0.5 * train[0], train
    state = torch.load(ckpt_dir / "checkpoint_last.pt", weights_only=True)
    assert not any("ema_teacher" in k or "final_proj" in k for k in state["model"])
    assert state["task_state"]["target_dictionary"]["symbols"][:4] == ["<s>", "<pad>", "</s>", "<unk>"]


def test_generate_decodes_every_utterance(speech_data, finetuned, tmp_path):
    ckpt_dir, _ = finetuned
    text = generate(speech_data, ckpt_dir / "checkpoint_best.pt", "--results-path", tmp_path / "greedy")
    wer, ler, n = wer_line(text)
    rows = len((speech_data / "test.tsv").read_text().splitlines()) - 1
    assert n == rows
    assert len(re.findall(r"^H-\d+\t", text, re.M)) == rows
    assert len(re.findall(r"^T-\d+\t", text, re.M)) == rows
    # pre-train tiny -> fine-tune tiny -> decode: the letters are learnt
    assert wer < 30.0 and ler < 15.0, (wer, ler, text[-2000:])
    # the WER line agrees with the hypotheses written above it
    refs = re.findall(r"^T-(\d+)\t(.*)$", text, re.M)
    hyps = dict(re.findall(r"^D-(\d+)\t[^\t]*\t(.*)$", text, re.M))
    words = sum(len(r.split()) for _, r in refs)
    assert f"/{words} words" in text
    assert set(hyps) == {i for i, _ in refs}
    beam = generate(speech_data, ckpt_dir / "checkpoint_best.pt", "--ctc-decoder", "beam", "--beam", 8)
    assert wer_line(beam)[2] == rows
    # the score line names the search that ran: greedy is beam 1, not fairseq's default label beam=5
    assert "Generate test with beam=1: WER" in text and "Generate test with beam=8: WER" in beam


def test_a_failed_generate_keeps_the_previous_results(speech_data, finetuned, tmp_path):
    ckpt_dir, _ = finetuned
    first = generate(speech_data, ckpt_dir / "checkpoint_best.pt", "--results-path", tmp_path)
    proc = run([BIN / "fairseq-generate", speech_data, "--user-dir", USER_DIR, "--task", "audio_ctc", "--path",
                ckpt_dir / "checkpoint_best.pt", "--gen-subset", "test", "--labels", "ltr", "--max-tokens", 400000,
                "--results-path", tmp_path, "--ctc-kenlm-model", tmp_path / "lm.bin"], check=False)
    assert proc.returncode != 0 and "task.ctc_kenlm_model is used by beam search" in proc.stderr
    assert (tmp_path / "generate-test.txt").read_text() == first
    assert [p.name for p in tmp_path.iterdir()] == ["generate-test.txt"]  # no scratch folder left behind
    assert "audio_ctc: decoding with viterbi (greedy" in run(
        [BIN / "fairseq-generate", speech_data, "--user-dir", USER_DIR, "--task", "audio_ctc", "--path",
         ckpt_dir / "checkpoint_best.pt", "--gen-subset", "test", "--labels", "ltr", "--max-tokens", 400000,
         "--results-path", tmp_path]).stderr


def test_recipe_learns_the_letters_from_random_init(speech_data, pretrained, tmp_path):
    """Fine-tuning recipe + fairseq-generate really learn: same architecture, random init, WER < 30%."""
    ckpt_dir, _ = pretrained
    hydra_train("examples/audio/finetuning", "tiny_cpu", tmp_path / "run",
                [f"task.data={speech_data}", f"model.w2v_path={ckpt_dir / 'checkpoint_last.pt'}",
                 "+model.no_pretrained_weights=true", f"checkpoint.save_dir={tmp_path / 'ckpt'}",
                 f"optimization.max_update={FINETUNE_UPDATES}"])
    text = generate(speech_data, tmp_path / "ckpt" / "checkpoint_best.pt", "--results-path", tmp_path / "decode")
    wer, ler, n = wer_line(text)
    assert n == len((speech_data / "test.tsv").read_text().splitlines()) - 1
    assert wer < 30.0 and ler < 15.0, (wer, ler, text[-2000:])


def test_finetuning_resumes(speech_data, pretrained, finetuned, tmp_path):
    ckpt_dir, _ = finetuned
    resumed = tmp_path / "ckpt"
    shutil.copytree(ckpt_dir, resumed)
    proc = hydra_train("examples/audio/finetuning", "tiny_cpu", tmp_path / "run",
                       [f"task.data={speech_data}", f"model.w2v_path={pretrained[0] / 'checkpoint_last.pt'}",
                        f"checkpoint.save_dir={resumed}", f"optimization.max_update={FINETUNE_UPDATES + 10}"])
    out = proc.stdout + proc.stderr
    assert "Loaded checkpoint" in out
    state = torch.load(resumed / "checkpoint_last.pt", weights_only=True)
    assert state["optimizer_history"][-1]["num_updates"] == FINETUNE_UPDATES + 10


def test_finetuning_from_a_reference_checkpoint(speech_data, tmp_path):
    """A checkpoint written by fairseq's bundled data2vec (random init, 2 updates) is a valid w2v_path."""
    user_dir = tmp_path / "reference_user_dir" / "d2v_reference"
    user_dir.mkdir(parents=True)
    (user_dir / "__init__.py").write_text("import fairseq.examples.data2vec.models.data2vec_audio  # noqa\n")
    hydra_train("examples/audio/pretraining", "tiny_cpu", tmp_path / "ref_run",
                [f"task.data={speech_data}", f"checkpoint.save_dir={tmp_path / 'ref'}", "optimization.max_update=2",
                 "criterion._name=model", "~model.zero_init_regression_head"],  # an option of ours alone
                user_dir=str(user_dir))
    reference = torch.load(tmp_path / "ref" / "checkpoint_last.pt", weights_only=True)["model"]
    assert "_ema" in reference  # the reference's own format
    hydra_train("examples/audio/finetuning", "tiny_cpu", tmp_path / "ft_run",
                [f"task.data={speech_data}", f"model.w2v_path={tmp_path / 'ref' / 'checkpoint_last.pt'}",
                 f"checkpoint.save_dir={tmp_path / 'ft'}", "optimization.max_update=10"])
    tuned = torch.load(tmp_path / "ft" / "checkpoint_last.pt", weights_only=True)["model"]
    # the encoder is frozen for the first updates: it still holds the reference's weights
    for k in ("encoder.layers.0.fc1.weight", "feature_extractor.conv_layers.0.0.weight", "post_extract_proj.weight"):
        assert torch.equal(tuned[f"w2v_encoder.w2v_model.{k}"], reference[k]), k
