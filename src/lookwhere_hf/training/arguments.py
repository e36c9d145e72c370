"""Command-line arguments of the example scripts (dataclasses for `HfArgumentParser`), their validation, and parsing.

Every check that can fail before data or weights are loaded is here and raises [`ArgumentError`] with a message that
names the flag and says what to change. [`run_cli`] turns that error into `prog: error: <message>` and exit status 2.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..models.lookupvit.configuration_lookupvit import LookupViTConfig, check_grid_fits, grid_pair
from ..models.lookwhere.configuration_lookwhere import to_pair
from ..utils import hub_offline, looks_like_local_path

LOOKWHERE_MODEL_TYPES = ("lookwhere",)
LOOKUPVIT_MODEL_TYPES = ("lookupvit",)
DINOV2_MODEL_TYPES = ("dinov2_with_registers", "dinov2")
VIT_MODEL_TYPES = ("vit",)
GLANCE_FOCUS_MODEL_TYPES = ("glance_focus",)
MODEL_FAMILIES = ("lookwhere", "lookupvit")
SELECTOR_DEPTH = 3
# Fine-tuning flags that only one family takes (given = not at the field's default).
LOOKWHERE_ONLY = ("k_ratio", "low_res_size", "freeze_selector", "selector_depth", "k_ratios", "glance_head")
LOOKWHERE_ONLY += ("calibrate_budget",)
LOOKUPVIT_ONLY = ("compressed_grids", "compressed_grid")
CHECKPOINT_NAMES = {
    LOOKWHERE_MODEL_TYPES: "a LookWhere",
    LOOKWHERE_MODEL_TYPES + LOOKUPVIT_MODEL_TYPES: "a LookWhere or LookupViT",
    DINOV2_MODEL_TYPES: "a DINOv2-with-registers (or DINOv2)",
    VIT_MODEL_TYPES: "a ViT",
    GLANCE_FOCUS_MODEL_TYPES: "a Glance-and-Focus",
}


class ArgumentError(ValueError):
    """A user-facing argument problem found before training; the message says what to change."""


# ----------------------------------------------------------------------------------------------- model
@dataclass
class HubArguments:
    """Where checkpoints and datasets come from."""

    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache models and datasets."})
    model_revision: str = field(default="main", metadata={"help": "Model version (branch, tag or commit id)."})
    token: str | None = field(default=None, metadata={"help": "Hugging Face Hub token for private models/datasets."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow code from the Hub (models or datasets that ship their own code)."}
    )

    def hub_kwargs(self) -> dict[str, Any]:
        """`cache_dir`, `revision` and `token` for `from_pretrained`."""
        return {"cache_dir": self.cache_dir, "revision": self.model_revision, "token": self.token}


@dataclass
class ModelArguments(HubArguments):
    """Which model to fine-tune (LookWhere or LookupViT), and each family's own settings.

    The family comes from the checkpoint's `model_type` with `--model_name_or_path` (as `AutoModel` picks the class),
    is LookupViT with `--init_from_vit`, and with `--init_from_dinov2` is `--model_family` (default LookWhere). A flag
    of the other family is an error, not silently ignored."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A LookWhere or LookupViT checkpoint (local folder or Hub id) to start from; its model_type "
            "decides the family."
        },
    )
    model_family: str | None = field(
        default=None,
        metadata={
            "help": "lookwhere or lookupvit: which model --init_from_dinov2 builds (default lookwhere). With "
            "--model_name_or_path the checkpoint decides; a different value here is an error.",
            "choices": list(MODEL_FAMILIES),
        },
    )
    init_from_dinov2: str | None = field(
        default=None,
        metadata={
            "help": "A DINOv2-with-registers checkpoint (folder or Hub id) to build the model from when no LookWhere / "
            "LookupViT weights exist. LookWhere (`from_dinov2`): extractor = the checkpoint, selector = its first "
            "--selector_depth layers with a new head. LookupViT (--model_family lookupvit, `from_dinov2`): its "
            "compressed stream = the checkpoint's layers, new cross-attentions and lookup MLP. Use instead of "
            "--model_name_or_path."
        },
    )
    init_from_vit: str | None = field(
        default=None,
        metadata={
            "help": "LookupViT only: a ViT checkpoint (folder or Hub id) to build a LookupViT from (`from_vit`). Use "
            "instead of --model_name_or_path."
        },
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Image processor folder / Hub id, if not the model's own."}
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "High-resolution input size (a multiple of the patch size). The position embeddings of the full "
            "resolution tokens (LookWhere's extractor, LookupViT's lookup tokens) are resized to it and the saved "
            "config / image processor use it. Default: the model's."
        },
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={
            "help": "Re-initialize checkpoint weights whose shape differs (e.g. a classifier with other labels)."
        },
    )
    # LookWhere only
    k_ratio: float | None = field(
        default=None,
        metadata={
            "help": "LookWhere: fraction of high-resolution patches the extractor sees, in (0, 1]. Default: the "
            "model's."
        },
    )
    low_res_size: int | None = field(
        default=None,
        metadata={"help": "LookWhere: selector input size (a multiple of the patch size 14). Default: the model's."},
    )
    freeze_selector: bool | None = field(
        default=None,
        metadata={
            "help": "LookWhere: keep the selector frozen during fine-tuning (default True, as the official fine-tuning "
            "does; --freeze_selector False trains its backbone).",
            "nargs": "?",
            "const": True,
        },
    )
    selector_depth: int | None = field(
        default=None, metadata={"help": f"LookWhere: selector depth for --init_from_dinov2 (default {SELECTOR_DEPTH})."}
    )
    # LookupViT only
    compressed_grids: str | None = field(
        default=None,
        metadata={
            "help": "LookupViT: the compressed grids training draws from (one per step, uniformly), comma-separated in "
            "increasing size, each s (an s x s grid) or HxW, e.g. 4,6,8 (`config.compressed_grids`). Default: the "
            "model's."
        },
    )
    compressed_grid: str | None = field(
        default=None,
        metadata={
            "help": "LookupViT: the compressed grid of evaluation and of the saved model (`config.compressed_grid`; "
            "callers can still pass compressed_grid= per call), s or HxW, one of the training grids. Default: the "
            "model's if it is among the training grids, else the largest of them."
        },
    )

    @property
    def model_source(self) -> str | None:
        """The checkpoint the run starts from (`--model_name_or_path`, `--init_from_dinov2` or `--init_from_vit`)."""
        return self.model_name_or_path or self.init_from_dinov2 or self.init_from_vit

    def family_flags_given(self) -> dict[str, tuple[str, ...]]:
        """The family-specific flags set away from their defaults: `{"lookwhere": (...), "lookupvit": (...)}`."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {
            family: tuple(name for name in names if name in defaults and getattr(self, name) != defaults[name])
            for family, names in (("lookwhere", LOOKWHERE_ONLY), ("lookupvit", LOOKUPVIT_ONLY))
        }


@dataclass
class ClassificationModelArguments(ModelArguments):
    """[`ModelArguments`] plus anytime / budgeted classification (image classification only)."""

    k_ratios: str | None = field(
        default=None,
        metadata={
            "help": "Multi-rung training: comma-separated increasing fractions of the high-resolution patches, e.g. "
            "0.025,0.05,0.1,0.25 (`config.anytime_k_ratios`). Every step trains every rung (the mean of the rung "
            "losses), so that one model serves anytime and budgeted inference."
        },
    )
    glance_head: bool = field(
        default=False,
        metadata={
            "help": "Add and train the glance exit (a linear head on the selector's output), the cheapest rung. "
            "Implies multi-rung training (with the model's rungs unless --k_ratios is given)."
        },
    )
    calibrate_budget: float | None = field(
        default=None,
        metadata={
            "help": "After training, fit exit thresholds on the validation split for this mean GFLOPs per image "
            "(`lookwhere_hf.budget.calibrate_budget`) and save them in the model's config."
        },
    )

    def anytime_ratios(self) -> list[float] | None:
        """`--k_ratios` parsed; raises [`ArgumentError`] for anything but increasing distinct fractions in (0, 1]."""
        if self.k_ratios is None:
            return None
        try:
            ratios = [float(part) for part in self.k_ratios.split(",")]
        except ValueError:
            raise ArgumentError(
                f"--k_ratios {self.k_ratios!r} must be comma-separated numbers, e.g. 0.025,0.05,0.1,0.25."
            ) from None
        if not all(0.0 < ratio <= 1.0 for ratio in ratios):
            raise ArgumentError(f"--k_ratios {self.k_ratios}: every ratio must be in (0, 1] (a fraction of patches).")
        if len(set(ratios)) != len(ratios) or ratios != sorted(ratios):
            raise ArgumentError(
                f"--k_ratios {self.k_ratios}: the rungs must be increasing and distinct, e.g. "
                f"{','.join(f'{r:g}' for r in sorted(set(ratios)))}."
            )
        return ratios


@dataclass
class PretrainingModelArguments(HubArguments):
    """Which teacher to distil, and the student built from it. Unset k range / loss weights: the config's values."""

    teacher_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The frozen DINOv2-with-registers (or DINOv2) teacher: a local folder or a Hub id. Required."
        },
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Continue from a LookWhere checkpoint (the student) instead of building it from the teacher."
        },
    )
    selector_depth: int = field(
        default=SELECTOR_DEPTH, metadata={"help": "Number of teacher layers the selector keeps."}
    )
    init_from_teacher: bool = field(
        default=True,
        metadata={"help": "Initialize the student from the teacher's weights (--no_init_from_teacher: random)."},
    )
    teacher_dtype: str | None = field(
        default=None, metadata={"help": "Run the teacher in this dtype, e.g. 'bfloat16' (default: float32)."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel of teacher and student: 'sdpa' (default), 'eager', ..."}
    )
    k_min: int | None = field(default=None, metadata={"help": "Fewest patches the extractor sees per step."})
    k_max: int | None = field(default=None, metadata={"help": "Most patches the extractor sees per step."})
    cls_loss_weight: float | None = field(default=None, metadata={"help": "Weight of the CLS MSE."})
    dense_loss_weight: float | None = field(default=None, metadata={"help": "Weight of the dense patch-token MSE."})
    map_loss_weight: float | None = field(default=None, metadata={"help": "Weight of the selector map KL."})
    k_seed: int | None = field(default=None, metadata={"help": "Seed of the per-step k draw."})
    map_layer: int | None = field(
        default=None,
        metadata={
            "help": "Teacher layer whose attention map the selector distils (Python index; default -1, the last "
            "layer, LookWhere's target). An earlier layer is an option for teachers whose last-layer map is worse."
        },
    )
    low_res_antialias: bool = field(
        default=False,
        metadata={"help": "Make the selector's view with an antialiased resize (as the JAX pretraining did)."},
    )

    def pretraining_settings(self) -> dict[str, Any]:
        """The k range / loss weights / k seed given on the command line (the others keep the config's values)."""
        names = ("k_min", "k_max", "cls_loss_weight", "dense_loss_weight", "map_loss_weight", "k_seed", "map_layer")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


# ----------------------------------------------------------------------------------------------- data
@dataclass
class DataArguments:
    """Which images to train on."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A dataset on the Hub, or a local folder: an imagefolder (one sub-folder per class, optionally "
            "under train/ and validation/), or a dataset saved with `save_to_disk`."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Dataset configuration name (Hub)."})
    train_dir: str | None = field(default=None, metadata={"help": "A local folder with the training images."})
    image_column_name: str = field(default="image", metadata={"help": "Dataset column holding the images."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training examples."})
    no_augment: bool = field(
        default=False,
        metadata={
            "help": "Train without random augmentation (for data where a crop can lose the object or a mirror image "
            "changes the label, e.g. digits); training images are then only resized, as in evaluation."
        },
    )


@dataclass
class DataTrainingArguments(DataArguments):
    """Which data to fine-tune and evaluate on."""

    validation_dir: str | None = field(default=None, metadata={"help": "A local folder with the evaluation images."})
    label_column_name: str | None = field(default="label", metadata={"help": "Dataset column holding the labels."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of the training set held out when there is no validation split."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many evaluation examples."})


SEGMENTATION_LABEL_COLUMNS = ("label", "annotation", "mask", "segmentation", "semantic_segmentation")


@dataclass
class SegmentationDataArguments(DataTrainingArguments):
    """Data arguments of the segmentation scripts. Local data: a folder with `images/` and `masks/` (same file stems;
    masks are single-channel PNGs of class ids, 255 = ignore), optionally under `train/` and `validation/`."""

    label_column_name: str | None = field(
        default=None,
        metadata={"help": f"Column holding the masks. Default: the first of {SEGMENTATION_LABEL_COLUMNS} present."},
    )
    reduce_labels: bool = field(
        default=False,
        metadata={"help": "Mask value 0 is 'unlabelled': map it to 255 (ignored) and shift the other ids down by 1."},
    )
    id2label_file: str | None = field(
        default=None,
        metadata={
            "help": "JSON file {id: name} with the class names. Default: id2label.json in the dataset folder (or Hub "
            "repo); otherwise the classes are counted from the training masks."
        },
    )


@dataclass
class PretrainingDataArguments(DataArguments):
    """Which images to pretrain on, at which sizes, and how to augment them."""

    train_dir: str | None = field(
        default=None,
        metadata={
            "help": "A folder of images (an imagefolder; sub-folders named like splits, e.g. train/ and validation/, "
            "are splits, and --train_split picks one)."
        },
    )
    train_split: str = field(default="train", metadata={"help": "The split to train on."})
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream the dataset (a `datasets.IterableDataset`); needs a step count (--max_steps)."},
    )
    shuffle_buffer_size: int = field(default=10_000, metadata={"help": "Shuffle buffer of the streamed dataset."})
    image_size: int | None = field(
        default=None,
        metadata={"help": "High-resolution size (teacher and extractor input). Default: the student's / teacher's."},
    )
    low_res_size: int | None = field(
        default=None, metadata={"help": "Low-resolution size (selector input). Default: the student's / 154."}
    )
    crop_scale_min: float = field(default=0.08, metadata={"help": "Smallest RandomResizedCrop area fraction."})
    rand_augment_magnitude: int = field(default=9, metadata={"help": "RandAugment magnitude (m9)."})
    rand_augment_num_ops: int = field(default=2, metadata={"help": "RandAugment operations per image."})
    random_erasing: float = field(default=0.25, metadata={"help": "Random erasing probability."})


# ----------------------------------------------------------------------------------------------- accelerate loop
@dataclass
class NoTrainerArguments:
    """Training settings of the `accelerate` scripts (names as in `TrainingArguments` where they exist)."""

    output_dir: str = field(metadata={"help": "Where the checkpoints, the final model and the results are written."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size per device."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate (AdamW)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (not on biases, norms, tokens)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    max_grad_norm: float | None = field(
        default=None, metadata={"help": "Clip the gradient norm to this (no clipping if unset)."}
    )
    num_train_epochs: float = field(default=3, metadata={"help": "Number of training epochs."})
    max_train_steps: int | None = field(
        default=None, metadata={"help": "Total optimizer steps; overrides --num_train_epochs."}
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step."})
    lr_scheduler_type: str = field(
        default="linear", metadata={"help": "Scheduler: linear, cosine, constant, constant_with_warmup, ..."}
    )
    num_warmup_steps: int = field(default=0, metadata={"help": "Warm-up steps of the scheduler."})
    seed: int = field(default=42, metadata={"help": "Random seed (model init, data order, augmentation)."})
    mixed_precision: str | None = field(default=None, metadata={"help": "'no', 'fp16' or 'bf16'."})
    cpu: bool = field(default=False, metadata={"help": "Train on CPU even if an accelerator is available."})
    logging_steps: int = field(default=10, metadata={"help": "Log the running losses every N optimizer steps."})
    checkpointing_steps: str | None = field(
        default=None,
        metadata={
            "help": "Save the training state every N optimizer steps ('N') or at the end of every epoch ('epoch')."
        },
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "A checkpoint folder (step_N / epoch_N) to resume from, or 'latest' for the newest in output_dir."
        },
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data loading worker processes."})
    with_tracking: bool = field(default=False, metadata={"help": "Log to the trackers of --report_to."})
    report_to: str = field(default="all", metadata={"help": "Trackers for --with_tracking (tensorboard, wandb, ...)."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the final model to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id for --push_to_hub."})
    hub_token: str | None = field(default=None, metadata={"help": "Hub token for --push_to_hub."})


@dataclass
class PretrainingNoTrainerArguments(NoTrainerArguments):
    """[`NoTrainerArguments`] with the pretraining recipe's defaults (AdamW 1e-4, weight decay 0.05, cosine, clip 1)."""

    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate (AdamW)."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on biases, norms, tokens)."})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Clip the gradient norm to this."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Scheduler: cosine, linear, constant, ..."})


