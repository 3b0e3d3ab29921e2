"""Does data2vec image pre-training help? Linear probes on the pre-trained encoder vs a random one.

Writes scikit-learn's digits as 32x32 PNGs (1788 images, 10% held out), pre-trains the tiny_cpu recipe,
then probes the frozen encoder two ways, for the pre-trained weights and for the same architecture with
random weights (``model.no_pretrained_weights=true``):

* fairseq: ``examples/image/finetuning/tiny_cpu_linear_probe.yaml`` (LayerNorm + linear layer on the
  mean-pooled patch features, augmented training images), best validation accuracy;
* logistic regression (scikit-learn, standardised features) on the same frozen features of the
  un-augmented training images, accuracy on the held-out images.

Prints a table. Not a test: it takes a few minutes on CPU.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/image_linear_probe.py [--pretrain-updates 600]
"""

import argparse
import json
import logging
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent
USER_DIR = str(REPO / "d2v_plugin")
VALID = re.compile(r"\]\[valid\]\[INFO\] - (\{.*\})\s*$")


def train(config_dir: str, config: str, data: Path, run: Path, *overrides: str) -> str:
    proc = subprocess.run(
        [str(BIN / "fairseq-hydra-train"), "--config-dir", str(REPO / config_dir), "--config-name", config,
         f"common.user_dir={USER_DIR}", f"task.data={data}", f"checkpoint.save_dir={run / 'ckpt'}",
         f"hydra.run.dir={run / 'hydra'}", *overrides],
        cwd=REPO, capture_output=True, text=True,
    )
    if proc.returncode != 0:
        sys.exit(f"fairseq-hydra-train failed ({run}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def best_valid_accuracy(log: str) -> float:
    return max(float(json.loads(m.group(1))["valid_accuracy"])
               for m in map(VALID.search, log.splitlines()) if m)


def logistic_regression_accuracy(checkpoint: Path, data: Path, random_weights: bool) -> float:
    import torch
    from omegaconf import OmegaConf
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from d2v_plugin.image.dataset import ImageDataset, read_labels
    from d2v_plugin.image.transforms import EvalTransform
    from d2v_plugin.image.classification import (
        Data2VecImageClassificationConfig,
        Data2VecImageClassificationModel,
    )

    torch.manual_seed(1)  # the random-weights encoder
    cfg = OmegaConf.structured(Data2VecImageClassificationConfig(
        model_path=str(checkpoint), num_classes=10, linear_probe=True, no_pretrained_weights=random_weights))
    model = Data2VecImageClassificationModel.build_model(cfg).eval()
    labels = read_labels(str(data))

    def features(split):
        ds = ImageDataset(str(data / f"{split}.tsv"), EvalTransform(32, crop_ratio=1.0), labels=labels)
        batch = ds.collater([ds[i] for i in range(len(ds))])
        with torch.no_grad():
            return model.features(batch["net_input"]["source"]).numpy(), batch["target"].numpy()

    (x_train, y_train), (x_valid, y_valid) = features("train"), features("valid")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_train, y_train)
    return 100.0 * probe.score(x_valid, y_valid)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrain-updates", type=int, default=600, help="pre-training updates (default 600)")
    p.add_argument("--probe-updates", type=int, default=300, help="fairseq linear-probe updates (default 300)")
    p.add_argument("--workdir", help="keep everything here (default: a temporary folder)")
    args = p.parse_args()
    logging.getLogger("PIL").setLevel(logging.INFO)  # fairseq's logging setup would print every PNG chunk
    work = Path(args.workdir or tempfile.mkdtemp(prefix="d2v_image_bench_"))
    data = work / "manifests"
    start = time.time()

    from manifests.image_manifest import main as manifest_main
    from manifests.toy_images import write_digits

    write_digits(str(work / "images"))
    if manifest_main([str(work / "images"), "--dest", str(data), "--valid-percent", "0.1", "--seed", "1"]) != 0:
        sys.exit("image_manifest failed")
    pretrain_log = train("examples/image/pretraining", "tiny_cpu", data, work / "pretrain",
                         f"optimization.max_update={args.pretrain_updates}")
    checkpoint = work / "pretrain" / "ckpt" / "checkpoint_last.pt"
    losses = [float(v) for v in re.findall(r'"loss": "([\d.]+)"', pretrain_log)]

    rows = []
    for name, random_weights in (("data2vec pre-trained", False), ("random init", True)):
        extra = ["+model.no_pretrained_weights=true"] if random_weights else []
        log = train("examples/image/finetuning", "tiny_cpu_linear_probe", data, work / f"probe_{random_weights}",
                    f"model.model_path={checkpoint}", f"optimization.max_update={args.probe_updates}", *extra)
        rows.append((name, best_valid_accuracy(log), logistic_regression_accuracy(checkpoint, data, random_weights)))

    print(f"\ndigits 32x32, 1609 train / 179 valid images, 10 classes (chance 10%); tiny_cpu ViT "
          f"(4 blocks x 64 wide, 4x4-pixel patches), {args.pretrain_updates} pre-training updates "
          f"(loss {losses[0]:.2f} -> {losses[-1]:.2f}), {time.time() - start:.0f} s in all\n")
    print(f"| encoder (frozen) | fairseq linear probe, {args.probe_updates} updates | logistic regression |")
    print("|---|---|---|")
    for name, probe, logreg in rows:
        print(f"| {name} | {probe:.1f}% | {logreg:.1f}% |")
    print(f"\nwork folder: {work}")


if __name__ == "__main__":
    main()
