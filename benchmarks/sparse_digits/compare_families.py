#!/usr/bin/env python
"""Sparse Digits, the families side by side: fixed-k and budgeted LookWhere, LookupViT, and the full-resolution
teacher, on the same data, with the same training budget after the teacher, mean ± std over training seeds.

It starts from a finished `run_benchmark.py` run (`--sparse_digits_dir`: its `data/` and, per seed,
`seed_<s>/{teacher,pretrained,finetuned}`; the recipe is read from its `summary.json`) and adds, per seed:

1. `multirung`: `run_image_classification.py --k_ratios ... --glance_head` from the seed's *pretrained* LookWhere,
   the fixed-k fine-tune's flags and epochs (every step trains every rung: the mean of the rung losses,
   `config.train_all_rungs`).
2. `random_rung`: the same fine-tuning, but each step trains one rung drawn at random (uniform over the glance and
   the focus rungs, a seeded generator) - the other option of issue 12, measured against the first on validation.
3. `lookupvit`: `run_image_classification.py --model_family lookupvit --init_from_dinov2 <teacher>`
   (`LookupViTForImageClassification.from_dinov2`), fine-tuned with labels for as many epochs
   as LookWhere gets after the teacher (pretraining + fine-tuning epochs), drawing the compressed grid of every step
   from `--compressed_grids` (the paper's multi-grid training), with the fine-tune's learning rate and batch size.
4. `gf_stage1..3` (seeds of `--glance_focus_seeds`): Glance-and-Focus, `run_glance_focus.py` in its three stages
   (encoders + classifier with random crops, the PPO policy, the classifier with the policy), encoders from the
   teacher (`--glance_focus_backbone teacher`) or from a small randomly initialized transformers ResNet
   (`--glance_focus_backbone resnet`, the original GFNet's kind of encoder), `--glance_focus_epochs` epochs per stage.
5. `evaluate`: budget thresholds fitted on the **validation** split (`lookwhere_hf.budget`) for means of
   teacher GFLOPs / `--budget_speedups`; accuracy and mean analytic GFLOPs on the **test** split of every family and
   operating point; measured CPU latency of all of them interleaved in one process (1 thread, batch 1 and 16).

Then the aggregate (`results.json`, `results.md`, `families.png` in `--output_dir`) and, with `--update_results`,
the section "Sparse Digits: the families side by side" of `benchmarks/RESULTS.md` (and the figure copied next to
this script). Every training stage runs as a subprocess and records its wall-clock and CPU time.

Example (the run reported in RESULTS.md):

    python benchmarks/sparse_digits/compare_families.py --sparse_digits_dir outputs/sparse_digits \\
        --output_dir outputs/families --seeds 0,1,2 --num_threads 1 --update_results

`FAMILY_HOOKS` below is where a further family's evaluation plugs in.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time

import torch

# this script's siblings (its folder is first on sys.path when it runs)
from evaluate_sparse_digits import patch_overlaps, selection_hits
from make_dataset import read_annotations
from run_benchmark import common_training_flags, flags, run_stage
from run_benchmark import parse_args as run_benchmark_args

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FINETUNE_SCRIPT = os.path.join(REPO, "examples", "pytorch", "image-classification", "run_image_classification.py")
GLANCE_FOCUS_SCRIPT = os.path.join(REPO, "examples", "pytorch", "glance-focus", "run_glance_focus.py")
RESULTS_MD = os.path.join(REPO, "benchmarks", "RESULTS.md")
SECTION = "## Sparse Digits: the families side by side"
TRAIN_STAGES = ("multirung", "random_rung", "lookupvit")
GF_STAGES = ("gf_stage1", "gf_stage2", "gf_stage3")
GF_BACKBONES = ("teacher", "resnet")
STAGES = (*TRAIN_STAGES, *GF_STAGES, "evaluate", "aggregate")
# Default Glance-and-Focus epochs of stages 2 (policy) and 3 (classifier with the policy); stage 1 gets the rest of
# LookWhere's budget.
GF_POLICY_AND_LAST_EPOCHS = (2.0, 2.0)
WORKERS = ("train-random-rung",)
# The recipe of run_benchmark.py this comparison reuses: read from the run's summary.json, else run_benchmark's
# own defaults.
RECIPE_KEYS = (
    "pretrain_epochs",
    "finetune_epochs",
    "finetune_lr",
    "batch_size",
    "k_ratio",
    "canvas_size",
    "low_res_size",
)


def comma_list(text: str, flag: str, convert: type, what: str) -> list:
    """The items of a comma-separated flag value through `convert`; a ValueError names the flag."""
    try:
        values = [convert(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated {what}, got {text!r}.") from None
    if not values:
        raise ValueError(f"{flag} must list at least one value ({what}), got {text!r}.")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--sparse_digits_dir",
        default="outputs/sparse_digits",
        help="A finished run_benchmark.py output folder: data/, seed_<s>/{teacher,pretrained,finetuned}, summary.json.",
    )
    p.add_argument("--output_dir", default="outputs/families", help="Models, logs and results of this comparison.")
    p.add_argument("--seeds", default="0,1,2", help="Comma-separated training seeds (those of --sparse_digits_dir).")
    p.add_argument(
        "--k_ratios",
        default="0.025,0.05,0.1,0.25",
        help="Focus rungs of the multi-rung LookWhere (fractions of the high-resolution patches).",
    )
    p.add_argument(
        "--budget_speedups",
        default="6,5,4,3",
        help="Budgets of budgeted LookWhere as FLOPs reductions against the teacher: target mean GFLOPs per image = "
        "teacher GFLOPs / s. Each must lie between the glance's and the last rung's cost.",
    )
    p.add_argument(
        "--compressed_grids",
        default="2,4,8",
        help="LookupViT: compressed grids (s for s x s) drawn at random in training, and evaluated.",
    )
    p.add_argument(
        "--lookupvit_epochs",
        type=float,
        default=None,
        help="LookupViT fine-tuning epochs (default: LookWhere's pretraining + fine-tuning epochs of the recipe).",
    )
    p.add_argument("--lookupvit_lr", type=float, default=None, help="Default: the recipe's fine-tuning rate.")
    p.add_argument("--multirung_epochs", type=float, default=None, help="Default: the recipe's fine-tuning epochs.")
    p.add_argument(
        "--glance_focus_seeds",
        default=None,
        help="Seeds that also train and evaluate Glance-and-Focus (its three stages, run_glance_focus.py; default: "
        "all --seeds).",
    )
    p.add_argument(
        "--glance_focus_epochs",
        default=None,
        help="Glance-and-Focus epochs of stage 1 (encoders + classifier, random crops), 2 (policy, PPO) and 3 "
        "(classifier with the policy); default: 2 each for stages 2 and 3 and the rest of LookWhere's pretraining "
        "+ fine-tuning epochs for stage 1 (8,2,2 for the recipe's 4 + 8).",
    )
    p.add_argument(
        "--glance_focus_backbone",
        choices=GF_BACKBONES,
        default="teacher",
        help="Encoders of Glance-and-Focus: `teacher` (both start from the seed's ViT teacher; stage folders "
        "gf_stage1..3) or `resnet` (both start from one small transformers ResNet with random weights drawn from "
        "the seed, --glance_focus_resnet_*; the image processor keeps the whole canvas; stage folders "
        "gf_resnet_stage1..3, results in eval/glance_focus_resnet.json).",
    )
    p.add_argument(
        "--glance_focus_resnet_sizes",
        default="16,32,64,128",
        help="`resnet`: channels of the four stages (the stem has the first); basic blocks.",
    )
    p.add_argument("--glance_focus_resnet_depths", default="1,1,1,1", help="`resnet`: blocks per stage.")
    p.add_argument(
        "--glance_focus_glance_size",
        type=int,
        default=None,
        help="`resnet`: side of the glance view (default: --glance_focus_patch_size, as for the teacher).",
    )
    p.add_argument(
        "--glance_focus_lr",
        type=float,
        default=None,
        help="Learning rate of Glance-and-Focus stages 1 and 3 (default: the recipe's fine-tuning rate; stage 2 "
        "keeps the official PPO rate).",
    )
    p.add_argument("--glance_focus_patch_size", type=int, default=112, help="Glance / crop size in pixels.")
    p.add_argument("--glance_focus_steps", type=int, default=4, help="Glance + focus steps T.")
    p.add_argument("--num_threads", type=int, default=None, help="OMP/torch threads for every stage.")
    p.add_argument("--latency_runs", type=int, default=10, help="Timed rounds per latency measurement.")
    p.add_argument("--latency_images", type=int, default=16, help="Test images per latency batch (batch 16).")
    p.add_argument("--max_eval_samples", type=int, default=None, help="Evaluate on the first N images of a split.")
    p.add_argument("--stages", default=",".join(STAGES), help="Comma-separated subset of " + ", ".join(STAGES) + ".")
    p.add_argument("--force", action="store_true", help="Re-run stages whose outputs exist (default: skip them).")
    p.add_argument("--update_results", action="store_true", help=f"Rewrite '{SECTION}' in --results_md.")
    p.add_argument("--results_md", default=RESULTS_MD, help="The results file --update_results writes to.")
    args = p.parse_args(argv)
    try:
        args.seeds = comma_list(args.seeds, "--seeds", int, "integers")
        args.k_ratios = comma_list(args.k_ratios, "--k_ratios", float, "fractions in (0, 1]")
        args.budget_speedups = comma_list(args.budget_speedups, "--budget_speedups", float, "numbers > 1")
        args.compressed_grids = comma_list(args.compressed_grids, "--compressed_grids", int, "integers >= 1")
        args.stages = comma_list(args.stages, "--stages", str, "stage names")
        if args.glance_focus_epochs is not None:
            args.glance_focus_epochs = comma_list(args.glance_focus_epochs, "--glance_focus_epochs", float, "epochs")
        args.glance_focus_resnet_sizes = comma_list(
            args.glance_focus_resnet_sizes, "--glance_focus_resnet_sizes", int, "positive integers"
        )
        args.glance_focus_resnet_depths = comma_list(
            args.glance_focus_resnet_depths, "--glance_focus_resnet_depths", int, "positive integers"
        )
        args.glance_focus_seeds = (
            args.seeds
            if args.glance_focus_seeds is None
            else [int(s) for s in args.glance_focus_seeds.split(",") if s.strip()]
        )
    except ValueError as error:
        p.error(str(error))
    if args.glance_focus_epochs is not None and len(args.glance_focus_epochs) != 3:
        p.error(f"--glance_focus_epochs needs the epochs of the three stages, got {args.glance_focus_epochs}.")
    resnet_sizes, resnet_depths = args.glance_focus_resnet_sizes, args.glance_focus_resnet_depths
    if len(resnet_sizes) != len(resnet_depths) or min(resnet_sizes + resnet_depths) < 1:
        p.error(
            f"--glance_focus_resnet_sizes {resnet_sizes} and --glance_focus_resnet_depths {resnet_depths} need one "
            "positive integer per ResNet stage each, as many sizes as depths."
        )
    if args.glance_focus_glance_size is not None and args.glance_focus_backbone != "resnet":
        p.error(
            "--glance_focus_glance_size is for --glance_focus_backbone resnet (the teacher's glance has the crop size)."
        )
    if not set(args.glance_focus_seeds) <= set(args.seeds):
        p.error(f"--glance_focus_seeds {args.glance_focus_seeds} must be among --seeds {args.seeds}.")
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds lists a seed twice: {args.seeds}.")
    unknown = set(args.stages) - set(STAGES)
    if unknown:
        p.error(f"--stages has unknown stages {sorted(unknown)}; use {', '.join(STAGES)}.")
    if any(s <= 1 for s in args.budget_speedups):
        p.error(f"--budget_speedups must be > 1 (a budget below the teacher's cost), got {args.budget_speedups}.")
    if args.latency_runs < 1 or args.latency_images < 1:
        p.error("--latency_runs and --latency_images must be >= 1.")
    defaults = run_benchmark_args([])
    recipe = {key: getattr(defaults, key) for key in RECIPE_KEYS}
    summary_path = os.path.join(args.sparse_digits_dir, "summary.json")
    if os.path.isfile(summary_path):
        with open(summary_path, encoding="utf-8") as f:
            saved = json.load(f).get("arguments", {})
        recipe.update({key: saved[key] for key in RECIPE_KEYS if key in saved})
    args.recipe = recipe
    args.multirung_epochs = args.multirung_epochs or recipe["finetune_epochs"]
    args.lookupvit_epochs = args.lookupvit_epochs or recipe["pretrain_epochs"] + recipe["finetune_epochs"]
    args.lookupvit_lr = args.lookupvit_lr or recipe["finetune_lr"]
    args.glance_focus_lr = args.glance_focus_lr or recipe["finetune_lr"]
    if args.glance_focus_epochs is None:
        stage1_epochs = recipe["pretrain_epochs"] + recipe["finetune_epochs"] - sum(GF_POLICY_AND_LAST_EPOCHS)
        if stage1_epochs <= 0:
            p.error(
                f"LookWhere's recipe has {recipe['pretrain_epochs'] + recipe['finetune_epochs']:g} epochs, too few "
                "for the default Glance-and-Focus split (2 + 2 for stages 2 and 3, the rest for stage 1); pass "
                "--glance_focus_epochs."
            )
        args.glance_focus_epochs = [float(stage1_epochs), *GF_POLICY_AND_LAST_EPOCHS]
    return args


def seed_paths(args, seed: int) -> dict[str, str]:
    """Inputs (from `--sparse_digits_dir`) and outputs (under `--output_dir`) of one training seed."""
    source = os.path.join(args.sparse_digits_dir, f"seed_{seed}")
    target = os.path.join(args.output_dir, f"seed_{seed}")
    paths = {name: os.path.join(source, name) for name in ("teacher", "pretrained", "finetuned")}
    paths.update({name: os.path.join(target, name) for name in (*TRAIN_STAGES, *GF_STAGES, "eval", "logs")})
    if getattr(args, "glance_focus_backbone", "teacher") == "resnet":  # its own folders: both variants can coexist
        paths.update({name: os.path.join(target, name.replace("gf_", "gf_resnet_")) for name in GF_STAGES})
        paths["gf_resnet_backbone"] = os.path.join(target, "gf_resnet_backbone")
        paths["gf_resnet_init"] = os.path.join(target, "gf_resnet_init")
    paths["data"] = os.path.join(args.sparse_digits_dir, "data")
    return paths


def glance_focus_json(args) -> str:
    """File name of the Glance-and-Focus results in `seed_<s>/eval/` for `--glance_focus_backbone`."""
    return "glance_focus.json" if args.glance_focus_backbone == "teacher" else "glance_focus_resnet.json"


def resnet_backbone_config(args):
    """The `ResNetConfig` of `--glance_focus_backbone resnet`: basic blocks, the stem as wide as the first stage."""
    from transformers import ResNetConfig

    sizes = args.glance_focus_resnet_sizes
    return ResNetConfig(
        embedding_size=sizes[0], hidden_sizes=list(sizes), depths=list(args.glance_focus_resnet_depths),
        layer_type="basic", hidden_act="relu", downsample_in_first_stage=False,
    )  # fmt: skip


def build_resnet_glance_focus(args, paths: dict[str, str], seed: int) -> None:
    """`--glance_focus_backbone resnet`, before stage 1: a ResNet with random weights drawn from `seed`, saved with
    `save_pretrained` in `gf_resnet_backbone`; then the Glance-and-Focus model whose two encoders both hold exactly
    those weights (`GlanceFocusForImageClassification.from_backbone`, the stage-1 settings: labels 0-9, steps,
    crop size, canvas size) with an image processor that keeps the whole canvas, saved in `gf_resnet_init`, which
    stage 1 starts from (`--model_name_or_path`).

    The processor is why stage 1 does not get `--backbone_name_or_path`: `run_glance_focus.py` then builds the
    official ImageNet evaluation transform (shorter side to `image_size / 0.875`, centre crop `image_size`), which on
    the 448 px canvas drops a 28 px border, the outer ring of digit cells (60 of 256)."""
    from transformers import ResNetModel

    from lookwhere_hf.models.glance_focus import GlanceFocusForImageClassification, GlanceFocusImageProcessor

    torch.manual_seed(seed)
    backbone = ResNetModel(resnet_backbone_config(args))
    backbone.save_pretrained(paths["gf_resnet_backbone"])
    canvas = int(args.recipe["canvas_size"])
    id2label = {i: str(i) for i in range(10)}
    model = GlanceFocusForImageClassification.from_backbone(
        paths["gf_resnet_backbone"], num_labels=10, id2label=id2label, label2id={n: i for i, n in id2label.items()},
        num_steps=args.glance_focus_steps, patch_size=args.glance_focus_patch_size, image_size=canvas,
        glance_size=args.glance_focus_glance_size,
    )  # fmt: skip
    model.save_pretrained(paths["gf_resnet_init"])
    processor = GlanceFocusImageProcessor.from_model_config(
        model.config, size={"height": canvas, "width": canvas}, do_center_crop=False
    )
    processor.save_pretrained(paths["gf_resnet_init"])


def training_commands(args, paths: dict[str, str], seed: int) -> dict[str, list[str]]:
    """The command line of every training stage of seed `seed`."""

    recipe, py, here = args.recipe, sys.executable, os.path.abspath(__file__)
    # run_benchmark's `common_training_flags` reads the batch size from its own arguments
    shared = argparse.Namespace(batch_size=recipe["batch_size"])
    ratios = ",".join(str(r) for r in args.k_ratios)
    grids = ",".join(str(g) for g in args.compressed_grids)
    worker_flags = flags(
        data_dir=paths["data"], seed=seed, epochs=args.multirung_epochs, learning_rate=recipe["finetune_lr"],
        batch_size=recipe["batch_size"],
    )  # fmt: skip
    return {
        "multirung": [
            py, FINETUNE_SCRIPT,
            *flags(model_name_or_path=paths["pretrained"], dataset_name=paths["data"], image_size=recipe["canvas_size"],
                   low_res_size=recipe["low_res_size"], k_ratio=recipe["k_ratio"], k_ratios=ratios, glance_head=True,
                   freeze_selector=True, no_augment=True, do_train=True, do_eval=True, eval_strategy="no"),
            *common_training_flags(shared, paths["multirung"], args.multirung_epochs, recipe["finetune_lr"], seed),
        ],
        "random_rung": [
            py, here, "train-random-rung", *worker_flags,
            *flags(model=paths["pretrained"], output_dir=paths["random_rung"], k_ratio=recipe["k_ratio"],
                   k_ratios=ratios),
        ],
        "lookupvit": [
            py, FINETUNE_SCRIPT,
            *flags(model_family="lookupvit", init_from_dinov2=paths["teacher"], dataset_name=paths["data"],
                   image_size=recipe["canvas_size"], compressed_grids=grids, compressed_grid=grids.split(",")[0],
                   no_augment=True, do_train=True, do_eval=True, eval_strategy="no"),
            *common_training_flags(shared, paths["lookupvit"], args.lookupvit_epochs, args.lookupvit_lr, seed),
        ],
    }  # fmt: skip


def glance_focus_commands(args, paths: dict[str, str], seed: int) -> dict[str, list[str]]:
    """The three Glance-and-Focus stages of seed `seed` (`run_glance_focus.py`, accelerate loop): encoders from the
    seed's teacher (a DINOv2-with-registers ViT: the glance sees the whole image at the crop size, each focus step
    one full-resolution crop) or, with `--glance_focus_backbone resnet`, from the model `build_resnet_glance_focus`
    saves; the recipe's batch size and fine-tuning learning rate (stage 2: the official PPO settings)."""
    recipe = args.recipe
    # `--image_size` makes run_glance_focus.py rebuild the official (centre-cropping) processor, so the ResNet
    # variant, whose saved model already has the canvas size, goes without it and keeps its whole-canvas processor
    resnet = args.glance_focus_backbone == "resnet"
    start = {"model_name_or_path": paths["gf_resnet_init"]} if resnet else {"backbone_name_or_path": paths["teacher"]}
    common = flags(
        dataset_name=paths["data"], **({} if resnet else {"image_size": recipe["canvas_size"]}),
        per_device_train_batch_size=recipe["batch_size"], per_device_eval_batch_size=64, weight_decay=0.05,
        lr_scheduler_type="cosine", seed=seed, no_augment=True, logging_steps=20,
    )  # fmt: skip
    first, second, third = args.glance_focus_epochs
    return {
        "gf_stage1": [
            sys.executable, GLANCE_FOCUS_SCRIPT, *common,
            *flags(stage=1, **start, num_steps=args.glance_focus_steps,
                   patch_size=args.glance_focus_patch_size, output_dir=paths["gf_stage1"], num_train_epochs=first,
                   learning_rate=args.glance_focus_lr),
        ],
        "gf_stage2": [
            sys.executable, GLANCE_FOCUS_SCRIPT, *common,
            *flags(stage=2, model_name_or_path=paths["gf_stage1"], output_dir=paths["gf_stage2"],
                   num_train_epochs=second),
        ],
        "gf_stage3": [
            sys.executable, GLANCE_FOCUS_SCRIPT, *common,
            *flags(stage=3, model_name_or_path=paths["gf_stage2"], output_dir=paths["gf_stage3"],
                   num_train_epochs=third, learning_rate=args.glance_focus_lr),
        ],
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------------- workers
class ImageFolderSplit:
    """One split of the Sparse Digits imagefolder as a torch dataset: `{pixel_values, [low_res_pixel_values],
    labels}` made by `processor` from the PNG (the label is the digit, so the class id is `int(label)`, as the
    imagefolder's sorted class names `0..9` give)."""

    def __init__(self, data_dir: str, split: str, processor, max_samples: int | None = None) -> None:
        rows = sorted(read_annotations(data_dir, split).values(), key=lambda r: r["file_name"])
        if not rows:
            raise ValueError(f"No {split!r} images in {data_dir}/annotations.jsonl; is it a Sparse Digits folder?")
        self.rows = rows[:max_samples] if max_samples else rows
        self.data_dir, self.processor = data_dir, processor

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, index: int):
        from PIL import Image

        return Image.open(os.path.join(self.data_dir, self.rows[index]["file_name"])).convert("RGB")

    def __getitem__(self, index: int) -> dict:
        inputs = self.processor(self.image(index), return_tensors="pt")
        example = {key: value[0] for key, value in inputs.items() if key.endswith("pixel_values")}
        example["labels"] = int(self.rows[index]["label"])
        return example