# ----------------------------------------------------------------------------------------------- validation
def check_patch_multiple(flag: str, value: int | None, patch: int) -> None:
    """`--image_size` / `--low_res_size` must be a positive multiple of the patch size."""
    if value is not None and (value < patch or value % patch):
        lower, upper = max(patch, value // patch * patch), (value // patch + 1) * patch
        raise ArgumentError(
            f"--{flag} {value} is not a positive multiple of the patch size {patch}: use e.g. {lower} or {upper}."
        )


def load_checkpoint_config(flag: str, source: str, model_types: tuple[str, ...], hub: HubArguments, hint: str = ""):
    """The config of a checkpoint named on the command line, loaded without weights, checked to be one of
    `model_types` (`hint` is appended to the wrong-type message)."""
    from transformers import AutoConfig

    if looks_like_local_path(source) and not os.path.isdir(os.path.expanduser(source)):
        raise ArgumentError(
            f"{flag} {source!r}: no such folder. Pass a folder written by `save_pretrained` or a Hub id."
        )
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=hub.trust_remote_code, **hub.hub_kwargs())
    except Exception as error:
        offline = (
            " The Hub is unreachable offline (HF_HUB_OFFLINE is set): use a local folder." if hub_offline() else ""
        )
        raise ArgumentError(f"{flag} {source!r}: could not load its config.json ({error}).{offline}") from error
    if config.model_type not in model_types:
        wanted = CHECKPOINT_NAMES[model_types]
        raise ArgumentError(f"{flag} {source!r} is a {config.model_type!r} model; it needs {wanted} checkpoint.{hint}")
    return config


