#!/usr/bin/env python
"""Run `examples/pytorch/image-classification/run_image_classification.py` with `--no_augment`.

That script's training augmentation is made for photos: `RandomResizedCrop` (area 8-100%) + horizontal flip. On
Sparse Digits both are harmful: a small crop usually cuts the one small digit out of view (the label then describes
nothing the model sees), and a mirrored digit is a different shape (a mirrored 2 looks like a 5). This wrapper runs
the script as `__main__` with the given arguments plus `--no_augment` (Sparse Digits already varies position, size,
colour and clutter).

    python benchmarks/sparse_digits/finetune.py <run_image_classification.py arguments>
"""

from __future__ import annotations

import os
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "examples", "pytorch", "image-classification", "run_image_classification.py")


if __name__ == "__main__":
    if not os.path.isfile(SCRIPT):
        raise SystemExit(f"Missing {SCRIPT}.")
    print("Sparse Digits fine-tuning: run_image_classification.py --no_augment (no random crop / flip).")
    # Run it as `python SCRIPT ...` would: its own folder first on sys.path, not this one (whose evaluate.py would
    # shadow the `evaluate` library).
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [os.path.dirname(SCRIPT)] + [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.argv = [SCRIPT, *sys.argv[1:], "--no_augment"]
    runpy.run_path(SCRIPT, run_name="__main__")
