"""data2vec 2.0 vs 1.0: pre-training wall-clock to reach a downstream score, on the toy benchmarks.

For each modality (``--modalities image text audio``; default image and text) and each mode, ONE pre-training
run of the tiny CPU recipe through ``fairseq-hydra-train`` (v1: ``examples/<m>/pretraining/tiny_cpu.yaml``,
v2: ``tiny_cpu_v2.yaml``) for ``--updates`` updates, with validation off, the EMA decay annealed over the whole
run (``model.ema_anneal_end_step`` = the run's updates) and a checkpoint kept every updates/points updates
(``checkpoint.save_interval_updates``, ``keep_interval_updates=-1``). The two recipes differ in more than the
mode (v2: ``clone_batch`` masked copies per sample, a conv decoder, other masks, targets, batch and LR
details); the script prints every key in which they differ.

Pre-training seconds at update K: the time stamp of fairseq's ``train_inner`` log line at ``num_updates`` K
(logged every K updates) minus that of its ``training on N devices`` line, printed right after the trainer is
built. So it counts data loading, training steps and the saving of earlier checkpoints, and leaves out the
process start-up and model building (a few seconds, the same for both modes). It agrees with fairseq's own
``wall`` meter, which is rounded to whole seconds. The machine's other load changes these times; run on an
otherwise idle core where possible.

Downstream score of every kept checkpoint, and of the same architecture with random weights at update 0
(0 s; ``no_pretrained_weights``), with the helpers of the single-modality benchmarks:

* image (``image_linear_probe.py``): logistic regression (scikit-learn) on the frozen encoder's mean-pooled
  patch features of the toy digits, accuracy % on the 179 held-out images;
* text (``text_finetune.py``): held-out-word sentence classification, ``examples/text/finetuning/tiny_cpu.yaml``
  fine-tuned for 100 updates (``<s>`` pooling), validation accuracy % at the end, mean over ``--text-seeds``;
* audio (``asr_pretraining_benefit.py``; optional, off by default: ~40 min per point on one core): spoken digit
  strings, CTC fine-tuning on 100 labelled utterances, greedy WER % of the held-out speakers' test split
  (lower is better), mean over ``--audio-seeds``.

Prints a markdown table (modality, mode, update, pre-training seconds, score), then per modality v1's best
score, the first v2 checkpoint that reaches it (or "not reached" and v2's best), the ratio
v2 time / v1 time to its best and the target (v2 within 1/5 of v1's time for image and audio, 1/2 for text).
Draws the scores against pre-training seconds, one line per (modality, mode), as a hand-written SVG (``--plot``),
and writes the numbers to ``WORKDIR/v2_vs_v1.json`` (``--from-json`` re-prints and re-draws from it).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/v2_vs_v1.py [--modalities image text] [--plot v2_vs_v1.svg]
"""

import argparse
import datetime
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
BIN = Path(sys.executable).parent
USER_DIR = str(REPO / "d2v_plugin")
PY = sys.executable

MODES = ("v1", "v2")
RECIPE = {"v1": "tiny_cpu", "v2": "tiny_cpu_v2"}
TARGET = {"image": 1 / 5, "text": 1 / 2, "audio": 1 / 5}
HIGHER_IS_BETTER = {"image": True, "text": True, "audio": False}
METRIC = {"image": "probe acc. %", "text": "valid acc. %", "audio": "test WER %"}
# (updates, kept checkpoints) per modality and mode: a few minutes of pre-training per mode on one core
DEFAULT_UPDATES = {("image", "v1"): 1500, ("image", "v2"): 1500, ("text", "v1"): 2400, ("text", "v2"): 1200,
                   ("audio", "v1"): 2000, ("audio", "v2"): 2000}
DEFAULT_POINTS = {("image", "v1"): 10, ("image", "v2"): 15, ("text", "v1"): 8, ("text", "v2"): 8,
                  ("audio", "v1"): 4, ("audio", "v2"): 4}
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def sh(*args) -> str:
    proc = subprocess.run([str(a) for a in args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args[:6]))} ... failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def per_run(spec, defaults, modalities):
    """``--updates``/``--points`` items: ``N`` (every run), ``MODALITY=N`` or ``MODALITY:MODE=N``."""
    out = {k: v for k, v in defaults.items() if k[0] in modalities}
    for item in spec or []:
        key, _, value = item.rpartition("=")
        modality, _, mode = key.partition(":")
        for k in out:
            if not key or (k[0] == modality and (not mode or k[1] == mode)):
                out[k] = int(value)
    return out