def _check_positive(args, flags: tuple[str, ...]) -> None:
    for flag in flags:
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ArgumentError(f"--{flag} must be a positive number, got {value}.")


def validate_data_source(data_args: DataArguments) -> None:
    """Raise [`ArgumentError`] unless `data_args` name a dataset or local image folders."""
    validation_dir = getattr(data_args, "validation_dir", None)
    if data_args.dataset_name is None and data_args.train_dir is None and validation_dir is None:
        raise ArgumentError(
            "No dataset given: pass --dataset_name <Hub name or local folder>, or --train_dir (and --validation_dir) "
            "with local image folders."
        )
    if data_args.dataset_name is not None and (data_args.train_dir or validation_dir):
        raise ArgumentError("Pass either --dataset_name or --train_dir/--validation_dir, not both.")
    for flag in ("train_dir", "validation_dir"):
        path = getattr(data_args, flag, None)
        if path is not None and not os.path.isdir(path):
            raise ArgumentError(f"--{flag} {path!r}: no such folder.")
    name = data_args.dataset_name
    if name is not None and looks_like_local_path(name) and not os.path.isdir(os.path.expanduser(name)):
        raise ArgumentError(
            f"--dataset_name {name!r}: no such folder. Pass an existing local dataset folder or a Hub dataset name."
        )
    _check_positive(data_args, tuple(f for f in ("max_train_samples", "max_eval_samples") if hasattr(data_args, f)))