def _worker_parser(name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"compare_families.py {name}")
    for flag, kind in (("data_dir", str), ("model", str), ("output_dir", str)):
        p.add_argument(f"--{flag}", type=kind, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--epochs", type=float, required=True)
    p.add_argument("--learning_rate", type=float, required=True)
    p.add_argument("--batch_size", type=int, required=True)
    p.add_argument("--max_train_samples", type=int, default=None)
    return p


def _training_arguments(args, output_dir: str):
    """The Trainer settings of run_benchmark's fine-tuning stage (`common_training_flags`), as an object."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir, num_train_epochs=args.epochs, learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size, weight_decay=0.05, warmup_steps=0.1, lr_scheduler_type="cosine",
        logging_steps=20, save_strategy="no", report_to="none", seed=args.seed, dataloader_num_workers=0,
        remove_unused_columns=False,
    )  # fmt: skip


def _labels(num_labels: int = 10) -> dict:
    id2label = {i: str(i) for i in range(num_labels)}
    return {"num_labels": num_labels, "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}


def train_random_rung(argv: list[str]) -> None:
    """Multi-rung fine-tuning with one random rung per step (uniform over glance + focus rungs).

    A focus rung `k` is the model's own fixed-`k` forward and loss; the glance rung is the glance head on the
    selector's output, built as `LookWhereForImageClassification._forward_rungs` builds it. Everything else (frozen
    selector, data, schedule, seed) is the `multirung` stage's."""
    from transformers import Trainer, set_seed

    from lookwhere_hf import LookWhereForImageClassification, LookWhereImageProcessor

    p = _worker_parser("train-random-rung")
    p.add_argument("--k_ratio", type=float, required=True)
    p.add_argument("--k_ratios", required=True)
    args = p.parse_args(argv)
    set_seed(args.seed)
    ratios = comma_list(args.k_ratios, "--k_ratios", float, "fractions")
    model = LookWhereForImageClassification.from_pretrained(
        args.model, k_ratio=args.k_ratio, anytime_k_ratios=ratios, glance_head=True, train_all_rungs=False,
        freeze_selector=True, **_labels(),
    )  # fmt: skip
    processor = LookWhereImageProcessor.from_pretrained(args.model)
    train = ImageFolderSplit(args.data_dir, "train", processor, args.max_train_samples)
    grid = model.config.extractor_config.image_size // model.config.patch_size
    rung_k = [0] + model.config.rung_ks(grid * grid)
    generator = torch.Generator().manual_seed(args.seed)

    class RandomRungTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            k = rung_k[int(torch.randint(len(rung_k), (1,), generator=generator))]
            pixel_values, low_res = inputs["pixel_values"], inputs["low_res_pixel_values"]
            if k == 0:
                _, prefix, patches, _ = model.lookwhere.select(pixel_values, low_res)
                logits = model.glance_classifier(model.dropout(torch.cat((prefix[:, 0], patches.mean(dim=1)), -1)))
            else:
                logits = model(pixel_values=pixel_values, low_res_pixel_values=low_res, k=k).logits
            loss = torch.nn.functional.cross_entropy(logits, inputs["labels"])
            return (loss, {"logits": logits}) if return_outputs else loss

    trainer = RandomRungTrainer(model=model, args=_training_arguments(args, args.output_dir), train_dataset=train)
    _train_and_save(trainer, processor, args.output_dir)


