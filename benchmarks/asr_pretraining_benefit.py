"""Does data2vec pre-training help? CTC fine-tuning from the pre-trained checkpoint vs from random init.

Both use examples/audio/finetuning/tiny_cpu.yaml with the same budget on the generated toy speech corpus;
"random init" is the same architecture with ``model.no_pretrained_weights=true``. The pre-training runs
once per pre-training seed, and every init is fine-tuned with several fine-tuning seeds (``common.seed``),
because at this scale whether CTC leaves its plateau within the budget depends on both. Prints greedy
WER/LER on the held-out split per run. Not a test: on one core each fine-tuning run takes about 75 s with
``--finetune-updates 600``, so the README's figures (3 pre-training x 3 fine-tuning seeds, plus 3 from
random init) take about 17 minutes:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/asr_pretraining_benefit.py --finetune-updates 600 \
        --pretrain-seeds 1 2 3 --seeds 1 2 3
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
USER_DIR = str(REPO / "d2v_plugin")


def sh(*args):
    subprocess.run([str(a) for a in args], cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def train(config_dir, run, overrides):
    sh(BIN / "fairseq-hydra-train", "--config-dir", REPO / config_dir, "--config-name", "tiny_cpu",
       f"common.user_dir={USER_DIR}", f"hydra.run.dir={run}", *overrides)


def decode(data, ckpt, out):
    sh(BIN / "fairseq-generate", data, "--user-dir", USER_DIR, "--task", "audio_ctc", "--path", ckpt,
       "--gen-subset", "test", "--labels", "ltr", "--post-process", "letter", "--scoring", "wer_ler",
       "--max-tokens", 400000, "--results-path", out)
    line = (Path(out) / "generate-test.txt").read_text().strip().splitlines()[-1]
    m = re.search(r"WER: ([\d.]+).*LER: ([\d.]+)", line)
    return float(m.group(1)), float(m.group(2))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrain-updates", type=int, default=300, help="pre-training updates")
    p.add_argument("--finetune-updates", type=int, default=None,
                   help="fine-tuning updates (both inits; default: the recipe's max_update)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="fine-tuning seeds (common.seed)")
    p.add_argument("--pretrain-seeds", type=int, nargs="+", default=[1], help="pre-training seeds (common.seed)")
    p.add_argument("--train-utts", type=int, default=400, help="utterances in the generated training corpus")
    p.add_argument("--workdir", help="keep everything here (default: a temporary folder)")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="d2v_asr_bench_"))
    data = work / "data"
    py = sys.executable
    sh(py, "-m", "manifests.toy_speech", work / "audio_train", "--num-utts", args.train_utts, "--seed", 1)
    sh(py, "-m", "manifests.toy_speech", work / "audio_test", "--num-utts", 60, "--seed", 2, "--prefix", "test")
    sh(py, "-m", "manifests.audio_manifest", work / "audio_train", "--dest", data, "--ext", "wav",
       "--valid-percent", 0.1, "--seed", 1)
    sh(py, "-m", "manifests.audio_manifest", work / "audio_test", "--dest", work / "test_manifest", "--ext", "wav",
       "--valid-percent", 0)
    shutil.copy(work / "test_manifest" / "train.tsv", data / "test.tsv")
    sh(py, "-m", "manifests.labels", data, "--transcripts", work / "audio_train" / "transcripts.tsv",
       work / "audio_test" / "transcripts.tsv")

    pretrain_s = []
    for pseed in args.pretrain_seeds:
        t0 = time.time()
        train("examples/audio/pretraining", work / f"pre_run_{pseed}",
              [f"task.data={data}", f"checkpoint.save_dir={work / f'pre_{pseed}'}", f"common.seed={pseed}",
               f"optimization.max_update={args.pretrain_updates}"])
        pretrain_s.append(time.time() - t0)
    rows = []
    budget = [] if args.finetune_updates is None else [f"optimization.max_update={args.finetune_updates}"]
    # (name, pre-training seed shown, checkpoint given as w2v_path, extra overrides)
    inits = [("data2vec pre-trained", pseed, work / f"pre_{pseed}", []) for pseed in args.pretrain_seeds]
    # random init: the w2v_path only gives the architecture
    inits.append(("random init", "-", work / f"pre_{args.pretrain_seeds[0]}", ["+model.no_pretrained_weights=true"]))
    for name, pseed, pre, extra in inits:
        for seed in args.seeds:
            t0 = time.time()
            run = len(rows)
            train("examples/audio/finetuning", work / f"ft_run_{run}",
                  [f"task.data={data}", f"model.w2v_path={pre / 'checkpoint_last.pt'}",
                   f"checkpoint.save_dir={work / f'ft_{run}'}", f"common.seed={seed}", *budget, *extra])
            wer, ler = decode(data, work / f"ft_{run}" / "checkpoint_best.pt", work / f"decode_{run}")
            rows.append((name, pseed, seed, wer, ler, time.time() - t0))
            print(f"{name}, pre-training seed {pseed}, fine-tuning seed {seed}: WER {wer:.2f} LER {ler:.2f}",
                  flush=True)

    updates = args.finetune_updates or "the recipe's"
    print(f"\nCTC fine-tuning ({updates} updates), toy corpus ({args.train_utts} utts), test split of 60 utts; "
          f"pre-training: {args.pretrain_updates} updates ({sum(pretrain_s) / len(pretrain_s):.0f} s each)")
    print("| encoder init | pre-training seed | fine-tuning seed | test WER % | test LER % | fine-tune+decode s |\n"
          "|---|---|---|---|---|---|")
    for name, pseed, seed, wer, ler, secs in rows:
        print(f"| {name} | {pseed} | {seed} | {wer:.2f} | {ler:.2f} | {secs:.0f} |")
    for name in dict.fromkeys(r[0] for r in rows):
        wers = [r[3] for r in rows if r[0] == name]
        print(f"{name}: {sum(w < 30 for w in wers)}/{len(wers)} runs under 30% WER, "
              f"mean WER {sum(wers) / len(wers):.1f}%")


if __name__ == "__main__":
    main()