def parse_grids(flag: str, value: str) -> list[tuple[int, int]]:
    """`--compressed_grids` / `--compressed_grid`: comma-separated grids, each `s` (an `s x s` grid) or `HxW`, in
    strictly increasing size (token count, then height). Raises [`ArgumentError`] saying what to write instead."""
    grids = []
    for part in value.split(","):
        sizes = part.strip().lower().split("x")
        if len(sizes) not in (1, 2) or not all(size.strip().isdigit() for size in sizes):
            raise ArgumentError(
                f"{flag} {value!r}: each grid must be s (an s x s grid of compressed tokens) or HxW, separated by "
                "commas, e.g. 4,6,8 or 3x4,6x8."
            )
        try:
            grids.append(grid_pair([int(size) for size in (sizes * 2 if len(sizes) == 1 else sizes)], flag))
        except ValueError as error:
            raise ArgumentError(f"{flag} {value!r}: {error}") from None
    ordered = sorted(set(grids), key=lambda g: (g[0] * g[1], g))
    if grids != ordered:
        raise ArgumentError(
            f"{flag} {value!r}: list each grid once, in increasing size, e.g. "
            f"{','.join(format_grid(g, short=True) for g in ordered)}."
        )
    return grids


def format_grid(grid: tuple[int, int], short: bool = False) -> str:
    """`(4, 4)` -> `"4x4"` (`short`: `"4"`, as the flags accept it)."""
    return str(grid[0]) if short and grid[0] == grid[1] else f"{grid[0]}x{grid[1]}"