def _train_and_save(trainer, processor, output_dir: str) -> None:
    metrics = trainer.train().metrics
    trainer.save_model(output_dir)
    processor.save_pretrained(output_dir)
    with open(os.path.join(output_dir, "train_results.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=1)
    print(f"saved {output_dir}: {metrics}")


# ----------------------------------------------------------------------------------------------------- evaluation
FAMILY_HOOKS: dict = {}
"""Further families: name -> object with `evaluate(args, paths, seed, {"validation": split, "test": split}) -> dict`
(its result goes into the seed's results under that name)."""


def _load_models(paths: dict[str, str], attn_implementation: str = "sdpa") -> dict:
    """The seed's models in eval mode: `teacher`, `fixed` (the fixed-k fine-tune) and, when trained, `multirung`,
    `random_rung`, `lookupvit`."""
    from transformers import AutoModelForImageClassification

    from lookwhere_hf import LookWhereForImageClassification
    from lookwhere_hf.models.lookupvit.modeling_lookupvit import LookupViTForImageClassification

    kw = {"attn_implementation": attn_implementation}
    models = {
        "teacher": AutoModelForImageClassification.from_pretrained(paths["teacher"], **kw),
        "fixed": LookWhereForImageClassification.from_pretrained(paths["finetuned"], **kw),
    }
    from lookwhere_hf.models.glance_focus.modeling_glance_focus import GlanceFocusForImageClassification

    for name, cls in (
        ("gf_stage3", GlanceFocusForImageClassification),
        ("multirung", LookWhereForImageClassification),
        ("random_rung", LookWhereForImageClassification),
        ("lookupvit", LookupViTForImageClassification),
    ):
        if os.path.isfile(os.path.join(paths[name], "model.safetensors")):
            # a convolutional Glance-and-Focus backbone has no attention to choose; transformers' default is sdpa
            # where the backbone supports it, the ViT teacher's case
            models[name] = cls.from_pretrained(paths[name], **({} if name == "gf_stage3" else kw))
    return {name: model.eval() for name, model in models.items()}


def _processors(paths: dict[str, str], models: dict) -> dict:
    from transformers import AutoImageProcessor

    from lookwhere_hf import LookWhereImageProcessor

    processors = {
        "lookwhere": LookWhereImageProcessor.from_pretrained(paths["finetuned"]),
        "teacher": AutoImageProcessor.from_pretrained(paths["teacher"]),
    }
    for name in ("lookupvit", "gf_stage3"):
        if name in models:
            processors[name] = AutoImageProcessor.from_pretrained(paths[name])
    return processors


def _inputs(processors: dict, images: list) -> dict:
    out = {}
    for name, processor in processors.items():
        encoded = processor(images, return_tensors="pt")
        out[name] = {key: value for key, value in encoded.items() if key.endswith("pixel_values")}
    return out


def num_kept(model, ratio: float) -> int:
    """High-resolution patches a LookWhere model keeps at `ratio` (floor, at least 1, as `config.num_selected`)."""
    grid = model.config.extractor_config.image_size // model.config.patch_size
    return model.config.num_selected(grid * grid, max(1, int(ratio * grid * grid)))


def _rung_gflops(model, inputs: dict) -> list[float]:
    """Cumulative GFLOPs per image of exiting at each rung (the model's own `rung_flops`)."""

    with torch.no_grad():
        flops = model(**{key: value[:1] for key, value in inputs.items()}, anytime=True).rung_flops[0]
    return [float(f) / 1e9 for f in flops]


def _collect(args, models: dict, processors: dict, split: ImageFolderSplit, budgets: dict | None) -> dict:
    """Predictions of every model and operating point on one split (batches of 50).

    Returns `labels (N,)`, `teacher`, `fixed/<ratio>`, `lookupvit/<grid>` (logits), `anytime/<model>` (softmax per
    rung, `(N, T, C)`), `hits/<ratio>` (selector hit per image) and, with `budgets` (name -> thresholds), the real
    budgeted forward's `budgeted/<name>` logits and `budgeted_flops/<name>` (per image)."""
    import numpy as np

    from lookwhere_hf.models.lookwhere.selection import select_top_k

    fixed = models["fixed"]
    patch = fixed.config.patch_size
    grid = fixed.config.extractor_config.image_size // patch
    ks = [num_kept(fixed, ratio) for ratio in args.k_ratios]
    out: dict[str, list] = {}

    def add(key, value):
        out.setdefault(key, []).append(value)

    for start in range(0, len(split), 50):
        indices = range(start, min(start + 50, len(split)))
        rows = [split.rows[i] for i in indices]
        views = {name: processors[name] for name in ("lookwhere", "teacher", "lookupvit") if name in processors}
        inputs = _inputs(views, [split.image(i) for i in indices])
        lw = inputs["lookwhere"]
        add("labels", torch.tensor([int(r["label"]) for r in rows]))
        with torch.no_grad():
            add("teacher", models["teacher"](**inputs["teacher"]).logits)
            for ratio, k in zip(args.k_ratios, ks):
                add(f"fixed/{ratio}", fixed(**lw, k=k).logits)
            for name in ("multirung", "random_rung"):
                if name in models:
                    add(f"anytime/{name}", models[name](**lw, anytime=True).rung_logits.softmax(-1))
            if "lookupvit" in models:
                for g in args.compressed_grids:
                    add(f"lookupvit/{g}", models["lookupvit"](**inputs["lookupvit"], compressed_grid=g).logits)
            for name, thresholds in (budgets or {}).items():
                result = models["multirung"](**lw, exit_thresholds=thresholds)
                add(f"budgeted/{name}", result.logits)
                add(f"budgeted_flops/{name}", result.flops.double())
            selector_map = fixed.lookwhere.select(lw["pixel_values"], lw["low_res_pixel_values"])[0]
        scale = grid * patch / split.image(indices[0]).size[0]  # boxes are in canvas pixels
        overlaps = np.stack([patch_overlaps(np.asarray(r["box"]) * scale, grid, patch) for r in rows])
        for ratio, k in zip(args.k_ratios, ks):
            add(
                f"hits/{ratio}",
                torch.from_numpy(selection_hits(select_top_k(selector_map, k).numpy(), overlaps)["hit"]),
            )
    return {key: torch.cat(values) for key, values in out.items()}


def _accuracy(logits_or_probs, labels) -> float:
    return float((logits_or_probs.argmax(-1) == labels).double().mean())


def _counted_flops(args, paths: dict, split: ImageFolderSplit, budgets: dict) -> dict:
    """FLOPs per image counted by `FlopCounterMode` (eager attention: the counter does not see the CPU SDPA kernel's
    matmuls) on 4 test images: teacher, fixed k, LookupViT per grid, and one budgeted forward (its per-image FLOPs
    summed, against the count)."""
    from torch.utils.flop_counter import FlopCounterMode

    models = _load_models(paths, "eager")
    processors = _processors(paths, models)
    inputs = _inputs(processors, [split.image(i) for i in range(min(4, len(split)))])
    n = inputs["teacher"]["pixel_values"].shape[0]
    calls = {"teacher": lambda: models["teacher"](**inputs["teacher"])}
    for ratio in args.k_ratios:
        k = num_kept(models["fixed"], ratio)
        calls[f"fixed/{ratio}"] = lambda k=k: models["fixed"](**inputs["lookwhere"], k=k)
    if "lookupvit" in models:
        for g in args.compressed_grids:
            calls[f"lookupvit/{g}"] = lambda g=g: models["lookupvit"](**inputs["lookupvit"], compressed_grid=g)
    reported = {}
    if "multirung" in models and budgets:
        name, thresholds = next(iter(budgets.items()))

        def budgeted():
            result = models["multirung"](**inputs["lookwhere"], exit_thresholds=thresholds)
            reported["budgeted"] = float(result.flops.double().sum()) / n
            return result

        calls[f"budgeted/{name}"] = budgeted
    counted = {}
    with torch.no_grad():
        for key, call in calls.items():
            with FlopCounterMode(display=False) as counter:
                call()
            counted[key] = counter.get_total_flops() / n / 1e9
    counted.update({f"{key}_reported": value / 1e9 for key, value in reported.items()})
    return counted


def _latency(args, models: dict, processors: dict, split: ImageFolderSplit, budgets: dict, gf_budgets=None) -> dict:
    """Milliseconds per image, median of `--latency_runs` interleaved rounds (one process, the current torch
    threads): each model on the first `--latency_images` test images as one batch (`b16`) and one image at a time
    (`b1`: the loop over the same images, divided by their number), so budgeted runs see the test set's mix."""

    from lookwhere_hf.benchmarking import time_interleaved

    count = min(args.latency_images, len(split))
    inputs = _inputs(processors, [split.image(i) for i in range(count)])
    forwards = {"teacher": ("teacher", lambda x: models["teacher"](**x))}
    for ratio in args.k_ratios:
        k = num_kept(models["fixed"], ratio)
        forwards[f"fixed/{ratio}"] = ("lookwhere", lambda x, k=k: models["fixed"](**x, k=k))
    for name, thresholds in budgets.items():
        forwards[f"budgeted/{name}"] = (
            "lookwhere",
            lambda x, t=thresholds: models["multirung"](**x, exit_thresholds=t),
        )
    if "lookupvit" in models:
        for g in args.compressed_grids:
            forwards[f"lookupvit/{g}"] = ("lookupvit", lambda x, g=g: models["lookupvit"](**x, compressed_grid=g))
    for name, thresholds in (gf_budgets or {}).items():
        forwards[f"gf_budgeted/{name}"] = (
            "gf_stage3",
            lambda x, t=thresholds: models["gf_stage3"](**x, exit_thresholds=t),
        )
    calls = {}
    for key, (view, forward) in forwards.items():
        batch = inputs[view]
        singles = [{name: value[i : i + 1] for name, value in batch.items()} for i in range(count)]
        calls[f"b{count}/{key}"] = lambda f=forward, b=batch: f(b)
        calls[f"b1/{key}"] = lambda f=forward, s=singles: [f(x) for x in s]
    with torch.inference_mode():
        timings = time_interleaved(calls, args.latency_runs, warmup=1, desc="latency")
    return {key: 1000 * timing.median / count for key, timing in timings.items()}


def _box_hits(crops: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: does a focus crop overlap the digit box, does one contain it whole? `crops (N, S, 4)` pixel boxes
    (`-1`: step not taken), `boxes (N, 4)`, both `(x0, y0, x1, y1)` with exclusive ends."""
    box = boxes[:, None, :]
    taken = crops[..., 0] >= 0
    overlap = (torch.minimum(crops[..., 2], box[..., 2]) > torch.maximum(crops[..., 0], box[..., 0])) & (
        torch.minimum(crops[..., 3], box[..., 3]) > torch.maximum(crops[..., 1], box[..., 1])
    )
    contain = (crops[..., 0] <= box[..., 0]) & (crops[..., 1] <= box[..., 1])
    contain &= (crops[..., 2] >= box[..., 2]) & (crops[..., 3] >= box[..., 3])
    return (overlap & taken).any(dim=1), (contain & taken).any(dim=1)


def processed_boxes(processor, boxes: torch.Tensor, canvas: int) -> torch.Tensor:
    """Digit boxes `(N, 4)` of square `canvas`-pixel images in the pixels of the processor's output: scaled by its
    resize (`shortest_edge` or `height`), then shifted by its centre crop (`crop_size`) when it crops."""
    size = processor.size
    resized = (size.shortest_edge or size.height) if processor.do_resize else canvas
    final = processor.crop_size.height if processor.do_center_crop else resized
    return boxes * (resized / canvas) - (resized - final) / 2


def evaluate_glance_focus(args, model, processor, validation, test, teacher_gflops: float) -> dict:
    """Glance-and-Focus: per-step accuracy (anytime), thresholds fitted on validation for the same budgets as
    LookWhere, the budgeted forward on test, and its policy's hit rate (a focus crop on the digit box)."""

    from lookwhere_hf.budget import fit_budget_thresholds

    def collect(split, budgets):
        out: dict[str, list] = {}
        for start in range(0, len(split), 50):
            indices = range(start, min(start + 50, len(split)))
            images = [split.image(i) for i in indices]
            inputs = processor(images, return_tensors="pt")
            rows = [split.rows[i] for i in indices]
            out.setdefault("labels", []).append(torch.tensor([int(r["label"]) for r in rows]))
            boxes = torch.tensor([r["box"] for r in rows], dtype=torch.float64)
            out.setdefault("boxes", []).append(processed_boxes(processor, boxes, images[0].size[0]))
            with torch.no_grad():
                result = model(**inputs, anytime=True)
                probs = result.rung_logits.softmax(-1)
                out.setdefault("probs", []).append(probs)
                out.setdefault("crops", []).append(result.crop_boxes.double())
                out["rung_gflops"] = [[float(f) / 1e9 for f in result.rung_flops[0]]]
                for name, thresholds in budgets.items():
                    budgeted = model(**inputs, exit_thresholds=thresholds)
                    out.setdefault(f"budgeted/{name}", []).append(budgeted.logits)
                    out.setdefault(f"budgeted_flops/{name}", []).append(budgeted.flops.double() / 1e9)
        rung_gflops = out.pop("rung_gflops")[0]
        return {key: torch.cat(values) for key, values in out.items()}, rung_gflops

    val, rung_gflops = collect(validation, {})
    budgets, fits = {}, {}
    for speedup in args.budget_speedups:
        target = teacher_gflops / speedup
        if rung_gflops[0] <= target <= rung_gflops[-1]:
            fit = fit_budget_thresholds(val["probs"], val["labels"], rung_gflops, target)
            budgets[f"{speedup:g}x"], fits[f"{speedup:g}x"] = fit.thresholds, fit
    data, _ = collect(test, budgets)
    labels = data["labels"]
    overlap, contain = _box_hits(data["crops"], data["boxes"])
    results = {
        "rung_gflops": rung_gflops,
        "validation_step_accuracy": [_accuracy(val["probs"][:, t], val["labels"]) for t in range(len(rung_gflops))],
        "steps": {
            str(t + 1): {"accuracy": _accuracy(data["probs"][:, t], labels), "gflops": rung_gflops[t]}
            for t in range(len(rung_gflops))
        },
        "crop_hit_rate": float(overlap.double().mean()),
        "crop_contains_rate": float(contain.double().mean()),
        "budgeted": {},
    }
    for name, fit in fits.items():
        results["budgeted"][name] = {
            "target_gflops": fit.target_flops,
            "thresholds": fit.thresholds,
            "validation_accuracy": fit.accuracy,
            "validation_gflops": fit.expected_flops,
            "accuracy": _accuracy(data[f"budgeted/{name}"], labels),
            "gflops": float(data[f"budgeted_flops/{name}"].mean()),
        }
    return results, budgets


def evaluate_seed(args, seed: int) -> dict:
    """Calibrate on validation, evaluate on test, count FLOPs and time the models of one seed; writes
    `seed_<s>/eval/results.json` and returns it."""

    from lookwhere_hf.budget import NEVER_EXIT, fit_budget_thresholds, simulate_exits
    from lookwhere_hf.flops import dinov2_flops, lookupvit_flops, lookwhere_flops

    paths = seed_paths(args, seed)
    torch.manual_seed(seed)
    models = _load_models(paths)
    processors = _processors(paths, models)
    lw_processor = processors["lookwhere"]
    validation = ImageFolderSplit(paths["data"], "validation", lw_processor, args.max_eval_samples)
    test = ImageFolderSplit(paths["data"], "test", lw_processor, args.max_eval_samples)
    teacher, fixed = models["teacher"], models["fixed"]
    image_size = fixed.config.extractor_config.image_size
    num_labels = fixed.config.num_labels
    teacher_gflops = (dinov2_flops(teacher.config, image_size) + 2 * 2 * teacher.config.hidden_size * num_labels) / 1e9
    results: dict = {
        "seed": seed,
        "teacher_gflops": teacher_gflops,
        "splits": {"validation": len(validation), "test": len(test)},
    }

    start = time.time()
    val = _collect(args, models, processors, validation, None)
    budgets, calibrations, rung_gflops = {}, {}, {}
    for name in ("multirung", "random_rung"):
        if name not in models:
            continue
        first = _inputs({"lookwhere": lw_processor}, [validation.image(0)])["lookwhere"]
        rung_gflops[name] = _rung_gflops(models[name], first)
        probs = val[f"anytime/{name}"]
        calibrations[name] = {}
        for speedup in args.budget_speedups:
            target = teacher_gflops / speedup
            low, high = rung_gflops[name][0], rung_gflops[name][-1]
            if not low <= target <= high:
                print(f"budget {target:.4f} GFLOPs (teacher / {speedup:g}) outside [{low:.4f}, {high:.4f}]: skipped")
                continue
            fit = fit_budget_thresholds(probs, val["labels"], rung_gflops[name], target)
            calibrations[name][f"{speedup:g}x"] = fit.to_dict()
            if name == "multirung":
                budgets[f"{speedup:g}x"] = fit.thresholds
    # The same calibration with the glance exit switched off (threshold above 1): GFNet's exit profiles (share at
    # rung t proportional to p ** t) always send images to the first rung first, useful only if the glance can
    # classify. The selector pass is paid either way, so the focus rungs keep their cumulative costs.
    if "multirung" in models and models["multirung"].config.glance_head:
        costs = rung_gflops["multirung"][1:]
        for speedup in args.budget_speedups:
            target = teacher_gflops / speedup
            if costs[0] <= target <= costs[-1]:
                probs = val["anytime/multirung"][:, 1:]
                fit = fit_budget_thresholds(probs, val["labels"], costs, target)
                name = f"{speedup:g}x_no_glance"
                calibrations["multirung"][name] = fit.to_dict()
                budgets[name] = [NEVER_EXIT, *fit.thresholds]
    results["rung_training"] = {
        name: {
            "validation_rung_accuracy": [_accuracy(val[f"anytime/{name}"][:, t], val["labels"])
                                         for t in range(val[f"anytime/{name}"].shape[1])],
            "validation_budgeted": {b: {"accuracy": c["accuracy"], "gflops": c["expected_flops"]}
                                    for b, c in calibrations[name].items() if not b.endswith("_no_glance")},
        }
        for name in calibrations
    }  # fmt: skip
    for name, timing_dir in (("multirung", "multirung"), ("random_rung", "random_rung"), ("lookupvit", "lookupvit")):
        timing_file = os.path.join(paths[timing_dir], "stage_timing.json")
        if os.path.isfile(timing_file):
            with open(timing_file, encoding="utf-8") as f:
                timing = json.load(f)
            results.setdefault("training_cpu_s", {})[name] = timing["cpu_s"]
            results.setdefault("training_wall_s", {})[name] = timing["wall_s"]

    data = _collect(args, models, processors, test, budgets)
    labels = data["labels"]
    results["teacher"] = {"accuracy": _accuracy(data["teacher"], labels), "gflops": teacher_gflops}
    results["fixed_k"] = {
        str(ratio): {
            "accuracy": _accuracy(data[f"fixed/{ratio}"], labels),
            "gflops": lookwhere_flops(fixed.config, image_size=image_size, k_ratio=ratio, num_labels=num_labels).total
            / 1e9,
            "hit_rate": float(data[f"hits/{ratio}"].double().mean()),
        }
        for ratio in args.k_ratios
    }
    for name in rung_gflops:
        model, probs = models[name], data[f"anytime/{name}"]
        points = {}
        if model.config.glance_head:
            points["glance"] = {"accuracy": _accuracy(probs[:, 0], labels), "gflops": rung_gflops[name][0]}
        offset = int(model.config.glance_head)
        for t, ratio in enumerate(model.config.anytime_k_ratios):
            flops = lookwhere_flops(model.config, image_size=image_size, k_ratio=ratio, num_labels=num_labels).total
            points[str(ratio)] = {"accuracy": _accuracy(probs[:, offset + t], labels), "gflops": flops / 1e9}
        results[f"{name}_rungs"] = points
    confidences = data["anytime/multirung"].max(-1).values if "anytime/multirung" in data else None
    results["budgeted"], results["budgeted_no_glance"] = {}, {}
    rung_costs = torch.tensor(rung_gflops.get("multirung", []), dtype=torch.float64)
    results["budget_rung_gflops"] = rung_costs.tolist()
    for name, thresholds in budgets.items():
        exits = simulate_exits(confidences.double(), thresholds)
        fit = calibrations["multirung"][name]
        flops = data[f"budgeted_flops/{name}"] / 1e9
        results["budgeted_no_glance" if name.endswith("_no_glance") else "budgeted"][name.split("_")[0]] = {
            "target_gflops": fit["target_flops"],
            "thresholds": thresholds,
            "validation_accuracy": fit["accuracy"],
            "validation_gflops": fit["expected_flops"],
            "accuracy": _accuracy(data[f"budgeted/{name}"], labels),
            "gflops": float(flops.mean()),
            "exit_shares": (torch.bincount(exits, minlength=len(rung_costs)).double() / len(exits)).tolist(),
            "gflops_of_simulated_exits": float(rung_costs[exits].mean()),
        }
    if "lookupvit" in models:
        results["lookupvit"] = {
            str(g): {
                "accuracy": _accuracy(data[f"lookupvit/{g}"], labels),
                "gflops": lookupvit_flops(models["lookupvit"].config, image_size, g, num_labels=num_labels).total / 1e9,
            }
            for g in args.compressed_grids
        }
    for name, hook in FAMILY_HOOKS.items():
        results[name] = hook.evaluate(args, paths, seed, {"validation": validation, "test": test})
    gf, gf_budgets = None, {}
    if "gf_stage3" in models and seed in args.glance_focus_seeds:
        gf, gf_budgets = evaluate_glance_focus(
            args, models["gf_stage3"], processors["gf_stage3"], validation, test, teacher_gflops
        )
    print(f"seed {seed}: predictions in {time.time() - start:.0f} s")
    results["counted_gflops"] = _counted_flops(args, paths, test, budgets)
    latency = _latency(args, models, processors, test, budgets, gf_budgets)
    results["latency_ms_per_image"] = {key: value for key, value in latency.items() if "/gf_" not in key}
    results["torch_threads"] = torch.get_num_threads()
    os.makedirs(paths["eval"], exist_ok=True)
    if gf is not None:  # its own file: Glance-and-Focus may run on fewer seeds (--glance_focus_seeds)
        gf["latency_ms_per_image"] = {key: value for key, value in latency.items() if "/gf_" in key}
        for name in GF_STAGES:
            timing_file = os.path.join(paths[name], "stage_timing.json")
            if os.path.isfile(timing_file):
                with open(timing_file, encoding="utf-8") as f:
                    gf.setdefault("training_cpu_s", {})[name] = json.load(f)["cpu_s"]
        with open(os.path.join(paths["eval"], glance_focus_json(args)), "w", encoding="utf-8") as f:
            json.dump(gf, f, indent=1)
    with open(os.path.join(paths["eval"], "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    print(f"seed {seed}: evaluation done in {time.time() - start:.0f} s -> {paths['eval']}/results.json")
    return results


# ----------------------------------------------------------------------------------------------------- aggregate
def merge_seeds(values: list, key: str = "") -> object:
    """Mean and sample standard deviation (ddof 1) over seeds of every number, recursively: a float becomes
    `{"mean", "std", "values"}`, a list one such entry per position; `seed` becomes the list of seeds, strings and
    integers equal in every seed (image counts, threads) stay plain.
    Raises `ValueError` when the seeds' results have different entries (evaluated with other settings)."""
    first = values[0]
    if isinstance(first, dict):
        if any(set(v) != set(first) for v in values):
            raise ValueError(
                f"The seeds' results differ in the entries under {key!r} ({[sorted(v) for v in values]}); evaluate "
                "every seed with the same settings (--budget_speedups, --compressed_grids, --k_ratios)."
            )
        return {name: merge_seeds([v[name] for v in values], name) for name in first}
    if isinstance(first, list):
        if any(len(v) != len(first) for v in values):
            raise ValueError(f"The seeds' results have lists of different lengths under {key!r}.")
        return [merge_seeds([v[i] for v in values], key) for i in range(len(first))]
    if key == "seed":
        return list(values)
    if isinstance(first, (str, bool, int)) or first is None:  # settings (counts, thread numbers): equal in every seed
        if any(v != first for v in values) and not all(isinstance(v, (int, float)) for v in values):
            raise ValueError(f"The seeds' results differ in the setting {key!r}: {values}.")
        if all(v == first for v in values):
            return first
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "values": [float(v) for v in values]}


def _fmt(value, scale: float = 1.0, digits: int = 1) -> str:
    """`12.3 ± 0.4` (scaled) for an aggregated number, `—` for a missing one."""
    if value is None:
        return "—"
    if isinstance(value, dict):
        return f"{value['mean'] * scale:.{digits}f} ± {value['std'] * scale:.{digits}f}"
    return f"{value * scale:.{digits}f}"


def _mean(value) -> float:
    return value["mean"] if isinstance(value, dict) else float(value)


def operating_points(agg: dict) -> list[dict]:
    """The rows of the main table and the plot: family, setting, accuracy, GFLOPs, latency key."""
    teacher_gflops = _mean(agg["teacher_gflops"])
    rows = [{"family": "teacher (full resolution)", "setting": "all 256 patches", "line": "teacher",
             **agg["teacher"], "latency": "teacher"}]  # fmt: skip
    for ratio, point in agg["fixed_k"].items():
        rows.append({"family": "LookWhere, fixed k", "setting": f"k_ratio {ratio}", "line": "fixed", **point,
                     "latency": f"fixed/{ratio}"})  # fmt: skip
    for ratio, point in agg.get("multirung_rungs", {}).items():
        setting = "glance only" if ratio == "glance" else f"rung k_ratio {ratio}"
        rows.append({"family": "LookWhere multi-rung, one rung", "setting": setting, "line": "rungs", **point})
    for name, point in agg.get("budgeted", {}).items():
        rows.append({"family": "LookWhere, budgeted", "setting": f"budget teacher / {name[:-1]}", "line": "budgeted",
                     **point, "latency": f"budgeted/{name}"})  # fmt: skip
    for name, point in agg.get("budgeted_no_glance", {}).items():
        rows.append({"family": "LookWhere, budgeted, glance exit off", "setting": f"budget teacher / {name[:-1]}",
                     "line": "budgeted_no_glance", **point, "latency": f"budgeted/{name}_no_glance"})  # fmt: skip
    for grid, point in agg.get("lookupvit", {}).items():
        rows.append({"family": "LookupViT", "setting": f"compressed grid {grid}x{grid}", "line": "lookupvit", **point,
                     "latency": f"lookupvit/{grid}"})  # fmt: skip
    gf = agg.get("glance_focus")
    if gf:
        label = "Glance-and-Focus" + (f" (seeds {gf['seeds']})" if gf["seeds"] != agg["seed"] else "")
        for step, point in gf["steps"].items():
            rows.append({"family": f"{label}, fixed steps", "setting": f"{step} step(s)", "line": "gf_steps", **point})
        for name, point in gf["budgeted"].items():
            rows.append({"family": f"{label}, budgeted", "setting": f"budget teacher / {name[:-1]}",
                         "line": "gf_budgeted", **point, "latency": f"gf_budgeted/{name}"})  # fmt: skip
    for row in rows:
        row["reduction"] = teacher_gflops / _mean(row["gflops"])
    return rows


def format_markdown(agg: dict, args, recipe_cpu: dict) -> str:
    """The tables of the aggregate (see the RESULTS.md section)."""
    seeds = agg["seed"]
    latency = agg.get("latency_ms_per_image", {})
    batch = next((key.split("/")[0] for key in latency if not key.startswith("b1/")), "b16")
    lines = [
        f"Test split ({_mean(agg['splits']['test']):.0f} images), mean ± std over training seeds "
        f"{', '.join(str(s) for s in seeds)}; budgets fitted on the validation split "
        f"({_mean(agg['splits']['validation']):.0f} images). GFLOPs per image: analytic (`lookwhere_hf.flops`; the "
        "budgeted rows: the mean of the FLOPs of each image's exit rung, as the model reports them), equal to "
        "`FlopCounterMode`'s count for every model (largest relative difference "
        f"{agg.get('_flops_check', 0.0):.1e}). Latency: milliseconds per image, median of interleaved rounds in one "
        f"process, {agg.get('torch_threads', 1)} torch thread, on the first {args.latency_images} test images as one "
        f"batch ({batch}) and one at a time (b1).",
        "",
        f"| family | operating point | accuracy (%) | GFLOPs / image | FLOPs vs teacher | b1 ms / image | {batch} ms / "
        "image |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in operating_points(agg):
        key = row.get("latency")
        b1 = latency.get(f"b1/{key}") if key else None
        bn = latency.get(f"{batch}/{key}") if key else None
        lines.append(
            f"| {row['family']} | {row['setting']} | {_fmt(row['accuracy'], 100)} | {_fmt(row['gflops'], 1, 4)} | "
            f"{row['reduction']:.1f}x | {_fmt(b1, 1, 2)} | {_fmt(bn, 1, 2)} |"
        )
    lines.append("")
    if agg.get("budgeted"):
        lines += [
            "Budgeted LookWhere, per budget: the thresholds' calibration on validation and the exits on test.",
            "",
            "| budget | target GFLOPs | validation accuracy (%) | validation GFLOPs | test accuracy (%) | "
            "test GFLOPs | test exit shares (glance, then each k_ratio rung) |",
            "|---|---|---|---|---|---|---|",
        ]
        budgets = [(name, point, "") for name, point in agg["budgeted"].items()]
        budgets += [(name, point, ", glance exit off") for name, point in agg.get("budgeted_no_glance", {}).items()]
        for name, point, variant in budgets:
            shares = " / ".join(f"{_mean(s) * 100:.0f}%" for s in point["exit_shares"])
            lines.append(
                f"| teacher / {name[:-1]}{variant} | {_fmt(point['target_gflops'], 1, 4)} | "
                f"{_fmt(point['validation_accuracy'], 100)} | {_fmt(point['validation_gflops'], 1, 4)} | "
                f"{_fmt(point['accuracy'], 100)} | {_fmt(point['gflops'], 1, 4)} | {shares} |"
            )
        lines.append("")
    training = agg.get("rung_training", {})
    if len(training) == 2:
        names = {"multirung": "every rung, mean of the rung losses", "random_rung": "one random rung per step"}
        rungs = ["glance"] + [str(r) for r in args.k_ratios]
        budgets = list(training["multirung"]["validation_budgeted"])
        lines += [
            "Multi-rung training, **validation** split: every rung each step (`config.train_all_rungs`, the scripts' "
            "mode) against one random rung per step (`compare_families.py train-random-rung`), same epochs, data and "
            "seeds.",
            "",
            "| training | " + " | ".join(f"rung {r} (%)" for r in rungs) + " | "
            + " | ".join(f"budget / {b[:-1]} (%)" for b in budgets) + " | CPU min |",
            "|---|" + "---|" * (len(rungs) + len(budgets) + 1),
        ]  # fmt: skip
        for name, label in names.items():
            accs = training[name]["validation_rung_accuracy"]
            budgeted = [training[name]["validation_budgeted"][b]["accuracy"] for b in budgets]
            cpu = agg.get("training_cpu_s", {}).get(name)
            lines.append(
                f"| {label} | " + " | ".join(_fmt(a, 100) for a in accs) + " | "
                + " | ".join(_fmt(a, 100) for a in budgeted) + f" | {_fmt(cpu, 1 / 60)} |"
            )  # fmt: skip
        lines.append("")
    cpu = agg.get("training_cpu_s", {})
    lines += [
        "Training budget after the teacher (epochs over the 2000 training images; CPU minutes per seed, 1 thread, "
        "mean ± std over the seeds):",
        "",
        "| model | stages (epochs) | CPU min |",
        "|---|---|---|",
        f"| LookWhere, fixed k | pretraining without labels ({args.recipe['pretrain_epochs']:g}) + fine-tuning at "
        f"k_ratio {args.recipe['k_ratio']} ({args.recipe['finetune_epochs']:g}) | "
        f"{_fmt(recipe_cpu.get('pretrain'), 1 / 60)} + {_fmt(recipe_cpu.get('finetune'), 1 / 60)} |",
        f"| LookWhere, multi-rung / budgeted | the same pretraining ({args.recipe['pretrain_epochs']:g}) + multi-rung "
        f"fine-tuning ({args.multirung_epochs:g}) | {_fmt(recipe_cpu.get('pretrain'), 1 / 60)} + "
        f"{_fmt(cpu.get('multirung'), 1 / 60)} |",
        f"| LookupViT | supervised fine-tuning from the teacher ({args.lookupvit_epochs:g}) | "
        f"{_fmt(cpu.get('lookupvit'), 1 / 60)} |",
    ]
    gf = agg.get("glance_focus")
    if gf:
        gf_cpu = gf.get("training_cpu_s", {})
        epochs = " + ".join(f"{e:g}" for e in args.glance_focus_epochs)
        lines.append(
            f"| Glance-and-Focus (seeds {gf['seeds']}) | stages 1 + 2 + 3 from {gf_encoder(args)} ({epochs}) | "
            + " + ".join(_fmt(gf_cpu.get(name), 1 / 60) for name in GF_STAGES)
            + " |"
        )
        selector = ", ".join(
            f"{_fmt(point['hit_rate'], 100)}% at k_ratio {ratio}" for ratio, point in agg["fixed_k"].items()
        )
        lines += [
            "",
            f"Where they look (test): the LookWhere selector's top-k patches overlap the digit box in {selector}; "
            f"a Glance-and-Focus focus crop ({args.glance_focus_steps - 1} crops of {args.glance_focus_patch_size} px, "
            f"policy mean) overlaps it in {_fmt(gf['crop_hit_rate'], 100)}% of the images and contains it whole in "
            f"{_fmt(gf['crop_contains_rate'], 100)}%.",
        ]
    lines.append("")
    return "\n".join(lines)


def gf_encoder(args) -> str:
    """What the Glance-and-Focus encoders start from, in words, for the report."""
    if args.glance_focus_backbone == "teacher":
        return "the teacher as encoder"
    sizes = "/".join(str(v) for v in args.glance_focus_resnet_sizes)
    depths = "/".join(str(v) for v in args.glance_focus_resnet_depths)
    return f"a random-init ResNet (widths {sizes}, depths {depths}) as encoder, learning rate {args.glance_focus_lr:g}"


def plot_families(agg: dict, path: str) -> None:
    """Accuracy vs mean GFLOPs per image: one line per family (± 1 std both ways), the teacher as a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {
        "fixed": ("LookWhere, fixed k (k_ratio fine-tune)", "o-", "C0"),
        "rungs": ("LookWhere multi-rung, one rung (glance, k)", "s:", "C9"),
        "budgeted": ("LookWhere, budgeted (validation thresholds)", "D-", "C3"),
        "budgeted_no_glance": ("LookWhere, budgeted, glance exit off", "d--", "C6"),
        "lookupvit": ("LookupViT (compressed grids)", "^-", "C2"),
        "gf_steps": ("Glance-and-Focus, fixed steps", "v:", "C4"),
        "gf_budgeted": ("Glance-and-Focus, budgeted", "P-", "C1"),
        "teacher": ("teacher, full resolution", "*", "k"),
    }
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    rows = operating_points(agg)
    for line, (label, fmt, color) in styles.items():
        points = sorted((r for r in rows if r["line"] == line), key=lambda r: _mean(r["gflops"]))
        if not points:
            continue
        x = [_mean(r["gflops"]) for r in points]
        y = [100 * _mean(r["accuracy"]) for r in points]
        xerr = [r["gflops"]["std"] if isinstance(r["gflops"], dict) else 0.0 for r in points]
        yerr = [100 * r["accuracy"]["std"] if isinstance(r["accuracy"], dict) else 0.0 for r in points]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=fmt, color=color, label=label, capsize=3,
                    markersize=12 if line == "teacher" else 6)  # fmt: skip
    teacher = next(r for r in rows if r["line"] == "teacher")
    goal = _mean(teacher["gflops"]) / 4
    ax.axvline(goal, color="grey", linestyle="--", linewidth=0.8)
    ax.axhline(100 * _mean(teacher["accuracy"]) - 1, color="grey", linestyle=":", linewidth=0.8)
    ax.text(goal, ax.get_ylim()[0], " teacher / 4", color="grey", va="bottom", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("mean GFLOPs per image (log scale)")
    ax.set_ylabel("test accuracy (%)")
    seeds = len(agg["seed"])
    ax.set_title(f"Sparse Digits: the families side by side (mean ± std, {seeds} seed{'s' * (seeds > 1)})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _flops_check(runs: list[dict]) -> float:
    """Largest relative difference between counted and analytic GFLOPs over the seeds' models."""
    worst = 0.0
    for run in runs:
        counted = run["counted_gflops"]
        analytic = {"teacher": run["teacher"]["gflops"]}
        analytic.update({f"fixed/{r}": p["gflops"] for r, p in run["fixed_k"].items()})
        analytic.update({f"lookupvit/{g}": p["gflops"] for g, p in run.get("lookupvit", {}).items()})
        analytic.update(
            {key: counted[f"{key.split('/')[0]}_reported"] for key in counted if key.startswith("budgeted/")}
        )
        for key, value in analytic.items():
            worst = max(worst, abs(counted[key] - value) / value)
    return worst


def _recipe_cpu(args) -> dict:
    """CPU seconds per seed of the reused run_benchmark stages (from its summary.json), aggregated."""
    path = os.path.join(args.sparse_digits_dir, "summary.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        seeds = json.load(f).get("timings", {}).get("seeds", {})
    per_seed = [seeds[str(s)] for s in args.seeds if str(s) in seeds]
    if len(per_seed) != len(args.seeds):
        return {}
    stages = set.intersection(*(set(t) for t in per_seed))
    return {stage: merge_seeds([t[stage]["cpu_s"] for t in per_seed]) for stage in stages}


def aggregate(args) -> dict | None:
    """Mean ± std over the seeds into `--output_dir`: `results.json`, `results.md`, `families.png`."""
    runs = []
    for seed in args.seeds:
        path = os.path.join(seed_paths(args, seed)["eval"], "results.json")
        if not os.path.isfile(path):
            print(f"seed {seed} has no evaluation yet ({path}): no aggregate")
            return None
        with open(path, encoding="utf-8") as f:
            runs.append(json.load(f))
    agg = merge_seeds(runs)
    agg["_flops_check"] = _flops_check(runs)
    gf_runs, gf_seeds = [], []
    for seed in args.seeds:
        path = os.path.join(seed_paths(args, seed)["eval"], glance_focus_json(args))
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                gf_runs.append(json.load(f))
            gf_seeds.append(seed)
    if gf_runs:
        agg["glance_focus"] = merge_seeds(gf_runs)
        agg["glance_focus"]["seeds"] = gf_seeds
        agg["latency_ms_per_image"].update(agg["glance_focus"]["latency_ms_per_image"])
    recipe_cpu = _recipe_cpu(args)
    text = format_markdown(agg, args, recipe_cpu)
    agg["_recipe_cpu_s"] = recipe_cpu
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(agg, f, indent=1)
    with open(os.path.join(args.output_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(text)
    try:
        plot_families(agg, os.path.join(args.output_dir, "families.png"))
    except ImportError:
        print("matplotlib is not installed: no figure (pip install matplotlib)")
    print(text)
    return agg


def goal_sentence(agg: dict) -> str:
    """Issue 12's goal, checked on the aggregate: a budget within 1 point of the teacher at >= 4x fewer FLOPs?"""
    teacher_acc, teacher_gflops = _mean(agg["teacher"]["accuracy"]), _mean(agg["teacher"]["gflops"])
    candidates = [(name, point) for name, point in agg.get("budgeted", {}).items()]
    candidates += [(f"{name} glance off", point) for name, point in agg.get("budgeted_no_glance", {}).items()]
    met = [
        name
        for name, point in candidates
        if _mean(point["accuracy"]) >= teacher_acc - 0.01 and _mean(point["gflops"]) * 4 <= teacher_gflops
    ]
    if met:
        return f"Issue 12's goal (within 1 point of the teacher at >= 4x fewer mean FLOPs) is met at budget(s) {met}."
    best = max(
        ((name, p) for name, p in candidates if _mean(p["gflops"]) * 4 <= teacher_gflops),
        key=lambda item: _mean(item[1]["accuracy"]),
        default=None,
    )
    if best is None:
        return "Issue 12's goal is not met: no budget reached 4x fewer mean FLOPs than the teacher on test."
    gap = 100 * (teacher_acc - _mean(best[1]["accuracy"]))
    return (
        f"Issue 12's goal (within 1 point of the teacher at >= 4x fewer mean FLOPs) is **not** met: the best budget at "
        f">= 4x fewer FLOPs ({best[0]}) is {gap:.1f} points below the teacher."
    )


def update_results_md(args, agg: dict, command: str) -> None:
    """Replace (or append) this comparison's section of `--results_md`; copy the figure next to this script."""
    figure = os.path.join(args.output_dir, "families.png")
    if os.path.isfile(figure) and os.path.abspath(args.results_md) == os.path.abspath(RESULTS_MD):
        shutil.copy2(figure, os.path.join(HERE, "families.png"))
    recipe_cpu = agg.get("_recipe_cpu_s", {})
    body = [
        SECTION,
        "",
        f"`{command}` (git commit {_git_commit() or 'unknown'}). It reuses the data and the per-seed teacher, "
        'pretrained and fixed-k fine-tuned LookWhere of the section "Where to look: sparse digits" (same recipe '
        "and command; `compare_families.py` trains the rest). Same data for every family; validation for "
        "calibration only, test for the numbers.",
        "",
        goal_sentence(agg),
        "",
        format_markdown(agg, args, recipe_cpu).strip(),
        "",
        "![Sparse Digits: accuracy vs mean GFLOPs per image, one line per family](sparse_digits/families.png)",
        "",
    ]
    text = "# Results\n"
    if os.path.isfile(args.results_md):
        with open(args.results_md, encoding="utf-8") as f:
            text = f.read()
    section = "\n".join(body)
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + ("\n" + text[nxt + 1 :] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(args.results_md, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"Updated '{SECTION}' in {args.results_md}")


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() or None


# ----------------------------------------------------------------------------------------------------- main
def run_training(args, seed: int, timings: dict) -> None:
    paths = seed_paths(args, seed)
    os.makedirs(paths["logs"], exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    if args.num_threads:
        env.update(OMP_NUM_THREADS=str(args.num_threads), MKL_NUM_THREADS=str(args.num_threads))
    commands = training_commands(args, paths, seed)
    if seed in args.glance_focus_seeds:
        commands.update(glance_focus_commands(args, paths, seed))
    for name, command in commands.items():
        if name not in args.stages:
            continue
        done = os.path.isfile(os.path.join(paths[name], "model.safetensors"))
        if done and not args.force:
            print(f"=== [seed {seed} {name}] exists, skipped: {paths[name]} (--force re-runs it)")
            continue
        if name == "gf_stage1" and args.glance_focus_backbone == "resnet":
            build_resnet_glance_focus(args, paths, seed)
        run_stage(f"seed {seed} {name}", command, os.path.join(paths["logs"], f"{name}.log"), env, timings)
        with open(os.path.join(paths[name], "stage_timing.json"), "w", encoding="utf-8") as f:
            json.dump({**timings[f"seed {seed} {name}"], "command": command}, f, indent=1)


def main(argv=None) -> dict | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in WORKERS:
        train_random_rung(argv[1:])
        return None
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    timings: dict = {}
    start = time.time()
    for seed in args.seeds:
        paths = seed_paths(args, seed)
        missing = [name for name in ("teacher", "pretrained", "finetuned") if not os.path.isdir(paths[name])]
        if missing:
            raise SystemExit(
                f"{args.sparse_digits_dir}/seed_{seed} lacks {missing}: run benchmarks/sparse_digits/run_benchmark.py "
                f"--output_dir {args.sparse_digits_dir} --seeds {seed} first."
            )
        run_training(args, seed, timings)
        if "evaluate" in args.stages:
            evaluate_seed(args, seed)
    print(f"total wall {time.time() - start:.0f} s")
    if "aggregate" not in args.stages:
        return None
    agg = aggregate(args)
    if agg is not None and args.update_results:
        update_results_md(args, agg, full_command(argv))
    return agg


def full_command(argv: list[str]) -> str:
    """The command line that reproduces a run made in passes: `argv` without `--stages` (finished stages are
    skipped, so the full command redoes only what is missing)."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--stages":
            skip = True
        elif not item.startswith("--stages="):
            kept.append(item)
    return "python benchmarks/sparse_digits/compare_families.py " + " ".join(kept)


if __name__ == "__main__":
    main()
