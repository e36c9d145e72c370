#!/usr/bin/env python
"""Run `examples/pytorch/image-classification/run_image_classification.py` unchanged, with digit-safe augmentation.

That script's training augmentation is made for photos: `RandomResizedCrop` (area 8-100%) + horizontal flip. On
Sparse Digits both are harmful: a small crop usually cuts the one small digit out of view (the label then describes
nothing the model sees), and a mirrored digit is a different shape (a mirrored 2 looks like a 5). This wrapper
replaces the augmentation by the identity (Sparse Digits already varies position, size, colour and clutter) and then
runs the script as `__main__` with the same command-line arguments. Everything else (data loading, model, Trainer,
saving, metrics) is the script's own code.

    python benchmarks/sparse_digits/finetune.py <run_image_classification.py arguments>
"""

from __future__ import annotations

import os
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "examples", "pytorch", "image-classification", "run_image_classification.py")


def disable_training_augmentation() -> bool:
    """Make `lookwhere_hf.training_utils.ClassificationTransform` skip its random crop + flip. Returns False (and
    changes nothing) if that class is not there, i.e. the script's augmentation is left as it is."""
    try:
        from lookwhere_hf import training_utils
    except ImportError:
        return False
    transform = getattr(training_utils, "ClassificationTransform", None)
    if transform is None:
        return False
    original_init = transform.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.augment = lambda image: image

    transform.__init__ = __init__
    return True


if __name__ == "__main__":
    if not os.path.isfile(SCRIPT):
        raise SystemExit(f"Missing {SCRIPT}.")
    if disable_training_augmentation():
        print("Sparse Digits fine-tuning: training augmentation (random resized crop + horizontal flip) disabled.")
    else:
        print("warning: could not disable the script's training augmentation; running it unchanged.")
    # Run it as `python SCRIPT ...` would: its own folder first on sys.path, not this one (whose evaluate.py would
    # shadow the `evaluate` library).
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [os.path.dirname(SCRIPT)] + [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.argv = [SCRIPT, *sys.argv[1:]]
    runpy.run_path(SCRIPT, run_name="__main__")
