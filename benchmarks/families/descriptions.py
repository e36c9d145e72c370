"""The datasets the families harness runs on: one `DatasetDescription` each (data, teacher, LookWhere recipe, report).

A description holds everything that differs between two where-to-look benchmarks: the generator script and its flags,
the canvas and patch sizes, the teacher's recipe (flags of `benchmarks/sparse_digits/train_teacher.py`), LookWhere's
pretraining and fine-tuning recipe, whether the annotations give item sizes (and the names of their size bins), and
where the report goes. The families (multi-rung / budgeted LookWhere, LookupViT, Glance-and-Focus) get their training
budgets from the recipe (see `harness.py`).

Change a benchmark's recipe here, in one place: `SPARSE_DIGITS` reproduces the published Sparse Digits numbers,
`VARIED_ITEMS` the Varied Items configuration (its teacher: `VARIED_ITEMS_TEACHER`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Scalar fields of `DatasetDescription` that the harness's command line may override (`--<name> VALUE`), and that a
# reused run's `summary.json` ("arguments") overrides (`--recipe_dir`).
RECIPE_FIELDS = (
    "canvas_size",
    "patch_size",
    "low_res_size",
    "selector_depth",
    "k_min",
    "k_max",
    "k_ratio",
    "teacher_epochs",
    "teacher_lr",
    "teacher_batch_size",
    "pretrain_epochs",
    "pretrain_lr",
    "finetune_epochs",
    "finetune_lr",
    "batch_size",
)

# `run_pretraining.py` flags that are recipe fields of their own (so not `pretrain_flags`).
PRETRAIN_RECIPE_FLAGS = ("image_size", "low_res_size", "selector_depth", "k_min", "k_max", "learning_rate")
# The flag sets of a description that the command line extends (`--<name> key=value,...`).
FLAG_SETS = ("data_flags", "teacher_flags", "pretrain_flags")


@dataclass(frozen=True)
class DatasetDescription:
    """One where-to-look benchmark as the families harness runs it.

    Args:
        name: the `--dataset` value.
        title: the benchmark's name in reports and plots.
        generator: the data generator, relative to the repository root; called with `--output_dir`, `--seed`,
            `--canvas_size`, `--overwrite` and `data_flags`. It writes an imagefolder with `annotations.jsonl` (one row
            per image: `split`, `file_name`, `label` (class index), `box` in canvas pixels and, with size bins,
            `size_bin`) and exposes `read_annotations(data_dir, split)`.
        data_flags: the generator's other flags (sizes, counts, item source).
        canvas_size, patch_size: image side in pixels (every model's input) and the teacher's / LookWhere's patch.
        teacher_flags: `train_teacher.py` flags of the teacher's architecture and losses (the label-only teacher of
            Varied Items: every box-based loss at 0).
        teacher_epochs, teacher_lr, teacher_batch_size: the teacher's training.
        low_res_size, selector_depth, k_min, k_max: LookWhere pretraining (`run_pretraining.py`).
        pretrain_flags: `run_pretraining.py`'s other flags (e.g. `map_layer`: which teacher layer's attention map the
            selector learns; the pretraining's default, -1, is LookWhere's last layer).
        k_ratio: the fixed-k fine-tune's k_ratio.
        pretrain_epochs, pretrain_lr, finetune_epochs, finetune_lr, batch_size: LookWhere's training; the other
            families get as many epochs after the teacher (pretraining + fine-tuning) at the fine-tuning rate.
        size_bins: names of the annotations' `size_bin` values, smallest first; empty when the items have one size.
            With size bins every accuracy, hit rate and exit share is also reported per bin.
        item_name: what the label-carrying object is called in the report ("digit", "item").
        results_section: the heading of `benchmarks/RESULTS.md` that `--update_results` rewrites.
        reused_recipe_note: the report's sentence after the command when the run reuses another run's recipe stages
            (`--recipe_dir`; a one-command run says so instead).
        goals: the goals the report checks (`report.GOALS`: "issue_12", "issue_24").
        figure_dir: where `--update_results` copies the plot (relative to the repository root), next to the data.
        glance_focus_crop_pct: Glance-and-Focus's image processor keeps this share of the canvas, centred (`--crop_pct`
            of `run_glance_focus.py`): 1.0 is the whole canvas, what every other family sees; 0.875 is GFNet's
            ImageNet evaluation transform (shorter side to `canvas / 0.875`, centre crop `canvas`), which drops a
            border of `canvas / 16` pixels on each side.
    """

    name: str
    title: str
    generator: str
    data_flags: dict = field(default_factory=dict)
    canvas_size: int = 448
    patch_size: int = 28
    teacher_flags: dict = field(default_factory=dict)
    teacher_epochs: float = 10.0
    teacher_lr: float = 1e-3
    teacher_batch_size: int = 16
    pretrain_flags: dict = field(default_factory=dict)
    low_res_size: int = 224
    selector_depth: int = 2
    k_min: int = 8
    k_max: int = 64
    k_ratio: float = 0.1
    pretrain_epochs: float = 4.0
    pretrain_lr: float = 5e-4
    finetune_epochs: float = 8.0
    finetune_lr: float = 3e-4
    batch_size: int = 32
    size_bins: tuple[str, ...] = ()
    item_name: str = "item"
    results_section: str = ""
    reused_recipe_note: str = ""
    goals: tuple[str, ...] = ()
    figure_dir: str = ""
    glance_focus_crop_pct: float = 1.0

    def __post_init__(self) -> None:
        if self.canvas_size % self.patch_size or self.low_res_size % self.patch_size:
            raise ValueError(
                f"{self.name}: the canvas ({self.canvas_size} px) and the low-resolution view ({self.low_res_size} px) "
                f"must be multiples of the patch size ({self.patch_size} px)."
            )
        if not 0 < self.k_ratio <= 1:
            raise ValueError(f"{self.name}: k_ratio must be in (0, 1], got {self.k_ratio}.")
        if not 1 <= self.k_min <= self.k_max:
            raise ValueError(f"{self.name}: need 1 <= k_min <= k_max, got {self.k_min} and {self.k_max}.")
        for name in (
            "teacher_epochs",
            "pretrain_epochs",
            "finetune_epochs",
            "teacher_lr",
            "pretrain_lr",
            "finetune_lr",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{self.name}: {name} must be positive, got {getattr(self, name)}.")
        if not 0 < self.glance_focus_crop_pct <= 1:
            raise ValueError(
                f"{self.name}: glance_focus_crop_pct must be in (0, 1] (1.0 keeps the whole canvas), got "
                f"{self.glance_focus_crop_pct}."
            )
        if self.batch_size < 1 or self.teacher_batch_size < 1:
            raise ValueError(f"{self.name}: batch sizes must be >= 1.")
        reserved = {"output_dir", "seed", "canvas_size", "overwrite"} & set(self.data_flags)
        if reserved:
            raise ValueError(f"{self.name}: data_flags may not set {sorted(reserved)}; the harness sets them.")
        reserved = {*PRETRAIN_RECIPE_FLAGS, "teacher_name_or_path", "train_dir", "output_dir", "seed"}
        reserved &= set(self.pretrain_flags)
        if reserved:
            raise ValueError(
                f"{self.name}: pretrain_flags may not set {sorted(reserved)}; they are recipe fields or set by the "
                "harness."
            )

    def replace(self, **changes) -> DatasetDescription:
        """A copy with `changes` (validated again)."""
        return dataclasses.replace(self, **changes)

    def recipe(self) -> dict:
        """The fields a run records in its `summary.json` (the scalars of `RECIPE_FIELDS` and both flag sets)."""
        return {
            **{name: getattr(self, name) for name in RECIPE_FIELDS},
            "data_flags": dict(self.data_flags),
            "teacher_flags": dict(self.teacher_flags),
            "pretrain_flags": dict(self.pretrain_flags),
        }


SPARSE_DIGITS = DatasetDescription(
    name="sparse_digits",
    title="Sparse Digits",
    generator="benchmarks/sparse_digits/make_dataset.py",
    data_flags={
        "min_digit_size": 24,
        "max_digit_size": 28,
        "align_to_grid": 28,
        "num_train": 2000,
        "num_validation": 200,
        "num_test": 500,
    },
    canvas_size=448,
    patch_size=28,
    teacher_flags={
        "hidden_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "zoom_curriculum": 0.0,
        "token_loss_weight": 1.0,
        "attention_loss_weight": 1.0,
    },
    # 10: with 5, the teacher left its chance-level plateau too late on 2 of 5 seeds (sparse_digits/README.md)
    teacher_epochs=10,
    teacher_lr=1e-3,
    teacher_batch_size=16,
    low_res_size=224,
    selector_depth=2,
    k_min=8,
    k_max=64,
    k_ratio=0.1,
    pretrain_epochs=4,
    pretrain_lr=5e-4,
    finetune_epochs=8.0,
    finetune_lr=3e-4,
    batch_size=32,
    size_bins=(),
    item_name="digit",
    results_section="## Sparse Digits: the families side by side",
    reused_recipe_note=(
        "It reuses the data and the per-seed teacher, pretrained and fixed-k fine-tuned LookWhere of the section "
        '"Where to look: sparse digits" (same recipe and command; `compare_families.py` trains the rest).'
    ),
    goals=("issue_12",),
    figure_dir="benchmarks/sparse_digits",
    # the published Glance-and-Focus rows were run with GFNet's evaluation transform, which drops the outer ring of
    # digit cells (60 of 256); `--glance_focus_crop_pct 1.0` gives it the whole canvas
    glance_focus_crop_pct=0.875,
)

# The Varied Items teacher: "teacher A" of benchmarks/varied_items/TEACHER_ATTEMPTS.md, label-only (no box-based
# loss). Change the teacher here: these are `train_teacher.py` flags (with `teacher_epochs`, `teacher_lr` and
# `teacher_batch_size` of VARIED_ITEMS below).
VARIED_ITEMS_TEACHER = {
    "hidden_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 3,
    "zoom_curriculum": 0.0,
    "token_loss_weight": 0.0,
    "attention_loss_weight": 0.0,
}

VARIED_ITEMS = DatasetDescription(
    name="varied_items",
    title="Varied Items",
    generator="benchmarks/varied_items/make_dataset.py",
    data_flags={
        "items": "fashion_mnist",
        "items_dir": "/usr/share/datasets/fashion-mnist",
        "min_item_size": 20,
        "max_item_size": 224,
        "num_train": 8000,
        "num_validation": 1000,
        "num_test": 2000,
        "num_workers": 1,
    },
    teacher_flags=VARIED_ITEMS_TEACHER,
    teacher_epochs=8,
    teacher_batch_size=32,
    # LookWhere's own target, the teacher's last-layer map. For the weak teachers A-D an earlier layer's map found
    # small items more often (`pretrain_flags={"map_layer": 0}`); for the shared teacher (benchmarks/varied_items/
    # teacher) the last layer's does, at every k (validation; TEACHER_ATTEMPTS.md, phase 3).
    # 2 + 3 epochs over the 8000 canvases (4x Sparse Digits' 2000): the other families get 5 epochs each, and one
    # seed of every family takes ~1 h of one CPU thread. The canvas and patch sizes and the rest of LookWhere's recipe
    # are the defaults, Sparse Digits' (448 px, patch 28, selector depth 2 at 224 px, k in [8, 64], k_ratio 0.1,
    # 5e-4 / 3e-4, batch 32).
    pretrain_epochs=2,
    finetune_epochs=3,
    size_bins=("small", "medium", "large"),
    item_name="item",
    results_section="## Varied Items: the families side by side",
    reused_recipe_note=(
        "It reuses the data and the per-seed label-only teacher, pretrained and fixed-k fine-tuned LookWhere of "
        "another run (`--recipe_dir`). The item boxes and sizes are read for the evaluation only."
    ),
    goals=("issue_24",),
    figure_dir="benchmarks/varied_items",
)

DESCRIPTIONS = {description.name: description for description in (SPARSE_DIGITS, VARIED_ITEMS)}
