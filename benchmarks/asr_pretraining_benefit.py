"""Does data2vec pre-training help speech recognition when labels are few? CTC fine-tuning from the
pre-trained checkpoint vs from random init, same budget, several seeds and label budgets.

Corpora (``--corpus``): ``digits`` / ``sentences`` are spoken by eSpeak NG voices
(``manifests.spoken_corpus``): pre-training reads ``--unlabelled-utts`` utterances of the training speakers,
CTC fine-tuning the first N of a separate labelled set for each N in ``--labelled-utts``, validation 50
labelled utterances of the training speakers, and the test split is 200 utterances of *held-out* speakers.
``whistles`` is the fast toy corpus of the tests (``manifests.toy_speech``; its test split is 60 utterances).
"random init" is the same architecture with ``model.no_pretrained_weights=true``. The pre-training runs once
per pre-training seed; every (init, label budget) is fine-tuned with every fine-tuning seed (``common.seed``).
Prints greedy WER / LER of ``fairseq-generate`` on the test split per run, then a summary per label budget.
Not a test: it takes minutes to hours on the CPU. Examples:

    # the README's toy-corpus figures (whistles, 400 labelled, 3 x 3 seeds + 3 random init; ~17 min, one core)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/asr_pretraining_benefit.py --corpus whistles \
        --labelled-utts 400 --finetune-updates 600 --pretrain-seeds 1 2 3 --seeds 1 2 3
    # low-label spoken digits: 1 pre-training, 100 and 1000 labelled utterances, 3 seeds each
    .venv/bin/python benchmarks/asr_pretraining_benefit.py --corpus digits --unlabelled-utts 2000 \
        --labelled-utts 100 1000 --pretrain-updates 3000 --seeds 1 2 3

``--resume`` (with ``--workdir``) re-runs the same command after an interruption: a pre-training whose
``checkpoint_last.pt`` already has the requested updates, and a fine-tuning run whose decoding finished
(``decode_N/generate-test.txt``, written only on success), are taken from the folder instead of run again;
their times come from the ``seconds.txt`` written beside them (absent for runs made before it existed).

``--pretrain-override`` / ``--finetune-override KEY=VALUE`` pass hydra overrides to the recipes
(``examples/audio/{pretraining,finetuning}/tiny_cpu.yaml``), e.g. a larger model for the benchmark.
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
PY = sys.executable


def sh(*args):
    proc = subprocess.run([str(a) for a in args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(map(str, args[:4]))} ... failed:\n{proc.stderr[-3000:]}")


def train(config_dir, run, overrides):
    sh(BIN / "fairseq-hydra-train", "--config-dir", REPO / config_dir, "--config-name", "tiny_cpu",
       f"common.user_dir={USER_DIR}", f"hydra.run.dir={run}", *overrides)


def decode(data, ckpt, out):
    sh(BIN / "fairseq-generate", data, "--user-dir", USER_DIR, "--task", "audio_ctc", "--path", ckpt,
       "--gen-subset", "test", "--labels", "ltr", "--post-process", "letter", "--scoring", "wer_ler",
       "--max-tokens", 400000, "--results-path", out)
    return score_line(Path(out) / "generate-test.txt")


def score_line(generate_txt: Path):
    """(WER, LER) from the last line of a ``generate-test.txt`` written with ``--scoring wer_ler``."""
    line = generate_txt.read_text().strip().splitlines()[-1]
    m = re.search(r"WER: ([\d.]+).*LER: ([\d.]+)", line)
    return float(m.group(1)), float(m.group(2))


def mean_seconds(seconds) -> str:
    import math

    known = [s for s in seconds if not math.isnan(s)]
    return f"{sum(known) / len(known):.0f} s" if known else "time not recorded"


def seconds_of(folder: Path):
    """The run time a finished run wrote beside its outputs, or None (a run made before it was written)."""
    path = folder / "seconds.txt"
    return float(path.read_text()) if path.is_file() else None


def reusable_pretraining(ckpt_dir: Path, updates: int):
    """``--resume``: the seconds of a finished pre-training in ``ckpt_dir`` (None if not there or shorter;
    ``float('nan')`` if its time was not recorded)."""
    import torch

    last = ckpt_dir / "checkpoint_last.pt"
    if not last.is_file():
        return None
    done = torch.load(last, map_location="cpu", weights_only=True)["optimizer_history"][-1]["num_updates"]
    if done < updates:
        return None
    seconds = seconds_of(ckpt_dir)
    return float("nan") if seconds is None else seconds


def manifest(audio, dest, name, valid_percent=0.0):
    sh(PY, "-m", "manifests.audio_manifest", audio, "--dest", dest, "--ext", "wav", "--valid-percent", valid_percent,
       "--seed", 1, "--train-name", name)


def keep_first(tsv: Path, n: int) -> None:
    lines = tsv.read_text().splitlines()
    if n > len(lines) - 1:
        raise SystemExit(f"{tsv}: only {len(lines) - 1} rows, {n} requested")
    tsv.write_text("\n".join(lines[: n + 1]) + "\n")


def spoken_data(work: Path, args) -> tuple:
    """``(pre-training data dir, {N: fine-tuning data dir})`` for the eSpeak corpora."""
    corpus = lambda out, n, seed, speakers: sh(PY, "-m", "manifests.spoken_corpus", out, "--num-utts", n, "--seed",
                                              seed, "--speakers", speakers, "--text", args.corpus)
    corpus(work / "unlabelled", args.unlabelled_utts, 10, "train")
    corpus(work / "labelled", max(args.labelled_utts), 11, "train")
    corpus(work / "valid", 50, 12, "train")
    corpus(work / "test", 200, 13, "heldout")
    pre = work / "pre_data"
    manifest(work / "unlabelled", pre, "train")
    manifest(work / "valid", pre, "valid")
    transcripts = [work / s / "transcripts.tsv" for s in ("labelled", "valid", "test")]
    budgets = {}
    for n in args.labelled_utts:
        data = work / f"ft_data_{n}"
        manifest(work / "labelled", data, "train")
        # the first n rows of a shuffled-voice corpus (files are named in generation order; the manifest sorts)
        keep_first(data / "train.tsv", n)
        manifest(work / "valid", data, "valid")
        manifest(work / "test", data, "test")
        sh(PY, "-m", "manifests.labels", data, "--transcripts", *transcripts)
        budgets[n] = data
    return pre, budgets


def whistle_data(work: Path, args) -> tuple:
    data = work / "data"
    sh(PY, "-m", "manifests.toy_speech", work / "audio_train", "--num-utts", max(args.labelled_utts), "--seed", 1)
    sh(PY, "-m", "manifests.toy_speech", work / "audio_test", "--num-utts", 60, "--seed", 2, "--prefix", "test")
    manifest(work / "audio_train", data, "train", 0.1)
    manifest(work / "audio_test", work / "test_manifest", "train")
    shutil.copy(work / "test_manifest" / "train.tsv", data / "test.tsv")
    sh(PY, "-m", "manifests.labels", data, "--transcripts", work / "audio_train" / "transcripts.tsv",
       work / "audio_test" / "transcripts.tsv")
    return data, {max(args.labelled_utts): data}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", choices=["whistles", "digits", "sentences"], default="digits")
    p.add_argument("--unlabelled-utts", type=int, default=2000, help="pre-training utterances (spoken corpora)")
    p.add_argument("--labelled-utts", type=int, nargs="+", default=[100, 1000],
                   help="label budgets: fine-tuning utterances (whistles: the one corpus size)")
    p.add_argument("--pretrain-updates", type=int, default=300, help="pre-training updates")
    p.add_argument("--finetune-updates", type=int, default=None,
                   help="fine-tuning updates (both inits; default: the recipe's max_update)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="fine-tuning seeds (common.seed)")
    p.add_argument("--pretrain-seeds", type=int, nargs="+", default=[1], help="pre-training seeds (common.seed)")
    p.add_argument("--pretrain-override", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--finetune-override", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--workdir", help="keep everything here (default: a temporary folder)")
    p.add_argument("--resume", action="store_true",
                   help="with --workdir: take finished pre-training and fine-tuning runs from it instead of "
                        "running them again")
    args = p.parse_args()
    if args.resume and not args.workdir:
        p.error("--resume needs --workdir (the folder of the interrupted run)")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="d2v_asr_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    pre_data, budgets = (whistle_data if args.corpus == "whistles" else spoken_data)(work, args)

    pretrain_s = []
    for pseed in args.pretrain_seeds:
        done = reusable_pretraining(work / f"pre_{pseed}", args.pretrain_updates) if args.resume else None
        if done is not None:
            pretrain_s.append(done)
            print(f"pre-training seed {pseed}: reused from {work / f'pre_{pseed}'}", flush=True)
            continue
        t0 = time.time()
        train("examples/audio/pretraining", work / f"pre_run_{pseed}",
              [f"task.data={pre_data}", f"checkpoint.save_dir={work / f'pre_{pseed}'}", f"common.seed={pseed}",
               f"optimization.max_update={args.pretrain_updates}", *args.pretrain_override])
        pretrain_s.append(time.time() - t0)
        (work / f"pre_{pseed}" / "seconds.txt").write_text(f"{pretrain_s[-1]:.1f}\n")
        print(f"pre-training seed {pseed}: {pretrain_s[-1]:.0f} s", flush=True)
    rows = []
    budget = [] if args.finetune_updates is None else [f"optimization.max_update={args.finetune_updates}"]
    # (name, pre-training seed shown, checkpoint given as w2v_path, extra overrides)
    inits = [("data2vec pre-trained", pseed, work / f"pre_{pseed}", []) for pseed in args.pretrain_seeds]
    # random init: the w2v_path only gives the architecture
    inits.append(("random init", "-", work / f"pre_{args.pretrain_seeds[0]}", ["+model.no_pretrained_weights=true"]))
    for n, data in budgets.items():
        for name, pseed, pre, extra in inits:
            for seed in args.seeds:
                t0 = time.time()
                run = len(rows)
                result = work / f"decode_{run}" / "generate-test.txt"
                if args.resume and result.is_file():
                    wer, ler = score_line(result)
                    rows.append((n, name, pseed, seed, wer, ler, seconds_of(work / f"decode_{run}")))
                    print(f"{n} labelled, {name}, pre-training seed {pseed}, fine-tuning seed {seed}: "
                          f"WER {wer:.2f} LER {ler:.2f} (reused)", flush=True)
                    continue
                train("examples/audio/finetuning", work / f"ft_run_{run}",
                      [f"task.data={data}", f"model.w2v_path={pre / 'checkpoint_last.pt'}",
                       f"checkpoint.save_dir={work / f'ft_{run}'}", f"common.seed={seed}", *budget, *extra,
                       *args.finetune_override])
                wer, ler = decode(data, work / f"ft_{run}" / "checkpoint_best.pt", work / f"decode_{run}")
                rows.append((n, name, pseed, seed, wer, ler, time.time() - t0))
                (work / f"decode_{run}" / "seconds.txt").write_text(f"{rows[-1][-1]:.1f}\n")
                print(f"{n} labelled, {name}, pre-training seed {pseed}, fine-tuning seed {seed}: "
                      f"WER {wer:.2f} LER {ler:.2f}", flush=True)

    updates = args.finetune_updates or "the recipe's"
    print(f"\n{args.corpus}: CTC fine-tuning ({updates} updates), test split of held-out speakers; pre-training: "
          f"{args.pretrain_updates} updates on {args.unlabelled_utts if args.corpus != 'whistles' else max(args.labelled_utts)} "
          f"utterances ({mean_seconds(pretrain_s)} each)")
    print("| labelled utts | encoder init | pre-training seed | fine-tuning seed | test WER % | test LER % | "
          "fine-tune+decode s |\n|---|---|---|---|---|---|---|")
    for n, name, pseed, seed, wer, ler, secs in rows:
        print(f"| {n} | {name} | {pseed} | {seed} | {wer:.2f} | {ler:.2f} | "
              f"{'n/a' if secs is None else f'{secs:.0f}'} |")
    for n in budgets:
        for name in dict.fromkeys(r[1] for r in rows):
            mine = [r for r in rows if r[0] == n and r[1] == name]
            print(f"{n} labelled, {name}: mean WER {sum(r[4] for r in mine) / len(mine):.1f}%, "
                  f"mean LER {sum(r[5] for r in mine) / len(mine):.1f}%")


if __name__ == "__main__":
    main()