def lookupvit_grids(model_args: ModelArguments, source_config) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """The `(compressed_grid, compressed_grids)` a LookupViT fine-tuning run saves: `--compressed_grids` or the
    checkpoint's training grids (a model built from DINOv2 / ViT: the eval grid alone); `--compressed_grid`, else the
    checkpoint's eval grid if it is among the training grids, else the largest training grid. The eval grid must be
    one of the training grids (a grid the run never trains would be a silent mismatch)."""
    grids = parse_grids("--compressed_grids", model_args.compressed_grids) if model_args.compressed_grids else None
    grid = parse_grids("--compressed_grid", model_args.compressed_grid) if model_args.compressed_grid else None
    if grid is not None and len(grid) != 1:
        raise ArgumentError(
            f"--compressed_grid {model_args.compressed_grid!r} is one grid (the evaluation one); the training set is "
            "--compressed_grids."
        )
    grid = grid[0] if grid else None
    if source_config.model_type in LOOKUPVIT_MODEL_TYPES:
        base_grid = grid_pair(source_config.compressed_grid)
        base_grids = [grid_pair(g) for g in source_config.compressed_grids]
    else:
        base_grid = grid_pair({f.name: f.default for f in dataclasses.fields(LookupViTConfig)}["compressed_grid"])
        base_grids = None
    if grids is None:
        grids = base_grids or [grid or base_grid]
    if grid is None:
        grid = base_grid if base_grid in grids else max(grids, key=lambda g: (g[0] * g[1], g))
    if grid not in grids:
        raise ArgumentError(
            f"--compressed_grid {format_grid(grid)} is not one of the training grids "
            f"{', '.join(format_grid(g) for g in grids)}: add it to --compressed_grids (or pick one of those)."
        )
    return grid, grids


