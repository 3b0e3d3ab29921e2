"""Does data2vec text pre-training help? Fine-tuning from the pre-trained checkpoint vs from random init.

The generated toy task (manifests/toy_text.py --holdout) labels sentences by the kind of noun they
are about (animal or tool); the validation sentences use only nouns, adjectives and verbs that no
training sentence uses, so only what pre-training learned about those words (from the contexts they
occur in) helps. Every run uses examples/text/finetuning/tiny_cpu.yaml with the same budget; "random
init" is the same architecture with ``model.no_pretrained_weights=true``; both sentence poolings
(RoBERTa's ``<s>`` output and the mean of the token outputs) are run. Prints a table of validation
accuracy per fine-tuning seed. Not a test: it takes several minutes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/text_finetune.py [--pretrain-updates 2400] [--seeds 1 2 3]

data2vec learns this toy structure slowly: a linear probe of its features on the held-out words was
at chance after 600 updates and about 90% after 2400, hence the default.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
USER_DIR = str(REPO / "d2v_plugin")


def sh(*args) -> str:
    proc = subprocess.run([str(a) for a in args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def train(config_dir: str, run: Path, overrides) -> str:
    return sh(BIN / "fairseq-hydra-train", "--config-dir", REPO / config_dir, "--config-name", "tiny_cpu",
              f"common.user_dir={USER_DIR}", "common.log_format=json", f"hydra.run.dir={run}", *overrides)


def valid_accuracies(output: str):
    return [float(json.loads(m)["valid_accuracy"]) for m in re.findall(r"\[valid\]\[INFO\] - (\{.*\})", output)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrain-updates", type=int, default=2400,
                   help="pre-training updates (the EMA decay is annealed over all of them)")
    p.add_argument("--finetune-updates", type=int, default=100, help="fine-tuning updates (every run)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="fine-tuning seeds")
    p.add_argument("--docs", type=int, default=3000, help="pre-training documents to generate")
    p.add_argument("--workdir", help="keep everything here (default: a temporary folder)")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="d2v_text_bench_"))
    raw, data, cls = work / "raw", work / "data-bin", work / "cls-bin"
    py = sys.executable
    sh(py, "-m", "manifests.toy_text", raw, "--docs", args.docs, "--cls-train", 200, "--cls-valid", 400,
       "--holdout", "--seed", 1)
    # BPE keeps most of the toy words whole at this vocabulary size (unigram splits many into letters)
    sh(py, "-m", "manifests.text_manifest", raw / "pretrain.txt", "--dest", data, "--vocab-size", 200,
       "--model-type", "bpe", "--valid-percent", 0.02)
    sh(py, "-m", "manifests.text_manifest", raw / "cls_train.txt", "--labels", raw / "cls_train.labels",
       "--valid-input", raw / "cls_valid.txt", "--valid-labels", raw / "cls_valid.labels",
       "--spm-model", data / "spm.model", "--srcdict", data / "dict.txt", "--dest", cls)

    t0 = time.time()
    train("examples/text/pretraining", work / "pre_run", [f"task.data={data}", f"checkpoint.save_dir={work / 'pre'}",
                                                         f"optimization.max_update={args.pretrain_updates}",
                                                         f"model.ema_anneal_end_step={args.pretrain_updates}"])
    pretrain_s = time.time() - t0
    rows = []
    for pooling in ("first", "mean"):
        for name, random_init in (("data2vec pre-trained", "false"), ("random init", "true")):
            finals, bests = [], []
            for seed in args.seeds:
                out = train("examples/text/finetuning", work / f"ft_run_{pooling}_{random_init}_{seed}",
                            [f"task.data={cls}", f"model.model_path={work / 'pre' / 'checkpoint_last.pt'}",
                             f"model.no_pretrained_weights={random_init}", f"model.pooling={pooling}",
                             f"common.seed={seed}", f"optimization.max_update={args.finetune_updates}",
                             "checkpoint.no_save=true"])
                accuracies = valid_accuracies(out)
                finals.append(accuracies[-1])
                bests.append(max(accuracies))
            rows.append((name, pooling, finals, bests))

    print(f"\nSentence classification with held-out words (200 train / 400 valid sentences, chance 50%), "
          f"{args.finetune_updates} fine-tuning updates per run; pre-training: {args.pretrain_updates} updates "
          f"on {args.docs} toy documents ({pretrain_s:.0f} s)")
    print(f"| encoder init | pooling | valid accuracy % at the end, seeds {' / '.join(map(str, args.seeds))} | "
          f"mean | mean of best |\n|---|---|---|---|---|")
    for name, pooling, finals, bests in rows:
        print(f"| {name} | {pooling} | {' / '.join(f'{a:.1f}' for a in finals)} | {sum(finals) / len(finals):.1f} | "
              f"{sum(bests) / len(bests):.1f} |")


if __name__ == "__main__":
    main()
