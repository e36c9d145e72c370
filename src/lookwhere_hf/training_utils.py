"""Shared pieces of the fine-tuning example scripts (`examples/pytorch/image-classification` and
`examples/pytorch/semantic-segmentation`, with `Trainer` and with a plain `accelerate` loop).

- Argument dataclasses for `HfArgumentParser`: [`ModelArguments`], [`DataTrainingArguments`],
  [`SegmentationDataArguments`] and, for the `accelerate` scripts, [`NoTrainerArguments`].
- [`validate_arguments`]: every check that can fail *before* training (model source, sizes, k_ratio, dataset paths,
  Hub access), raising [`ArgumentError`] with a message that says what to change.
- Dataset loading: a Hub name, a local imagefolder, a folder saved with `save_to_disk`, or (segmentation) a folder of
  `images/` + `masks/` pairs; the evaluation split; the label names.
- [`build_model_and_processor`]: a LookWhere task model from LookWhere weights or from a DINOv2-with-registers
  checkpoint, with `--image_size` / `--low_res_size` applied to the weights (position embeddings resized), the config
  and the image processor.
- Train / eval transforms (torchvision augmentation, then [`LookWhereImageProcessor`] for both views), collation, and
  metric functions built on the offline `evaluate` modules of [`lookwhere_hf.metrics`].
- Checkpoint bookkeeping for the `accelerate` loops.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .models.lookwhere.modeling_lookwhere import resize_position_embeddings

IGNORE_INDEX = 255
EVAL_SPLIT_NAMES = ("validation", "val", "valid")
SEGMENTATION_LABEL_COLUMNS = ("label", "annotation", "mask", "segmentation", "semantic_segmentation")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
MASK_DIR_NAMES = ("masks", "annotations", "labels")


class ArgumentError(ValueError):
    """A user-facing argument problem found before training; the message says what to change."""


# ----------------------------------------------------------------------------------------------- arguments
@dataclass
class ModelArguments:
    """Which model to fine-tune, and LookWhere's own settings."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A LookWhere checkpoint (local folder or Hub id) to start from."},
    )
    init_from_dinov2: str | None = field(
        default=None,
        metadata={
            "help": "A DINOv2-with-registers checkpoint (folder or Hub id) to build LookWhere from when no LookWhere "
            "weights exist (`from_dinov2`: extractor = the checkpoint, selector = its first --selector_depth layers "
            "with a new head). Use instead of --model_name_or_path."
        },
    )
    selector_depth: int = field(default=3, metadata={"help": "Selector depth for --init_from_dinov2."})
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Image processor folder / Hub id, if not the model's own."}
    )
    k_ratio: float | None = field(
        default=None,
        metadata={"help": "Fraction of high-resolution patches the extractor sees, in (0, 1]. Default: the model's."},
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "High-resolution input size (a multiple of the patch size 14). The extractor position embeddings "
            "are resized to it and the saved config / image processor use it. Default: the model's."
        },
    )
    low_res_size: int | None = field(
        default=None,
        metadata={"help": "Selector input size (a multiple of the patch size 14). Default: the model's."},
    )
    freeze_selector: bool = field(
        default=True,
        metadata={"help": "Keep the selector frozen during fine-tuning (as the official fine-tuning does)."},
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Re-initialize checkpoint weights whose shape differs (e.g. a classifier with other labels)."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache models and datasets."})
    model_revision: str = field(default="main", metadata={"help": "Model version (branch, tag or commit id)."})
    token: str | None = field(default=None, metadata={"help": "Hugging Face Hub token for private models/datasets."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow code from the Hub (models or datasets that ship their own code)."}
    )


@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A dataset on the Hub, or a local folder: an imagefolder (one sub-folder per class, optionally "
            "under train/ and validation/), or a dataset saved with `save_to_disk`."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Dataset configuration name (Hub)."})
    train_dir: str | None = field(default=None, metadata={"help": "A local folder with the training images."})
    validation_dir: str | None = field(default=None, metadata={"help": "A local folder with the evaluation images."})
    image_column_name: str = field(default="image", metadata={"help": "Dataset column holding the images."})
    label_column_name: str | None = field(default="label", metadata={"help": "Dataset column holding the labels."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of the training set held out when there is no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many evaluation examples."})
    no_augment: bool = field(
        default=False,
        metadata={
            "help": "Train without the random crop / horizontal flip (for data where a crop can lose the object or a "
            "mirror image changes the label, e.g. digits); training images are then only resized, as in evaluation."
        },
    )


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
class NoTrainerArguments:
    """Training settings of the `accelerate` scripts (names as in `TrainingArguments` where they exist)."""

    output_dir: str = field(metadata={"help": "Where the checkpoints, the final model and the results are written."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size per device."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate (AdamW)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (not on biases and norms)."})
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
    checkpointing_steps: str | None = field(
        default=None,
        metadata={"help": "Save the training state every N optimizer steps ('N') or at the end of every epoch ('epoch')."},
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "A checkpoint folder (step_N / epoch_N) to resume from, or 'latest' for the newest in output_dir."},
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data loading worker processes."})
    with_tracking: bool = field(default=False, metadata={"help": "Log to the trackers of --report_to."})
    report_to: str = field(default="all", metadata={"help": "Trackers for --with_tracking (tensorboard, wandb, ...)."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the final model to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id for --push_to_hub."})
    hub_token: str | None = field(default=None, metadata={"help": "Hub token for --push_to_hub."})


# ----------------------------------------------------------------------------------------------- validation
def _hub_offline() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _looks_local(path: str) -> bool:
    """Paths, as opposed to Hub ids (`name` or `org/name`)."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or os.path.exists(path)


def _load_config(model_args: ModelArguments):
    """The config of the model source (LookWhere or DINOv2), loaded without weights to check arguments early."""
    from transformers import AutoConfig

    source = model_args.model_name_or_path or model_args.init_from_dinov2
    flag = "--model_name_or_path" if model_args.model_name_or_path else "--init_from_dinov2"
    if _looks_local(source) and not os.path.isdir(os.path.expanduser(source)):
        raise ArgumentError(f"{flag} {source!r}: no such folder. Pass a folder written by `save_pretrained` or a Hub id.")
    try:
        config = AutoConfig.from_pretrained(
            source,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            token=model_args.token,
            trust_remote_code=model_args.trust_remote_code,
        )
    except Exception as error:
        hint = " The Hub is unreachable offline (HF_HUB_OFFLINE is set): use a local folder." if _hub_offline() else ""
        raise ArgumentError(f"{flag} {source!r}: could not load its config.json ({error}).{hint}") from error
    if model_args.model_name_or_path and config.model_type != "lookwhere":
        hint = " Start from it with --init_from_dinov2 instead." if config.model_type.startswith("dinov2") else ""
        raise ArgumentError(
            f"--model_name_or_path {source!r} is a {config.model_type!r} model, not a LookWhere one.{hint}"
        )
    if model_args.init_from_dinov2 and config.model_type not in ("dinov2_with_registers", "dinov2"):
        raise ArgumentError(
            f"--init_from_dinov2 {source!r} is a {config.model_type!r} model; it needs a DINOv2-with-registers (or "
            "DINOv2) checkpoint. For LookWhere weights use --model_name_or_path."
        )
    return config


def validate_arguments(
    model_args: ModelArguments,
    data_args: DataTrainingArguments,
    *,
    push_to_hub: bool = False,
):
    """Check every argument that can be checked before loading data or weights. Returns the model source's config.

    Raises:
        [`ArgumentError`]: with a message naming the flag and what to do.
    """
    if not model_args.model_name_or_path and not model_args.init_from_dinov2:
        raise ArgumentError(
            "No model given: pass --model_name_or_path <LookWhere folder or Hub id>, or --init_from_dinov2 "
            "<DINOv2-with-registers folder or Hub id> to build LookWhere from a DINOv2 checkpoint."
        )
    if model_args.model_name_or_path and model_args.init_from_dinov2:
        raise ArgumentError("Pass either --model_name_or_path or --init_from_dinov2, not both.")
    if model_args.k_ratio is not None and not 0.0 < model_args.k_ratio <= 1.0:
        raise ArgumentError(
            f"--k_ratio {model_args.k_ratio} is out of range: it is the fraction of high-resolution patches the "
            "extractor sees and must be in (0, 1] (e.g. 0.1 for 10%)."
        )
    if model_args.selector_depth < 1:
        raise ArgumentError(f"--selector_depth must be >= 1, got {model_args.selector_depth}.")
    for flag in ("max_train_samples", "max_eval_samples"):
        value = getattr(data_args, flag)
        if value is not None and value < 1:
            raise ArgumentError(f"--{flag} must be a positive number of examples, got {value}.")
    if not 0.0 < data_args.train_val_split < 1.0:
        raise ArgumentError(f"--train_val_split must be in (0, 1), got {data_args.train_val_split}.")
    _validate_data_source(data_args)
    if push_to_hub and _hub_offline():
        raise ArgumentError("--push_to_hub needs the Hub, but HF_HUB_OFFLINE is set. Drop --push_to_hub or go online.")
    config = _load_config(model_args)
    patch = config.patch_size if config.model_type == "lookwhere" else _side(config.patch_size)
    for flag in ("image_size", "low_res_size"):
        value = getattr(model_args, flag)
        if value is not None and (value < patch or value % patch):
            lower, upper = max(patch, value // patch * patch), (value // patch + 1) * patch
            raise ArgumentError(
                f"--{flag} {value} is not a positive multiple of the patch size {patch}: use e.g. {lower} or {upper}."
            )
    return config


def _side(value) -> int:
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def _validate_data_source(data_args: DataTrainingArguments) -> None:
    if data_args.dataset_name is None and data_args.train_dir is None and data_args.validation_dir is None:
        raise ArgumentError(
            "No dataset given: pass --dataset_name <Hub name or local folder>, or --train_dir (and --validation_dir) "
            "with local image folders."
        )
    if data_args.dataset_name is not None and (data_args.train_dir or data_args.validation_dir):
        raise ArgumentError("Pass either --dataset_name or --train_dir/--validation_dir, not both.")
    for flag in ("train_dir", "validation_dir"):
        path = getattr(data_args, flag)
        if path is not None and not os.path.isdir(path):
            raise ArgumentError(f"--{flag} {path!r}: no such folder.")
    name = data_args.dataset_name
    if name is not None and _looks_local(name) and not os.path.isdir(os.path.expanduser(name)):
        raise ArgumentError(
            f"--dataset_name {name!r}: no such folder. Pass an existing local dataset folder or a Hub dataset name."
        )


# ----------------------------------------------------------------------------------------------- datasets
def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _find_mask_dir(folder: Path) -> Path | None:
    for name in MASK_DIR_NAMES:
        if (folder / name).is_dir():
            return folder / name
    return None


def _is_pair_folder(folder: Path) -> bool:
    return (folder / "images").is_dir() and _find_mask_dir(folder) is not None


def load_image_mask_pairs(folder: str | os.PathLike):
    """A `datasets.Dataset` with columns `image` and `label` (both `Image`) from `folder/images` and `folder/masks`
    (or `annotations/`, `labels/`): every image needs a mask with the same file stem (any image suffix)."""
    import datasets

    folder = Path(folder)
    mask_dir = _find_mask_dir(folder)
    if not (folder / "images").is_dir() or mask_dir is None:
        raise ArgumentError(
            f"{str(folder)!r} is not a segmentation folder: it needs an images/ and a masks/ sub-folder with matching "
            "file names (masks: single-channel PNGs of class ids)."
        )

    def by_stem(directory: Path) -> dict[str, str]:
        return {p.stem: str(p) for p in sorted(directory.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}

    images, masks = by_stem(folder / "images"), by_stem(mask_dir)
    missing = sorted(set(images) - set(masks))
    if missing:
        raise ArgumentError(
            f"{len(missing)} images in {str(folder / 'images')!r} have no mask in {str(mask_dir)!r} (e.g. "
            f"{missing[:3]}); masks must have the same file stem as their image."
        )
    if not images:
        raise ArgumentError(f"No images found in {str(folder / 'images')!r} (suffixes {IMAGE_SUFFIXES}).")
    stems = sorted(images)
    data = {"image": [images[s] for s in stems], "label": [masks[s] for s in stems]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    return datasets.Dataset.from_dict(data, features=features)


def _load_raw_dataset(data_args: DataTrainingArguments, model_args: ModelArguments, task: str):
    """The dataset as a `DatasetDict`, from whichever source the arguments name."""
    import datasets

    segmentation = task == "semantic-segmentation"
    if data_args.dataset_name is None:  # --train_dir / --validation_dir
        dirs = {"train": data_args.train_dir, "validation": data_args.validation_dir}
        dirs = {split: path for split, path in dirs.items() if path is not None}
        if segmentation:
            return datasets.DatasetDict({split: load_image_mask_pairs(path) for split, path in dirs.items()})
        files = {split: os.path.join(path, "**") for split, path in dirs.items()}
        return datasets.load_dataset("imagefolder", data_files=files, cache_dir=model_args.cache_dir)

    name = os.path.expanduser(data_args.dataset_name)
    if os.path.isdir(name):
        root = Path(name)
        if _is_saved_dataset(root):
            loaded = datasets.load_from_disk(str(root))
            return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
        if segmentation:
            split_dirs = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and _is_pair_folder(p)}
            if _is_pair_folder(root):
                return datasets.DatasetDict({"train": load_image_mask_pairs(root)})
            if split_dirs:
                return datasets.DatasetDict({split: load_image_mask_pairs(p) for split, p in split_dirs.items()})
            raise ArgumentError(
                f"--dataset_name {name!r}: expected images/ and masks/ sub-folders (optionally under train/ and "
                "validation/), or a dataset saved with `save_to_disk`."
            )
        return datasets.load_dataset("imagefolder", data_dir=str(root), cache_dir=model_args.cache_dir)

    try:
        return datasets.load_dataset(
            name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
    except Exception as error:
        hint = " The Hub is unreachable offline: pass a local folder." if _hub_offline() else ""
        raise ArgumentError(
            f"--dataset_name {name!r}: could not load it ({type(error).__name__}: {error}).{hint} Local data works "
            "with --dataset_name <folder> or --train_dir/--validation_dir."
        ) from error


def load_datasets(
    data_args: DataTrainingArguments,
    model_args: ModelArguments,
    *,
    task: str,
    do_train: bool = True,
    do_eval: bool = True,
    seed: int = 42,
):
    """Load the data and return `DatasetDict` with `train` and/or `validation` splits and checked columns.

    The evaluation split is `validation` (or `val` / `valid`); without one, `--train_val_split` of the training set
    is held out. `--max_train_samples` / `--max_eval_samples` are applied here.

    Args:
        task (`str`): `"image-classification"` or `"semantic-segmentation"`.
    """
    import datasets

    raw = _load_raw_dataset(data_args, model_args, task)
    splits: dict[str, datasets.Dataset] = {}
    if "train" in raw:
        splits["train"] = raw["train"]
    eval_name = next((name for name in EVAL_SPLIT_NAMES if name in raw), None)
    if eval_name is not None:
        splits["validation"] = raw[eval_name]
    if do_eval and "validation" not in splits:
        if "train" not in splits:
            raise ArgumentError(f"The dataset has no train or validation split (splits: {list(raw)}).")
        held_out = splits["train"].train_test_split(data_args.train_val_split, seed=seed)
        splits["train"], splits["validation"] = held_out["train"], held_out["test"]
        print(f"No validation split: holding out {len(splits['validation'])} training examples (--train_val_split).")
    if do_train and "train" not in splits:
        raise ArgumentError(f"--do_train needs a train split; the dataset has {list(raw)}.")
    splits = {name: ds for name, ds in splits.items() if (name == "train" and do_train) or (name == "validation" and do_eval)}
    if not splits:
        raise ArgumentError("Nothing to do: pass --do_train and/or --do_eval.")

    columns = next(iter(splits.values())).column_names
    if data_args.image_column_name not in columns:
        raise ArgumentError(
            f"--image_column_name {data_args.image_column_name!r} is not a column of the dataset (columns: {columns}). "
            "Pass the name of the column holding the images."
        )
    if data_args.label_column_name is None and task == "semantic-segmentation":
        found = next((c for c in SEGMENTATION_LABEL_COLUMNS if c in columns), None)
        if found is None:
            raise ArgumentError(
                f"No mask column found (looked for {SEGMENTATION_LABEL_COLUMNS}; columns: {columns}). Pass "
                "--label_column_name <column with the masks>."
            )
        data_args.label_column_name = found
    if data_args.label_column_name not in columns:
        raise ArgumentError(
            f"--label_column_name {data_args.label_column_name!r} is not a column of the dataset (columns: {columns}). "
            "Pass the name of the column holding the labels."
        )

    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    for name, limit in limits.items():
        if name in splits and limit is not None and limit < len(splits[name]):
            split = splits[name].shuffle(seed=seed) if name == "train" else splits[name]
            splits[name] = split.select(range(limit))
    return datasets.DatasetDict(splits)


def prepare_classification_labels(dataset, label_column: str):
    """Make the label column a `ClassLabel` (consistent ids over all splits) and return `(dataset, id2label)`."""
    import datasets

    first = next(iter(dataset.values()))
    feature = first.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return dataset, {i: name for i, name in enumerate(feature.names)}
    if not isinstance(feature, datasets.Value):
        raise ArgumentError(
            f"--label_column_name {label_column!r} holds {feature}, not one class label per image. Pass a column of "
            "class names or ids."
        )
    values = sorted({v for split in dataset.values() for v in split.unique(label_column)}, key=lambda v: (str(type(v)), v))
    names = [str(v) for v in values]
    to_id = {v: i for i, v in enumerate(values)}
    class_label = datasets.ClassLabel(names=names)

    def encode(labels):
        return {label_column: [to_id[v] for v in labels]}

    dataset = dataset.map(encode, batched=True, input_columns=[label_column], desc="Encoding labels")
    dataset = dataset.cast_column(label_column, class_label)
    return dataset, {i: name for i, name in enumerate(names)}


def mask_array(mask) -> np.ndarray:
    """A segmentation mask (PIL image, array or tensor) as a 2D int64 array of class ids."""
    array = np.asarray(mask)
    if array.ndim == 3:
        if array.shape[-1] in (3, 4) and (array[..., :3] == array[..., :1]).all():
            array = array[..., 0]
        else:
            raise ValueError(
                f"Masks must be single-channel images of class ids, got a colour mask of shape {array.shape}. Convert "
                "colour-coded masks to class ids (one value per class) first."
            )
    if array.ndim != 2:
        raise ValueError(f"Masks must be 2D (height, width), got shape {array.shape}.")
    return array.astype(np.int64)


def reduce_mask_labels(mask: np.ndarray) -> np.ndarray:
    """`--reduce_labels`: 0 -> 255 (ignored), every other id -> id - 1 (255 stays 255)."""
    mask = mask.copy()
    ignored = (mask == 0) | (mask == IGNORE_INDEX)
    mask = mask - 1
    mask[ignored] = IGNORE_INDEX
    return mask


def prepare_segmentation_labels(dataset, data_args: SegmentationDataArguments) -> dict[int, str]:
    """Class names of a segmentation dataset: `--id2label_file`, `id2label.json` in the dataset folder or Hub repo,
    or (last resort) `class_<id>` for every id found in the training masks."""
    candidates = []
    if data_args.id2label_file:
        if not os.path.isfile(data_args.id2label_file):
            raise ArgumentError(f"--id2label_file {data_args.id2label_file!r}: no such file.")
        candidates.append(data_args.id2label_file)
    for folder in (data_args.dataset_name, data_args.train_dir):
        if folder and os.path.isfile(os.path.join(folder, "id2label.json")):
            candidates.append(os.path.join(folder, "id2label.json"))
    if not candidates and data_args.dataset_name and not os.path.isdir(data_args.dataset_name) and not _hub_offline():
        try:
            from huggingface_hub import hf_hub_download

            candidates.append(hf_hub_download(data_args.dataset_name, "id2label.json", repo_type="dataset"))
        except Exception as error:  # noqa: BLE001 (any Hub failure: fall back to counting the classes)
            print(f"No id2label.json in the Hub repo {data_args.dataset_name!r} ({type(error).__name__}).")
    if candidates:
        with open(candidates[0], encoding="utf-8") as handle:
            try:
                id2label = {int(k): str(v) for k, v in json.load(handle).items()}
            except (ValueError, AttributeError) as error:
                raise ArgumentError(f"{candidates[0]!r} must be a JSON object {{id: name}} ({error}).") from error
        print(f"Class names from {candidates[0]}: {len(id2label)} classes.")
        return id2label

    from tqdm.auto import tqdm

    split = dataset["train"] if "train" in dataset else dataset["validation"]
    found: set[int] = set()
    for mask in tqdm(split[data_args.label_column_name], desc="Counting classes in the masks"):
        array = mask_array(mask)
        if data_args.reduce_labels:
            array = reduce_mask_labels(array)
        found.update(int(v) for v in np.unique(array) if v != IGNORE_INDEX)
    if not found:
        raise ArgumentError("The masks contain no class ids (every pixel is 255 / ignored). Check the mask files.")
    num_labels = max(found) + 1
    print(f"No id2label.json: found class ids up to {num_labels - 1} in the masks; naming them class_<id>.")
    return {i: f"class_{i}" for i in range(num_labels)}


# ----------------------------------------------------------------------------------------------- model
def _resize_embeddings(embeddings: nn.Module, image_size: int) -> None:
    """Resize `embeddings.position_embeddings` to `image_size // patch_size` per side (bicubic, no antialias)."""
    grid = image_size // embeddings.patch_size
    old = embeddings.position_embeddings
    resized = resize_position_embeddings(old.data, embeddings.grid, (grid, grid)).contiguous()
    embeddings.position_embeddings = nn.Parameter(resized, requires_grad=old.requires_grad)
    embeddings.grid = grid


def set_model_resolution(model, image_size: int | None = None, low_res_size: int | None = None) -> list[str]:
    """Change the sizes a LookWhere model is trained at, in the weights and in the config (so `save_pretrained`
    writes a consistent folder). Returns a description of what changed.

    - `image_size`: the extractor's position embeddings are resized to the new grid, `extractor_config.image_size`
      is set.
    - `low_res_size`: the selector's position embeddings are resized, `selector_config.image_size` is set, and
      `selector_pretrain_grid` is set to `r * low_grid` so the selector head keeps its `r * r` outputs.
    """
    config = model.config
    body = model.lookwhere if hasattr(model, "lookwhere") else model
    changes = []
    if image_size is not None and image_size != config.high_res_size:
        changes.append(f"extractor image size {config.high_res_size} -> {image_size}")
        _resize_embeddings(body.extractor.embeddings, image_size)
        config.extractor_config.image_size = image_size
    if low_res_size is not None and low_res_size != config.low_res_size:
        r = config.selector_upsample_factor
        changes.append(f"selector image size {config.low_res_size} -> {low_res_size}")
        _resize_embeddings(body.selector.embeddings, low_res_size)
        config.selector_config.image_size = low_res_size
        config.selector_pretrain_grid = r * (low_res_size // body.selector.embeddings.patch_size)
    return changes


def build_model_and_processor(model_class, model_args: ModelArguments, id2label: dict[int, str]):
    """The LookWhere task model and its image processor, ready for fine-tuning.

    From `--model_name_or_path` (LookWhere weights; a classifier of another size needs `--ignore_mismatched_sizes`)
    or `--init_from_dinov2`. `--k_ratio`, `--freeze_selector`, `--image_size` and `--low_res_size` are applied to the
    config, the weights and the processor.

    Returns:
        `(model, image_processor)`.
    """
    from transformers import AutoConfig, AutoImageProcessor

    from .models.lookwhere.image_processing_lookwhere import LookWhereImageProcessor

    label2id = {name: i for i, name in enumerate(id2label.values())}
    id2label = {i: name for i, name in enumerate(id2label.values())}
    hub_kwargs = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}
    processor = None
    if model_args.init_from_dinov2:
        model = model_class.from_dinov2(
            model_args.init_from_dinov2,
            selector_depth=model_args.selector_depth,
            low_res_size=model_args.low_res_size or 154,
            high_res_size=model_args.image_size,
            k_ratio=model_args.k_ratio if model_args.k_ratio is not None else 0.1,
            num_labels=len(id2label),
            id2label=id2label,
            label2id=label2id,
            freeze_selector=model_args.freeze_selector,
        )
        if model_args.freeze_selector:
            print(
                "Note: --init_from_dinov2 gives a selector head that is freshly initialized (not pretrained), so with "
                "--freeze_selector the patch selection stays random. Pretrain the selector first for real use."
            )
    else:
        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            num_labels=len(id2label),
            id2label=id2label,
            label2id=label2id,
            trust_remote_code=model_args.trust_remote_code,
            **hub_kwargs,
        )
        if model_args.k_ratio is not None:
            config.k_ratio = model_args.k_ratio
        config.freeze_selector = model_args.freeze_selector
        try:
            model = model_class.from_pretrained(
                model_args.model_name_or_path,
                config=config,
                ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
                trust_remote_code=model_args.trust_remote_code,
                **hub_kwargs,
            )
        except (RuntimeError, ValueError) as error:
            if "size" in str(error).lower() and "mismatch" in str(error).lower():
                raise ArgumentError(
                    f"The checkpoint's weights do not fit {len(id2label)} labels ({str(error).splitlines()[0]}). Pass "
                    "--ignore_mismatched_sizes to re-initialize the classifier."
                ) from error
            raise
    processor_source = model_args.image_processor_name or model_args.model_name_or_path
    if processor_source:
        try:
            processor = AutoImageProcessor.from_pretrained(processor_source, **hub_kwargs)
        except (OSError, ValueError):
            processor = None
    if processor is None:
        side = model.config.high_res_size
        low = model.config.low_res_size
        processor = LookWhereImageProcessor(size={"height": side, "width": side}, low_res_size={"height": low, "width": low})

    for change in set_model_resolution(model, model_args.image_size, model_args.low_res_size):
        print(f"Resized: {change} (position embeddings interpolated; the saved config uses the new size).")
    if model_args.image_size is not None:
        processor.size = {"height": model_args.image_size, "width": model_args.image_size}
    if model_args.low_res_size is not None:
        processor.low_res_size = {"height": model_args.low_res_size, "width": model_args.low_res_size}
    patch = model.config.patch_size
    height, width = processor_size(processor)
    if height % patch or width % patch:
        raise ArgumentError(
            f"The image processor resizes to {height}x{width}, not a multiple of the patch size {patch}: pass "
            f"--image_size {max(patch, height // patch * patch)}."
        )
    return model, processor


def processor_size(processor) -> tuple[int, int]:
    size = processor.size
    if hasattr(size, "height"):
        return int(size.height), int(size.width)
    return int(size["height"]), int(size["width"])


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """`(trainable, total)` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


# ----------------------------------------------------------------------------------------------- transforms
def _rgb(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return Image.fromarray(array[..., :3].astype(np.uint8))


class ClassificationTransform:
    """Batch transform for `Dataset.set_transform`: `{image, label}` -> `{pixel_values, low_res_pixel_values, labels}`.

    Training: `RandomResizedCrop` to the processor size + horizontal flip, then the processor (no resize) makes both
    views. Evaluation: the processor alone (resize), as the pipeline does.
    """

    def __init__(self, processor, image_column: str, label_column: str, train: bool) -> None:
        from torchvision.transforms import v2

        self.processor, self.image_column, self.label_column, self.train = processor, image_column, label_column, train
        self.augment = v2.Compose([v2.RandomResizedCrop(processor_size(processor)), v2.RandomHorizontalFlip()])

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        images = [_rgb(image) for image in batch[self.image_column]]
        if self.train:
            inputs = self.processor([self.augment(image) for image in images], do_resize=False, return_tensors="pt")
        else:
            inputs = self.processor(images, return_tensors="pt")
        return {
            "pixel_values": list(inputs["pixel_values"]),
            "low_res_pixel_values": list(inputs["low_res_pixel_values"]),
            "labels": list(batch[self.label_column]),
        }


class SegmentationTransform:
    """Batch transform for `Dataset.set_transform`: `{image, mask}` -> `{pixel_values, low_res_pixel_values, labels}`.

    Image and mask go through the same geometric transforms (torchvision v2 with a `Mask`, nearest-neighbour for the
    mask): training `RandomResizedCrop` (scale 0.5-1) + flip, evaluation a resize to the processor size.
    `labels` are `(height, width)` int64 class maps with 255 = ignored.
    """

    def __init__(self, processor, image_column: str, label_column: str, train: bool, reduce_labels: bool = False) -> None:
        from torchvision.transforms import v2

        self.processor, self.image_column, self.label_column = processor, image_column, label_column
        self.train, self.reduce_labels = train, reduce_labels
        size = processor_size(processor)
        if train:
            self.geometry = v2.Compose([v2.RandomResizedCrop(size, scale=(0.5, 1.0)), v2.RandomHorizontalFlip()])
        else:
            self.geometry = v2.Resize(size)

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as TF

        images, labels = [], []
        for image, mask in zip(batch[self.image_column], batch[self.label_column]):
            image = _rgb(image)
            mask = mask_array(mask)
            if mask.shape != (image.height, image.width):
                raise ValueError(
                    f"A mask of size {mask.shape[1]}x{mask.shape[0]} belongs to an image of size "
                    f"{image.width}x{image.height}; masks must have their image's size."
                )
            if self.reduce_labels:
                mask = reduce_mask_labels(mask)
            image_t, mask_t = self.geometry(
                tv_tensors.Image(TF.pil_to_tensor(image)), tv_tensors.Mask(torch.from_numpy(mask)[None])
            )
            images.append(image_t.as_subclass(torch.Tensor))
            labels.append(mask_t.as_subclass(torch.Tensor)[0].long())
        inputs = self.processor(images, do_resize=False, return_tensors="pt")
        return {
            "pixel_values": list(inputs["pixel_values"]),
            "low_res_pixel_values": list(inputs["low_res_pixel_values"]),
            "labels": labels,
        }


def collate_fn(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack transformed examples into a batch `{pixel_values (B, 3, H, W), low_res_pixel_values, labels}`."""
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "low_res_pixel_values": torch.stack([e["low_res_pixel_values"] for e in examples]),
        "labels": torch.stack([torch.as_tensor(e["labels"]) for e in examples]).long(),
    }


# ----------------------------------------------------------------------------------------------- metrics
def _logits(outputs) -> torch.Tensor:
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


def classification_predictions(logits, labels=None) -> torch.Tensor:
    """`(B, num_labels)` logits (or a model output tuple) -> `(B,)` predicted ids (for `preprocess_logits_for_metrics`)."""
    return _logits(logits).argmax(dim=-1)


def segmentation_predictions(logits, labels: torch.Tensor) -> torch.Tensor:
    """`(B, C, G_h, G_w)` logits -> `(B, H, W)` predicted ids at the label size (bilinear upsampling, argmax), as the
    image processor's `post_process_semantic_segmentation` does."""
    logits = _logits(logits)
    upsampled = torch.nn.functional.interpolate(
        logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False
    )
    # int32: half the memory of int64 in Trainer's accumulation, and gatherable by gloo and NCCL (int16 is not).
    return upsampled.argmax(dim=1).to(torch.int32)


def flatten_segmentation_results(results: dict, id2label: dict[int, str]) -> dict[str, float]:
    """`mean_iou` results -> scalars: mean_iou, mean_accuracy, overall_accuracy and `iou_<class>` per class."""
    flat = {key: float(results[key]) for key in ("mean_iou", "mean_accuracy", "overall_accuracy")}
    for i, value in enumerate(np.asarray(results["per_category_iou"])):
        flat[f"iou_{id2label.get(i, i)}"] = float(value)
    return flat


def task_metric(task: str, id2label: dict[int, str]) -> tuple[Any, Callable[..., dict[str, float]]]:
    """The offline `evaluate` module of a task (`accuracy` / `mean_iou` from `lookwhere_hf.metrics`) and a
    `compute(**inputs) -> dict of scalars` that calls its `compute` (with `num_labels` and `ignore_index=255` for
    segmentation, and per-class IoU flattened to `iou_<class>`)."""
    from .metrics import load_metric

    if task == "image-classification":
        metric = load_metric("accuracy", keep_in_memory=True)

        def compute(**inputs) -> dict[str, float]:
            return {"accuracy": float(metric.compute(**inputs)["accuracy"])}

        return metric, compute

    metric = load_metric("mean_iou", keep_in_memory=True)

    def compute_iou(**inputs) -> dict[str, float]:
        results = metric.compute(**inputs, num_labels=len(id2label), ignore_index=IGNORE_INDEX)
        return flatten_segmentation_results(results, id2label)

    return metric, compute_iou


def make_compute_metrics(task: str, id2label: dict[int, str]) -> Callable:
    """A `compute_metrics` for `Trainer`, used after `preprocess_logits_for_metrics` (`classification_predictions` /
    `segmentation_predictions`) turned the logits into class ids."""
    _, compute = task_metric(task, id2label)

    def compute_metrics(eval_pred) -> dict[str, float]:
        predictions, references = np.asarray(eval_pred.predictions), np.asarray(eval_pred.label_ids)
        if task == "image-classification":
            return compute(predictions=predictions.reshape(-1), references=references.reshape(-1))
        return compute(predictions=list(predictions), references=list(references))

    return compute_metrics


# ----------------------------------------------------------------------------------------------- checkpoints
_CHECKPOINT_RE = re.compile(r"^(step|epoch)_(\d+)$")


def parse_checkpointing_steps(value: str | None) -> int | str | None:
    """`--checkpointing_steps`: None, `"epoch"` or a positive int."""
    if value is None or value == "epoch":
        return value
    if not str(value).isdigit() or int(value) < 1:
        raise ArgumentError(f"--checkpointing_steps must be a positive number of steps or 'epoch', got {value!r}.")
    return int(value)


def resolve_checkpoint(resume_from_checkpoint: str | None, output_dir: str) -> Path | None:
    """The checkpoint folder to resume from: the given one, or with `"latest"` the newest `step_N` / `epoch_N` in
    `output_dir` (None if there is none)."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        found = [p for p in Path(output_dir).glob("*") if p.is_dir() and _CHECKPOINT_RE.match(p.name)]
        if not found:
            print(f"--resume_from_checkpoint latest: no checkpoint in {output_dir}, starting from scratch.")
            return None
        return max(found, key=lambda p: p.stat().st_mtime)
    path = Path(resume_from_checkpoint)
    if not path.is_dir() or not _CHECKPOINT_RE.match(path.name):
        raise ArgumentError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r}: expected a checkpoint folder named step_<N> or "
            "epoch_<N> written by --checkpointing_steps (or 'latest')."
        )
    return path


def checkpoint_position(checkpoint: Path, num_update_steps_per_epoch: int) -> tuple[int, int]:
    """`(completed_steps, starting_epoch)` for a `step_N` / `epoch_N` checkpoint folder."""
    kind, number = _CHECKPOINT_RE.match(checkpoint.name).groups()
    if kind == "epoch":
        return (int(number) + 1) * num_update_steps_per_epoch, int(number) + 1
    steps = int(number)
    return steps, steps // num_update_steps_per_epoch


def write_results(output_dir: str, results: dict[str, Any]) -> str:
    """Write `all_results.json` (as `Trainer` does) and return its path."""
    path = os.path.join(output_dir, "all_results.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2, sort_keys=True)
    return path


# ----------------------------------------------------------------------------------------------- run loops
def parse_script_arguments(dataclass_types: tuple, argv: list[str] | None = None) -> tuple:
    """Parse a script's argument dataclasses from the command line, or from a single `.json` file argument.

    When the last dataclass is a `TrainingArguments`, also set up logging at its per-process log level (the main
    process logs, the others warn), as transformers' example scripts do.
    """
    import logging
    import os
    import sys

    import transformers
    from transformers import HfArgumentParser, TrainingArguments

    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser(dataclass_types)
    if len(argv) == 1 and argv[0].endswith(".json"):
        parsed = parser.parse_json_file(os.path.abspath(argv[0]))
    else:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    if isinstance(parsed[-1], TrainingArguments):
        logging.basicConfig(
            format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
        )
        log_level = parsed[-1].get_process_log_level()
        logging.getLogger("__main__").setLevel(log_level)
        transformers.utils.logging.set_verbosity(log_level)
    return tuple(parsed)


def run_cli(main: Callable[[], Any], prog: str) -> Any:
    """Run a script's `main`, turning an [`ArgumentError`] into `prog: error: <message>` and exit status 2."""
    import sys

    try:
        return main()
    except ArgumentError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def describe_setup(model, processor, dataset, print_fn: Callable = print) -> None:
    """Print what is about to be trained: sizes, k, parameters, data."""
    config = model.config
    height, width = processor_size(processor)
    grid = (height // config.patch_size) * (width // config.patch_size)
    trainable, total = count_parameters(model)
    print_fn(
        f"Model: {type(model).__name__}, {config.num_labels} labels, input {height}x{width} (selector "
        f"{config.low_res_size}x{config.low_res_size}), k_ratio {config.k_ratio} -> {config.num_selected(grid)} of "
        f"{grid} patches, selector {'frozen' if config.freeze_selector else 'trained'}; {trainable:,} of {total:,} "
        "parameters trainable."
    )
    print_fn("Data: " + ", ".join(f"{name} {len(split)} examples" for name, split in dataset.items()))


def run_trainer(trainer, training_args, *, task: str, model_args: ModelArguments, data_args: DataTrainingArguments) -> dict:
    """Train / evaluate with a prepared `Trainer`, save model + image processor + metrics, push if asked, and print
    the results and the output folder. Returns all metrics."""
    results: dict[str, float] = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        results.update(train_result.metrics)
    trainer.save_model()  # model, config and (processing_class) image processor
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        results.update(metrics)
    card = {"finetuned_from": model_args.model_name_or_path or model_args.init_from_dinov2, "tasks": task}
    if data_args.dataset_name is not None:
        card["dataset"] = data_args.dataset_name
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)
    elif trainer.is_world_process_zero():
        trainer.create_model_card(**card)
    if trainer.is_world_process_zero():
        report_results(results, training_args.output_dir)
    return results


def report_results(results: dict[str, Any], output_dir: str, print_fn: Callable = print) -> None:
    """Print the evaluation numbers and where the outputs are."""
    timing = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
    evals = {k: v for k, v in results.items() if k.startswith("eval_") and k not in timing and isinstance(v, (int, float))}
    if evals:
        print_fn("Evaluation: " + ", ".join(f"{k[5:]} = {v:.4f}" for k, v in sorted(evals.items())))
    print_fn(
        f"Saved the model, image processor and results (all_results.json) to {os.path.abspath(output_dir)}; load it "
        "with pipeline(..., model=<that folder>)."
    )


def make_accelerator(args: NoTrainerArguments):
    """An `Accelerator` for the no_trainer scripts: gradient accumulation, optional trackers, and a seedable sampler
    (the shuffling order depends only on seed and epoch, so resuming reproduces it).

    On a machine without GPUs, a multi-process launch (`accelerate launch --multi_gpu --num_processes N`, `torchrun`)
    trains on CPU processes with the gloo backend. DDP looks for unused parameters: the selector head gets no
    gradient (top-k is not differentiable) and the extractor's own CLS/register tokens are replaced by the selector's.
    """
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs

    parse_checkpointing_steps(args.checkpointing_steps)
    if args.resume_from_checkpoint not in (None, "latest"):
        resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)  # a wrong path fails before loading anything
    if args.gradient_accumulation_steps < 1:
        raise ArgumentError(f"--gradient_accumulation_steps must be >= 1, got {args.gradient_accumulation_steps}.")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        raise ArgumentError(f"--max_train_steps must be >= 1, got {args.max_train_steps}.")
    kwargs = {"log_with": args.report_to, "project_dir": args.output_dir} if args.with_tracking else {}
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    no_accelerator = not torch.cuda.is_available() and not (hasattr(torch, "xpu") and torch.xpu.is_available())
    if multi_process and no_accelerator:
        kwargs["cpu"] = True  # accelerate only sets up CPU (gloo) distributed training when asked for CPU
    return Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        **kwargs,
    )


class _RngBeforeFetch(torch.utils.data.Dataset):
    """Wraps the training set and remembers the torch RNG state from before each batch is fetched and augmented.

    accelerate's data loader fetches one batch ahead, so when a checkpoint is saved mid-epoch the global RNG has
    already drawn the random crops of the next batch. Saving the state from before that fetch lets a resumed run draw
    the same crops again (`num_workers=0`; with worker processes, augmentation RNG lives in the workers).
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.fetched = 0
        self.state_before_last_fetch: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]

    def __getitems__(self, indices):
        self.state_before_last_fetch = torch.get_rng_state()
        self.fetched += 1
        return self.dataset.__getitems__(indices) if hasattr(self.dataset, "__getitems__") else [self.dataset[i] for i in indices]


def _data_rng_file(checkpoint: str | os.PathLike, process_index: int) -> str:
    return os.path.join(checkpoint, f"data_rng_state_{process_index}.pt")


def _optimizer(model: nn.Module, args: NoTrainerArguments) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(("cls_token", "register_tokens", "position_embeddings")):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.learning_rate)


def accelerate_train(
    accelerator,
    args: NoTrainerArguments,
    model,
    processor,
    train_dataset,
    eval_dataset,
    *,
    predict: Callable[[Any, torch.Tensor], torch.Tensor],
    metric,
    compute_metrics: Callable[[], dict[str, float]],
    task: str,
    model_args: ModelArguments,
) -> dict[str, Any]:
    """The no_trainer fine-tuning loop: AdamW + scheduler, gradient accumulation, a tqdm progress bar, evaluation
    after every epoch, `--checkpointing_steps` / `--resume_from_checkpoint`, and at the end the model, image processor
    and `all_results.json` / `eval_results.json` in `args.output_dir`.

    Args:
        predict: `(logits, labels) -> predictions` for the metric (class ids).
        metric: an `evaluate` module; batches go in with `add_batch(predictions=, references=)`.
        compute_metrics: `() -> dict of scalars` (calls `metric.compute(...)`), e.g. from [`task_metric`].
    """
    import math

    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    checkpointing = parse_checkpointing_steps(args.checkpointing_steps)
    loader_kwargs = {"collate_fn": collate_fn, "num_workers": args.dataloader_num_workers}
    recorder = _RngBeforeFetch(train_dataset)
    # Own generators: iterating a DataLoader otherwise draws a seed from the global RNG, which the augmentation uses.
    train_dataloader = DataLoader(
        recorder, shuffle=True, batch_size=args.per_device_train_batch_size,
        generator=torch.Generator().manual_seed(args.seed), **loader_kwargs,
    )
    eval_dataloader = DataLoader(
        eval_dataset, batch_size=args.per_device_eval_batch_size, generator=torch.Generator().manual_seed(args.seed),
        **loader_kwargs,
    )
    optimizer = _optimizer(model, args)
    model, optimizer, train_dataloader, eval_dataloader = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader
    )
    steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or math.ceil(args.num_train_epochs * steps_per_epoch)
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    lr_scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    lr_scheduler = accelerator.prepare(lr_scheduler)
    if args.with_tracking:
        accelerator.init_trackers(task.replace("-", "_") + "_no_trainer", {k: str(v) for k, v in vars(args).items()})

    total_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    accelerator.print(
        f"Training: {len(train_dataset)} examples, {num_epochs} epochs, {max_train_steps} optimizer steps of "
        f"{total_batch} examples ({accelerator.num_processes} processes x {args.per_device_train_batch_size} x "
        f"{args.gradient_accumulation_steps} accumulation)."
    )
    completed_steps, starting_epoch, skip_batches = 0, 0, 0
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
    if checkpoint is not None:
        accelerator.print(f"Resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
        if os.path.isfile(_data_rng_file(checkpoint, accelerator.process_index)):
            torch.set_rng_state(torch.load(_data_rng_file(checkpoint, accelerator.process_index)))
        completed_steps, starting_epoch = checkpoint_position(checkpoint, steps_per_epoch)
        skip_batches = (completed_steps - starting_epoch * steps_per_epoch) * args.gradient_accumulation_steps
        if completed_steps >= max_train_steps:
            accelerator.print(f"The checkpoint is at step {completed_steps} >= {max_train_steps} steps: nothing to train.")

    def save_checkpoint(name: str, batches_in_epoch: int = 0) -> None:
        path = os.path.join(args.output_dir, name)
        accelerator.save_state(path)
        # The RNG state a resumed run must continue from: before the batch the loader has fetched ahead, if any.
        fetched_ahead = recorder.fetched > batches_in_epoch
        state = recorder.state_before_last_fetch if fetched_ahead else torch.get_rng_state()
        torch.save(state, _data_rng_file(path, accelerator.process_index))
        accelerator.print(f"Saved the training state to {path}")

    progress = tqdm(range(max_train_steps), disable=not accelerator.is_local_main_process, desc="Training")
    progress.update(min(completed_steps, max_train_steps))
    eval_metrics: dict[str, float] = {}
    train_loss = float("nan")
    for epoch in range(starting_epoch, num_epochs):
        if completed_steps >= max_train_steps:
            break
        model.train()
        train_dataloader.set_epoch(epoch)
        loader = train_dataloader
        if epoch == starting_epoch and skip_batches:
            loader = accelerator.skip_first_batches(train_dataloader, skip_batches)
        loss_sum, loss_count = torch.zeros((), device=accelerator.device), 0
        recorder.fetched = 0
        for batch in loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                loss_sum += loss.detach().float()
                loss_count += 1
                accelerator.backward(loss)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                progress.update(1)
                completed_steps += 1
                if isinstance(checkpointing, int) and completed_steps % checkpointing == 0:
                    save_checkpoint(f"step_{completed_steps}", batches_in_epoch=loss_count)
            if completed_steps >= max_train_steps:
                break
        train_loss = accelerator.gather(loss_sum).sum().item() / max(1, loss_count * accelerator.num_processes)
        eval_metrics = accelerate_evaluate(accelerator, model, eval_dataloader, predict, metric, compute_metrics)
        accelerator.print(
            f"epoch {epoch}: train_loss {train_loss:.4f}, " + ", ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items() if not k.startswith("eval_iou_"))
        )
        if args.with_tracking:
            accelerator.log({"train_loss": train_loss, "epoch": epoch, **eval_metrics}, step=completed_steps)
        if checkpointing == "epoch":
            save_checkpoint(f"epoch_{epoch}", batches_in_epoch=loss_count)
    progress.close()
    if not eval_metrics:  # nothing trained (resumed at the end): still evaluate
        eval_metrics = accelerate_evaluate(accelerator, model, eval_dataloader, predict, metric, compute_metrics)
    if args.with_tracking:
        accelerator.end_training()

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(
        args.output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save
    )
    results = {**eval_metrics, "train_loss": train_loss, "train_steps": completed_steps, "epoch": completed_steps / steps_per_epoch}
    if accelerator.is_main_process:
        processor.save_pretrained(args.output_dir)
        write_results(args.output_dir, results)
        with open(os.path.join(args.output_dir, "eval_results.json"), "w", encoding="utf-8") as handle:
            json.dump(eval_metrics, handle, indent=2, sort_keys=True)
        if args.push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi(token=args.hub_token)
            repo_id = api.create_repo(args.hub_model_id or Path(args.output_dir).name, exist_ok=True).repo_id
            api.upload_folder(
                repo_id=repo_id, folder_path=args.output_dir, ignore_patterns=["step_*", "epoch_*"],
                commit_message="End of training",
            )
            accelerator.print(f"Pushed to https://huggingface.co/{repo_id}")
        report_results(results, args.output_dir, accelerator.print)
    accelerator.wait_for_everyone()
    return results


def accelerate_evaluate(accelerator, model, eval_dataloader, predict, metric, compute_metrics) -> dict[str, float]:
    """Run the evaluation set through the model (all processes), gather the predictions and compute the metric.
    Returns the metrics with an `eval_` prefix."""
    from tqdm.auto import tqdm

    model.eval()
    for batch in tqdm(eval_dataloader, desc="Evaluating", leave=False, disable=not accelerator.is_local_main_process):
        with torch.no_grad():
            logits = model(pixel_values=batch["pixel_values"], low_res_pixel_values=batch["low_res_pixel_values"]).logits
        predictions = predict(logits, batch["labels"])
        predictions, references = accelerator.gather_for_metrics((predictions, batch["labels"]))
        metric.add_batch(predictions=predictions.cpu().numpy(), references=references.cpu().numpy())
    model.train()
    return {f"eval_{key}": value for key, value in compute_metrics().items()}


__all__ = [
    "ArgumentError",
    "ModelArguments",
    "DataTrainingArguments",
    "SegmentationDataArguments",
    "NoTrainerArguments",
    "validate_arguments",
    "load_datasets",
    "load_image_mask_pairs",
    "prepare_classification_labels",
    "prepare_segmentation_labels",
    "build_model_and_processor",
    "set_model_resolution",
    "ClassificationTransform",
    "SegmentationTransform",
    "collate_fn",
    "make_compute_metrics",
    "task_metric",
    "classification_predictions",
    "segmentation_predictions",
    "flatten_segmentation_results",
    "parse_checkpointing_steps",
    "resolve_checkpoint",
    "checkpoint_position",
    "write_results",
    "run_cli",
    "run_trainer",
    "report_results",
    "describe_setup",
    "make_accelerator",
    "accelerate_train",
    "accelerate_evaluate",
]