def check_model_source(model_args: ModelArguments):
    """Which checkpoint the run starts from, its config (loaded without weights) and the model family it gives.

    Raises [`ArgumentError`] for no or several sources, a checkpoint of the wrong type, a `--model_family` that
    contradicts the checkpoint, and flags of the other family.

    Returns:
        `(flag, source, config, family)`: the source flag and value, its config and `"lookwhere"` / `"lookupvit"`.
    """
    sources = {
        "--model_name_or_path": model_args.model_name_or_path,
        "--init_from_dinov2": model_args.init_from_dinov2,
        "--init_from_vit": model_args.init_from_vit,
    }
    given = {flag: value for flag, value in sources.items() if value}
    if not given:
        raise ArgumentError(
            "No model given: pass --model_name_or_path <LookWhere or LookupViT folder or Hub id>, or "
            "--init_from_dinov2 <DINOv2-with-registers folder or Hub id> to build LookWhere (or, with --model_family "
            "lookupvit, LookupViT) from a DINOv2 checkpoint, or --init_from_vit <ViT> to build LookupViT."
        )
    if len(given) > 1:
        raise ArgumentError(f"Pass either {' or '.join(given)}, not several.")
    if model_args.model_family not in (None, *MODEL_FAMILIES):
        raise ArgumentError(
            f"--model_family must be one of {', '.join(MODEL_FAMILIES)}, got {model_args.model_family!r}."
        )
    (flag, source), requested = next(iter(given.items())), model_args.model_family
    if flag == "--model_name_or_path":
        hint = " Start from a DINOv2 checkpoint with --init_from_dinov2 (or a ViT with --init_from_vit) instead."
        config = load_checkpoint_config(flag, source, LOOKWHERE_MODEL_TYPES + LOOKUPVIT_MODEL_TYPES, model_args, hint)
        family = "lookupvit" if config.model_type in LOOKUPVIT_MODEL_TYPES else "lookwhere"
        what = f"--model_name_or_path {source!r} (model_type {config.model_type!r})"
        if requested not in (None, family):
            raise ArgumentError(
                f"--model_family {requested}: {what} is a {family} checkpoint, and the checkpoint decides the family. "
                f"Drop --model_family, or pass a {requested} checkpoint."
            )
    elif flag == "--init_from_dinov2":
        config = load_checkpoint_config(
            flag, source, DINOV2_MODEL_TYPES, model_args, " For weights use --model_name_or_path."
        )
        family, what = requested or "lookwhere", f"the model --init_from_dinov2 builds ({requested or 'lookwhere'})"
    else:
        if requested == "lookwhere":
            raise ArgumentError(
                "--init_from_vit builds a LookupViT; LookWhere is built from DINOv2-with-registers: pass "
                "--init_from_dinov2 instead."
            )
        config = load_checkpoint_config(
            flag, source, VIT_MODEL_TYPES, model_args, " For weights use --model_name_or_path."
        )
        family, what = "lookupvit", "the model --init_from_vit builds (lookupvit)"
    other = "lookupvit" if family == "lookwhere" else "lookwhere"
    wrong = model_args.family_flags_given()[other]
    if wrong:
        flags = ", ".join(f"--{name}" for name in wrong)
        names = {"lookwhere": "LookWhere", "lookupvit": "LookupViT"}
        if flag == "--init_from_dinov2" and requested is None:
            raise ArgumentError(
                f"{flags}: LookupViT flag(s), but --init_from_dinov2 builds LookWhere unless --model_family lookupvit "
                f"is given: add --model_family lookupvit, or drop {flags}."
            )
        knob = "--compressed_grid / --compressed_grids" if family == "lookupvit" else "--k_ratio"
        raise ArgumentError(
            f"{flags}: {names[other]} flag(s), but {what} is a {names[family]}; {names[family]}'s compute setting is "
            f"{knob}. Drop {flags}."
        )
    return flag, source, config, family