def recipe_differences(modality: str) -> str:
    from omegaconf import OmegaConf

    def flat(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    v1, v2 = (dict(flat(OmegaConf.to_container(OmegaConf.load(
        REPO / f"examples/{modality}/pretraining/{RECIPE[m]}.yaml")))) for m in MODES)
    show = lambda d, k: str(d[k]) if k in d else "(unset)"
    return ", ".join(f"{k}: {show(v1, k)} -> {show(v2, k)}" for k in sorted(v1.keys() | v2.keys())
                     if show(v1, k) != show(v2, k))


def pretrain(modality: str, mode: str, data: Path, run: Path, updates: int, points: int, overrides=()):
    """One pre-training run; returns ``[(update, seconds, checkpoint path)]``, the kept checkpoints in order."""
    every = max(1, updates // points)
    log = sh(BIN / "fairseq-hydra-train", "--config-dir", REPO / f"examples/{modality}/pretraining",
             "--config-name", RECIPE[mode], f"common.user_dir={USER_DIR}", f"task.data={data}",
             f"checkpoint.save_dir={run / 'ckpt'}", f"hydra.run.dir={run / 'hydra'}",
             f"optimization.max_update={updates}", f"++model.ema_anneal_end_step={updates}",
             f"checkpoint.save_interval_updates={every}", "checkpoint.keep_interval_updates=-1",
             "checkpoint.no_epoch_checkpoints=true", "dataset.disable_validation=true",
             "common.log_format=json", f"common.log_interval={every}", *overrides)
    (run / "train.log").write_text(log)
    stamp = lambda line: datetime.datetime.strptime(STAMP.match(line).group(1), "%Y-%m-%d %H:%M:%S,%f")
    start, points_out = None, []
    for line in log.splitlines():
        if start is None and "[fairseq_cli.train][INFO] - training on" in line:
            start = stamp(line)
        elif "[train_inner][INFO] - {" in line:
            stats = json.loads(line.split("[train_inner][INFO] - ", 1)[1])
            k = int(stats["num_updates"])
            found = sorted((run / "ckpt").glob(f"checkpoint_*_{k}.pt"))
            if found:
                secs = (stamp(line) - start).total_seconds()
                if abs(secs - float(stats["wall"])) > 1.5:
                    print(f"warning: {modality} {mode} update {k}: {secs:.1f} s from the log, fairseq wall "
                          f"{stats['wall']}", flush=True)
                points_out.append((k, secs, found[0]))
    if start is None or not points_out:
        raise SystemExit(f"{run}: no 'training on' or train_inner lines in the log")
    return points_out


# -- the modalities: prepare(work, args) -> context; score(context, checkpoint, random_init, args) -> float --

def image_prepare(work: Path, args):
    from manifests.image_manifest import main as manifest_main
    from manifests.toy_images import write_digits

    data = work / "manifests"
    if not (data / "valid.tsv").exists():
        write_digits(str(work / "images"))
        if manifest_main([str(work / "images"), "--dest", str(data), "--valid-percent", "0.1", "--seed", "1"]) != 0:
            raise SystemExit("image_manifest failed")
    return SimpleNamespace(pretrain_data=data, data=data)


def image_score(ctx, checkpoint: Path, random_init: bool, args, run: Path) -> float:
    from image_linear_probe import logistic_regression_accuracy

    return logistic_regression_accuracy(checkpoint, ctx.data, random_init)


def text_prepare(work: Path, args):
    raw, data, cls = work / "raw", work / "data-bin", work / "cls-bin"
    if not (cls / "input0" / "dict.txt").exists() and not (cls / "dict.txt").exists():
        sh(PY, "-m", "manifests.toy_text", raw, "--docs", 3000, "--cls-train", 200, "--cls-valid", 400,
           "--holdout", "--seed", 1)
        sh(PY, "-m", "manifests.text_manifest", raw / "pretrain.txt", "--dest", data, "--vocab-size", 200,
           "--model-type", "bpe", "--valid-percent", 0.02)
        sh(PY, "-m", "manifests.text_manifest", raw / "cls_train.txt", "--labels", raw / "cls_train.labels",
           "--valid-input", raw / "cls_valid.txt", "--valid-labels", raw / "cls_valid.labels",
           "--spm-model", data / "spm.model", "--srcdict", data / "dict.txt", "--dest", cls)
    return SimpleNamespace(pretrain_data=data, data=cls)


def text_score(ctx, checkpoint: Path, random_init: bool, args, run: Path) -> float:
    from text_finetune import train, valid_accuracies

    finals = []
    for seed in args.text_seeds:
        out = train("examples/text/finetuning", run / f"ft_seed{seed}",
                    [f"task.data={ctx.data}", f"model.model_path={checkpoint}",
                     f"model.no_pretrained_weights={str(random_init).lower()}", "model.pooling=first",
                     f"common.seed={seed}", "optimization.max_update=100", "checkpoint.no_save=true"])
        finals.append(valid_accuracies(out)[-1])
    return sum(finals) / len(finals)


def audio_prepare(work: Path, args):
    from asr_pretraining_benefit import spoken_data

    ns = SimpleNamespace(corpus="digits", unlabelled_utts=2000, labelled_utts=[100])
    pre, budgets = spoken_data(work, ns)
    return SimpleNamespace(pretrain_data=pre, data=budgets[100])


def audio_score(ctx, checkpoint: Path, random_init: bool, args, run: Path) -> float:
    from asr_pretraining_benefit import decode, train

    wers = []
    for seed in args.audio_seeds:
        extra = ["+model.no_pretrained_weights=true"] if random_init else []
        train("examples/audio/finetuning", run / f"ft_run_{seed}",
              [f"task.data={ctx.data}", f"model.w2v_path={checkpoint}", f"checkpoint.save_dir={run / f'ft_{seed}'}",
               f"common.seed={seed}", f"optimization.max_update={args.audio_finetune_updates}", *extra])
        wers.append(decode(ctx.data, run / f"ft_{seed}" / "checkpoint_best.pt", run / f"decode_{seed}")[0])
    return sum(wers) / len(wers)


PREPARE = {"image": image_prepare, "text": text_prepare, "audio": audio_prepare}
SCORE = {"image": image_score, "text": text_score, "audio": audio_score}


# -- report ------------------------------------------------------------------------------------------------

def summary(modality: str, rows):
    """``(v1 best, v2 first reaching it, v2 first pre-trained checkpoint reaching it, v2 best)``: rows (dicts) or
    None. v1's best is its best score at its earliest checkpoint with that score; update 0 is random init."""
    better = (lambda a, b: a >= b) if HIGHER_IS_BETTER[modality] else (lambda a, b: a <= b)
    pick = max if HIGHER_IS_BETTER[modality] else min
    v1 = [r for r in rows if r["modality"] == modality and r["mode"] == "v1"]
    v2 = sorted((r for r in rows if r["modality"] == modality and r["mode"] == "v2"), key=lambda r: r["seconds"])
    best_score = pick(r["score"] for r in v1)
    v1_best = min((r for r in v1 if r["score"] == best_score), key=lambda r: r["seconds"])
    reached = [r for r in v2 if better(r["score"], v1_best["score"])]
    reached_pretrained = [r for r in reached if r["update"] > 0]
    return (v1_best, reached[0] if reached else None, reached_pretrained[0] if reached_pretrained else None,
            pick(v2, key=lambda r: r["score"]))


def report(results) -> None:
    rows = results["rows"]
    print("\n| modality | mode | update | pre-training s | score |\n|---|---|---|---|---|")
    for r in rows:
        update = "0 (random init)" if r["update"] == 0 else r["update"]
        print(f"| {r['modality']} | {r['mode']} | {update} | {r['seconds']:.1f} | {r['score']:.1f} "
              f"({METRIC[r['modality']]}) |")
    print("\n| modality | v1 best: score (update, s) | v2 first reaching it | same, pre-trained checkpoints only | "
          "v2 best | v2 s / v1 s | target | met |\n|---|---|---|---|---|---|---|---|")
    for modality in dict.fromkeys(r["modality"] for r in rows):
        v1_best, v2_first, v2_first_pre, v2_best = summary(modality, rows)
        fmt = lambda r: f"{r['score']:.1f} ({r['update']}, {r['seconds']:.0f} s)" if r else "not reached"
        v2_last = max(r["seconds"] for r in rows if r["modality"] == modality and r["mode"] == "v2")
        if v1_best["seconds"] == 0:
            ratio_s, met = "- (v1's best is its random init)", "-"
        elif v2_first is None:
            ratio_s, met = f"> {v2_last / v1_best['seconds']:.2f} (v2 run's end)", "no"
        else:
            ratio = v2_first["seconds"] / v1_best["seconds"]
            ratio_s, met = f"{ratio:.2f}", "yes" if ratio <= TARGET[modality] else "no"
            if v2_first["update"] == 0:
                ratio_s += " (v2's random init already; pre-trained: " + (
                    f"{v2_first_pre['seconds'] / v1_best['seconds']:.2f})" if v2_first_pre else "never)")
        print(f"| {modality} ({METRIC[modality]}) | {fmt(v1_best)} | {fmt(v2_first)} | {fmt(v2_first_pre)} | "
              f"{fmt(v2_best)} | {ratio_s} | <= {TARGET[modality]:.2f} | {met} |")
    for modality, info in results.get("runs", {}).items():
        print(f"\n{modality}: " + "; ".join(f"{mode}: {d['updates']} updates, checkpoint every {d['every']}, "
                                           f"{d['pretrain_s']:.0f} s in the run" for mode, d in info.items()))
        print(f"{modality} recipes, tiny_cpu -> tiny_cpu_v2: {recipe_differences(modality)}")


def svg_plot(results, path: Path) -> None:
    rows = results["rows"]
    colors = {"image": "#1f77b4", "text": "#d62728", "audio": "#2ca02c"}
    dash = {"v1": "", "v2": ' stroke-dasharray="7,4"'}
    width, height, left, right, top, bottom = 760, 460, 70, 190, 40, 60
    pw, ph = width - left - right, height - top - bottom
    x_max = max(r["seconds"] for r in rows) or 1.0
    step = 10 ** math.floor(math.log10(x_max / 4)) if x_max > 4 else 1
    x_step = next(s * step for s in (1, 2, 5, 10) if x_max / (s * step) <= 8)
    x_max = math.ceil(x_max / x_step) * x_step
    y_lo = max(0.0, math.floor(min(r["score"] for r in rows) / 10) * 10)
    y_hi = min(100.0, math.ceil(max(r["score"] for r in rows) / 10) * 10) or 100.0
    if y_hi <= y_lo:
        y_hi = y_lo + 10
    X = lambda s: left + pw * s / x_max
    Y = lambda v: top + ph * (1 - (v - y_lo) / (y_hi - y_lo))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left + pw / 2}" y="22" text-anchor="middle" font-size="14">data2vec 2.0 vs 1.0: downstream '
           f'score against pre-training wall-clock (tiny CPU recipes)</text>']
    for i in range(int(round(x_max / x_step)) + 1):
        s = i * x_step
        out.append(f'<line x1="{X(s):.1f}" y1="{top}" x2="{X(s):.1f}" y2="{top + ph}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{X(s):.1f}" y="{top + ph + 16}" text-anchor="middle">{s:g}</text>')
    for v in range(int(y_lo), int(y_hi) + 1, 10):
        out.append(f'<line x1="{left}" y1="{Y(v):.1f}" x2="{left + pw}" y2="{Y(v):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 18}" text-anchor="middle">pre-training wall-clock (s, one '
               f'CPU thread); update 0 = random init</text>')
    out.append(f'<text transform="translate(22,{top + ph / 2}) rotate(-90)" text-anchor="middle">'
               f'downstream score (%)</text>')
    legend_y = top + 10
    for modality in dict.fromkeys(r["modality"] for r in rows):
        for mode in MODES:
            pts = sorted((r["seconds"], r["score"]) for r in rows if r["modality"] == modality and r["mode"] == mode)
            if not pts:
                continue
            c = colors[modality]
            poly = " ".join(f"{X(s):.1f},{Y(v):.1f}" for s, v in pts)
            out.append(f'<polyline points="{poly}" fill="none" stroke="{c}" stroke-width="2"{dash[mode]}/>')
            for s, v in pts:
                shape = (f'<circle cx="{X(s):.1f}" cy="{Y(v):.1f}" r="3" fill="{c}"/>' if mode == "v1" else
                         f'<rect x="{X(s) - 3:.1f}" y="{Y(v) - 3:.1f}" width="6" height="6" fill="white" '
                         f'stroke="{c}" stroke-width="1.5"/>')
                out.append(shape)
            lx = left + pw + 15
            out.append(f'<line x1="{lx}" y1="{legend_y}" x2="{lx + 30}" y2="{legend_y}" stroke="{c}" '
                       f'stroke-width="2"{dash[mode]}/>')
            out.append(f'<text x="{lx + 38}" y="{legend_y + 4}">{modality}, {mode}</text>')
            legend_y += 20
        out.append(f'<text x="{left + pw + 15}" y="{legend_y + 4}" font-size="10" fill="#555">{modality}: '
                   f'{METRIC[modality]}</text>')
        legend_y += 26
    out.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modalities", nargs="+", choices=["image", "text", "audio"], default=["image", "text"])
    p.add_argument("--updates", nargs="+", metavar="[MODALITY[:MODE]=]N",
                   help="pre-training updates (default: image 1500 / 1500, text 2400 / 1200, audio 2000 / 2000 "
                        "for v1 / v2)")
    p.add_argument("--points", nargs="+", metavar="[MODALITY[:MODE]=]N",
                   help="checkpoints kept per run, evenly spaced (default: image 10 / 15, text 8 / 8, audio 4 / 4)")
    p.add_argument("--text-seeds", type=int, nargs="+", default=[1], help="text fine-tuning seeds (default 1)")
    p.add_argument("--audio-seeds", type=int, nargs="+", default=[1], help="CTC fine-tuning seeds (default 1)")
    p.add_argument("--audio-finetune-updates", type=int, default=1500)
    p.add_argument("--plot", default=str(REPO / "benchmarks" / "v2_vs_v1.svg"), help="the SVG to write")
    p.add_argument("--workdir", help="keep everything here (default: a temporary folder)")
    p.add_argument("--from-json", help="re-print and re-draw from a v2_vs_v1.json of an earlier run")
    args = p.parse_args()
    logging.getLogger("PIL").setLevel(logging.INFO)  # fairseq's logging setup would print every PNG chunk
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        report(results)
        svg_plot(results, Path(args.plot))
        print(f"\nplot: {args.plot}")
        return
    updates = per_run(args.updates, DEFAULT_UPDATES, args.modalities)
    points = per_run(args.points, DEFAULT_POINTS, args.modalities)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="d2v_v2_vs_v1_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)
    start = time.time()
    results = {"rows": [], "runs": {}}
    for modality in args.modalities:
        ctx = PREPARE[modality](work / modality, args)
        results["runs"][modality] = {}
        for mode in MODES:
            run = work / modality / mode
            n, k = updates[(modality, mode)], points[(modality, mode)]
            t0, load0 = time.time(), os.getloadavg()[0]
            kept = pretrain(modality, mode, ctx.pretrain_data, run, n, k)
            results["runs"][modality][mode] = {"updates": n, "every": max(1, n // k), "pretrain_s": time.time() - t0,
                                               "load_before": load0, "load_after": os.getloadavg()[0]}
            print(f"{modality} {mode}: pre-trained {n} updates in {time.time() - t0:.0f} s (load average "
                  f"{load0:.2f} -> {os.getloadavg()[0]:.2f})", flush=True)
            for update, secs, ckpt in [(0, 0.0, kept[0][2])] + kept:
                t0 = time.time()
                score = SCORE[modality](ctx, ckpt, update == 0, args, run / f"score_{update}")
                results["rows"].append({"modality": modality, "mode": mode, "update": update, "seconds": secs,
                                        "score": score, "checkpoint": str(ckpt)})
                print(f"  {modality} {mode} update {update} ({secs:.1f} s): {score:.1f} ({METRIC[modality]}; "
                      f"{time.time() - t0:.0f} s to score)", flush=True)
            (work / "v2_vs_v1.json").write_text(json.dumps(results, indent=1))
    report(results)
    svg_plot(results, Path(args.plot))
    print(f"\nplot: {args.plot}; numbers: {work / 'v2_vs_v1.json'}; {time.time() - start:.0f} s in all")


if __name__ == "__main__":
    main()
