#!/usr/bin/env python
"""Continue training a saved teacher with `benchmarks/sparse_digits/train_teacher.py`: longer training in chunks.

`train_teacher.py` always starts from random weights. This wrapper runs it unchanged, except that the model it
builds is replaced by the weights of `--init_from` (a folder `train_teacher.py` saved; its architecture must match
the architecture flags, which are checked). The optimizer and the learning-rate schedule start afresh (a warm
restart: warmup, then cosine decay over this run's epochs). Everything else, including the rule that
`--zoom_curriculum 0 --token_loss_weight 0 --attention_loss_weight 0` trains with the labels only, is
`train_teacher.py`'s.

Example (8 more epochs of a teacher, labels only):

    python benchmarks/varied_items/continue_teacher.py --init_from runs/teacher_A \\
        --data_dir data/varied_items --output_dir runs/teacher_A2 --image_size 448 --patch_size 28 \\
        --hidden_size 96 --num_hidden_layers 4 --num_attention_heads 3 --zoom_curriculum 0 \\
        --token_loss_weight 0 --attention_loss_weight 0 --do_train --do_eval --num_train_epochs 8 ...
"""

from __future__ import annotations

import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_TEACHER = os.path.join(HERE, os.pardir, "sparse_digits", "train_teacher.py")
ARCHITECTURE = ("image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


def split_init_from(argv: list[str]) -> tuple[str, list[str]]:
    """`(--init_from value, the other arguments)`."""
    rest, init_from, i = [], None, 0
    while i < len(argv):
        if argv[i] == "--init_from" and i + 1 < len(argv):
            init_from, i = argv[i + 1], i + 2
        elif argv[i].startswith("--init_from="):
            init_from, i = argv[i].split("=", 1)[1], i + 1
        else:
            rest.append(argv[i])
            i += 1
    if init_from is None:
        raise SystemExit("error: --init_from <saved teacher folder> is required (else run train_teacher.py).")
    if not os.path.isfile(os.path.join(init_from, "config.json")):
        raise SystemExit(f"error: --init_from {init_from!r} is not a saved model folder (no config.json).")
    return init_from, rest


def main(argv=None):
    init_from, rest = split_init_from(list(sys.argv[1:] if argv is None else argv))
    spec = importlib.util.spec_from_file_location("train_teacher", TRAIN_TEACHER)
    train_teacher = importlib.util.module_from_spec(spec)
    sys.modules["train_teacher"] = train_teacher  # its dataclasses look their module up there
    spec.loader.exec_module(train_teacher)
    base = train_teacher.Dinov2WithRegistersForImageClassification

    def from_saved(config):
        model = base.from_pretrained(init_from)
        mismatched = {
            name: (getattr(config, name), getattr(model.config, name))
            for name in ARCHITECTURE
            if getattr(config, name) != getattr(model.config, name)
        }
        if mismatched or config.label2id != model.config.label2id:
            raise SystemExit(
                f"error: --init_from {init_from} does not match the flags (flag, saved): {mismatched}"
                + ("" if config.label2id == model.config.label2id else "; the class names differ")
            )
        print(f"Continuing from the weights of {init_from} (optimizer and schedule start afresh)")
        return model

    train_teacher.Dinov2WithRegistersForImageClassification = from_saved
    return train_teacher.main(rest)


if __name__ == "__main__":
    main()