def validate_arguments(model_args: ModelArguments, data_args: DataTrainingArguments, *, push_to_hub: bool = False):
    """Check the fine-tuning arguments that can be checked before loading data or weights. Returns the model source's
    config."""
    if model_args.k_ratio is not None and not 0.0 < model_args.k_ratio <= 1.0:
        raise ArgumentError(
            f"--k_ratio {model_args.k_ratio} is out of range: it is the fraction of high-resolution patches the "
            "extractor sees and must be in (0, 1] (e.g. 0.1 for 10%)."
        )
    _check_positive(model_args, ("selector_depth",))
    if isinstance(model_args, ClassificationModelArguments):
        model_args.anytime_ratios()
        budget = model_args.calibrate_budget
        if budget is not None and not 0.0 < budget < float("inf"):
            raise ArgumentError(f"--calibrate_budget must be a positive number of GFLOPs per image, got {budget}.")
    if not 0.0 < data_args.train_val_split < 1.0:
        raise ArgumentError(f"--train_val_split must be in (0, 1), got {data_args.train_val_split}.")
    validate_data_source(data_args)
    if push_to_hub and hub_offline():
        raise ArgumentError("--push_to_hub needs the Hub, but HF_HUB_OFFLINE is set. Drop --push_to_hub or go online.")
    _, _, config, family = check_model_source(model_args)
    patch = to_pair(config.patch_size)[0]
    for flag in ("image_size", "low_res_size"):
        check_patch_multiple(flag, getattr(model_args, flag), patch)
    if family == "lookupvit":
        image_size = model_args.image_size or to_pair(config.image_size)[0]
        grid, grids = lookupvit_grids(model_args, config)
        token_grid = (image_size // patch, image_size // patch)
        for value in grids:  # the evaluation grid is one of them
            try:
                check_grid_fits(value, token_grid, "--compressed_grids")
            except ValueError as error:
                raise ArgumentError(f"{error} (Here: image size {image_size}, patch size {patch}.)") from None
    return config


def validate_pretraining_arguments(
    model_args: PretrainingModelArguments,
    data_args: PretrainingDataArguments,
    *,
    max_steps: int | None,
    max_steps_flag: str,
):
    """Check the pretraining arguments that can be checked before loading data or weights. Returns the teacher's
    config.

    Args:
        max_steps: the step count of the run (`--max_steps` / `--max_train_steps`), `None` or `<= 0` if unset.
        max_steps_flag: its flag name, for the messages.
    """
    if not model_args.teacher_name_or_path:
        raise ArgumentError("No teacher given: pass --teacher_name_or_path <DINOv2-with-registers folder or Hub id>.")
    if data_args.streaming and not (max_steps or 0) > 0:
        raise ArgumentError(
            f"--streaming needs {max_steps_flag} (a streamed dataset has no length to derive epochs from)."
        )
    k_min, k_max = model_args.k_min, model_args.k_max
    if any(k is not None and k < 1 for k in (k_min, k_max)) or (None not in (k_min, k_max) and k_min > k_max):
        raise ArgumentError(
            f"Need 1 <= --k_min <= --k_max (patches the extractor sees per step), got k_min={k_min}, k_max={k_max}."
        )
    _check_positive(model_args, ("selector_depth",))
    validate_data_source(data_args)
    teacher = load_checkpoint_config(
        "--teacher_name_or_path", model_args.teacher_name_or_path, DINOV2_MODEL_TYPES, model_args
    )
    patch = to_pair(teacher.patch_size)[0]
    for flag in ("image_size", "low_res_size"):
        check_patch_multiple(flag, getattr(data_args, flag), patch)
    image_size = data_args.image_size or to_pair(teacher.image_size)[0]
    if data_args.low_res_size is not None and data_args.low_res_size > image_size:
        raise ArgumentError(f"--low_res_size {data_args.low_res_size} must not exceed --image_size {image_size}.")
    if model_args.model_name_or_path:
        load_checkpoint_config("--model_name_or_path", model_args.model_name_or_path, LOOKWHERE_MODEL_TYPES, model_args)
    elif not model_args.selector_depth <= teacher.num_hidden_layers:
        raise ArgumentError(
            f"--selector_depth must be between 1 and the teacher's depth {teacher.num_hidden_layers}, got "
            f"{model_args.selector_depth}."
        )
    return teacher


# ----------------------------------------------------------------------------------------------- parsing
def parse_script_arguments(dataclass_types: tuple, argv: list[str] | None = None) -> tuple:
    """Parse a script's argument dataclasses from the command line (or `argv`), or from a single `.json` file.

    Also sets up logging: with `TrainingArguments` at its per-process log level (the main process logs, the others
    warn), as transformers' example scripts do; otherwise at INFO.
    """
    import transformers
    from transformers import HfArgumentParser, TrainingArguments

    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    parser = HfArgumentParser(dataclass_types)
    if len(argv) == 1 and argv[0].endswith(".json"):
        parsed = parser.parse_json_file(os.path.abspath(argv[0]))
    else:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    log_level = logging.INFO
    if isinstance(parsed[-1], TrainingArguments):
        if parsed[-1].should_log:  # the default log level is "passive": INFO on the main process
            transformers.utils.logging.set_verbosity_info()
        log_level = parsed[-1].get_process_log_level()
        transformers.utils.logging.set_verbosity(log_level)
    for name in ("__main__", "lookwhere_hf"):
        logging.getLogger(name).setLevel(log_level)
    return tuple(parsed)


def run_cli(main: Callable[[], Any], prog: str) -> Any:
    """Run a script's `main`, turning an [`ArgumentError`] into `prog: error: <message>` and exit status 2.

    Under `torchrun` / `accelerate launch`, a finished `main` is followed by a barrier and the process group's
    teardown, so that no rank exits (and destroys its communication threads) while another is still saving."""
    try:
        result = main()
    except ArgumentError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return result
