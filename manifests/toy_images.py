"""Write a small labelled image set to try the image pipeline on: scikit-learn's bundled 8x8 digits
(1797 images, no download), upscaled to 32x32 RGB PNGs (white on black), one folder per digit.

    python -m manifests.toy_images DEST [--per-class 180] [--size 32]

(Random per-image colours would make colour, not shape, the easiest thing for self-supervised
pre-training to learn on such a tiny set, so the images are grey.)
"""

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np
from PIL import Image


def write_digits(dest: str, per_class: int = 180, size: int = 32) -> int:
    """Write up to ``per_class`` images of each digit to ``dest/<digit>/NNNN.png``; returns the count."""
    from sklearn.datasets import load_digits  # imported here: only this helper needs scikit-learn

    digits = load_digits()
    written = 0
    for label in range(10):
        folder = os.path.join(dest, str(label))
        os.makedirs(folder, exist_ok=True)
        for i, index in enumerate(np.flatnonzero(digits.target == label)[:per_class]):
            ink = digits.images[index] / 16.0  # (8, 8) in [0, 1]
            img = Image.fromarray((ink * 255).round().astype(np.uint8)).convert("RGB")
            img.resize((size, size), Image.Resampling.BILINEAR).save(os.path.join(folder, f"{i:04d}.png"))
            written += 1
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m manifests.toy_images", description=__doc__.split("\n\n")[0])
    p.add_argument("dest", help="folder to write DEST/<digit>/NNNN.png to")
    p.add_argument("--per-class", type=int, default=180, help="images per digit, at most ~180 (default 180)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    args = p.parse_args(argv)
    n = write_digits(args.dest, args.per_class, args.size)
    print(f"{args.dest}: {n} images in 10 class folders")
    return 0


if __name__ == "__main__":
    sys.exit(main())
