"""Datasets for the example scripts: loading (a Hub name, a local imagefolder, a folder saved with `save_to_disk`, or
image / mask pairs), splits and labels, and [`SeededDataset`], which makes the random augmentation of every example
a function of `(seed, epoch, index)`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils import hub_offline, looks_like_local_path
from .arguments import (
    SEGMENTATION_LABEL_COLUMNS,
    ArgumentError,
    DataArguments,
    DataTrainingArguments,
    HubArguments,
    PretrainingDataArguments,
    SegmentationDataArguments,
)

IGNORE_INDEX = 255
EVAL_SPLIT_NAMES = ("validation", "val", "valid")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
MASK_DIR_NAMES = ("masks", "annotations", "labels")
# the `task` of the loaders
IMAGE_CLASSIFICATION = "image-classification"
SEMANTIC_SEGMENTATION = "semantic-segmentation"
PRETRAINING = "pretraining"


# ----------------------------------------------------------------------------------------------- loading
def _find_mask_dir(folder: Path) -> Path | None:
    return next((folder / name for name in MASK_DIR_NAMES if (folder / name).is_dir()), None)


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


def _load(flag: str, source: str, load: Callable[[], Any]):
    """Run a `datasets` loader; any failure becomes an [`ArgumentError`] naming the flag and the source."""
    try:
        return load()
    except ArgumentError:
        raise
    except Exception as error:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ValueError...)
        offline = " The Hub is unreachable offline: pass a local folder." if hub_offline() else ""
        raise ArgumentError(
            f"{flag} {source!r}: could not load it ({type(error).__name__}: {error}).{offline} Local data works with "
            "--dataset_name <folder> or --train_dir."
        ) from error


def load_raw_dataset(data_args: DataArguments, hub: HubArguments, *, task: str, streaming: bool = False):
    """Every split of the dataset the arguments name, as a `DatasetDict` (`IterableDatasetDict` with `streaming`).

    `--train_dir` / `--validation_dir`: imagefolders whose every image belongs to that split (image / mask pair folders
    for segmentation; for pretraining, `--train_dir` is read like a `--dataset_name` folder). `--dataset_name`:
    a folder saved with `save_to_disk`, a pair folder (segmentation; optionally with `train/`, `validation/`), an
    imagefolder, or a Hub dataset.
    """
    import datasets

    kwargs = {"cache_dir": hub.cache_dir, "streaming": streaming}
    if data_args.dataset_name is None:
        dirs = {"train": data_args.train_dir, "validation": getattr(data_args, "validation_dir", None)}
        dirs = {split: path for split, path in dirs.items() if path is not None}
        if task == SEMANTIC_SEGMENTATION:
            return datasets.DatasetDict({split: load_image_mask_pairs(path) for split, path in dirs.items()})
        if task == PRETRAINING:  # one imagefolder; split-named sub-folders (train/, validation/, ...) are its splits
            folder = data_args.train_dir
            return _load("--train_dir", folder, lambda: datasets.load_dataset("imagefolder", data_dir=folder, **kwargs))
        files = {split: os.path.join(path, "**") for split, path in dirs.items()}
        flag = "--train_dir" if "train" in dirs else "--validation_dir"
        return _load(
            flag, next(iter(dirs.values())), lambda: datasets.load_dataset("imagefolder", data_files=files, **kwargs)
        )

    name = os.path.expanduser(data_args.dataset_name)
    root = Path(name)
    if not root.is_dir():
        return _load("--dataset_name", name, lambda: datasets.load_dataset(
            name, data_args.dataset_config_name, token=hub.token, **kwargs
        ))  # fmt: skip
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        loaded = _load("--dataset_name", name, lambda: datasets.load_from_disk(name))
        splits = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
        if streaming:
            return datasets.IterableDatasetDict({split: ds.to_iterable_dataset() for split, ds in splits.items()})
        return datasets.DatasetDict(splits)
    if task == SEMANTIC_SEGMENTATION:
        if _is_pair_folder(root):
            return datasets.DatasetDict({"train": load_image_mask_pairs(root)})
        split_dirs = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and _is_pair_folder(p)}
        if not split_dirs:
            raise ArgumentError(
                f"--dataset_name {name!r}: expected images/ and masks/ sub-folders (optionally under train/ and "
                "validation/), or a dataset saved with `save_to_disk`."
            )
        return datasets.DatasetDict({split: load_image_mask_pairs(p) for split, p in split_dirs.items()})
    return _load("--dataset_name", name, lambda: datasets.load_dataset("imagefolder", data_dir=name, **kwargs))


def check_image_column(dataset, column: str) -> None:
    """Fail early on a missing image column, an empty dataset, or a first image that is not one / does not decode."""
    import datasets

    streamed = isinstance(dataset, datasets.IterableDataset)
    first = next(iter(dataset), None) if streamed else (dataset[0] if len(dataset) else None)
    columns = dataset.column_names or (list(first) if first is not None else [])
    if column not in columns:
        raise ArgumentError(
            f"--image_column_name {column!r} is not a column of the dataset (columns: {columns}). Pass the name of "
            "the column holding the images."
        )
    if first is None:
        raise ArgumentError("The training dataset is empty. Check the path / split.")
    image = first[column]
    if not hasattr(image, "convert"):
        raise ArgumentError(
            f"Column {column!r} does not hold images (its first value is a {type(image).__name__}). Use a column of "
            "type `datasets.Image`."
        )
    try:
        image.convert("RGB")
    except Exception as error:
        raise ArgumentError(
            f"The first image of the dataset does not decode: {type(error).__name__}: {error}."
        ) from error


def load_datasets(
    data_args: DataTrainingArguments,
    hub: HubArguments,
    *,
    task: str,
    do_train: bool = True,
    do_eval: bool = True,
    seed: int = 42,
):
    """The fine-tuning data: a `DatasetDict` with `train` and/or `validation` splits and checked columns.

    The evaluation split is `validation` (or `val` / `valid`); without one, `--train_val_split` of the training set
    is held out. `--max_train_samples` / `--max_eval_samples` are applied here. For segmentation without
    `--label_column_name`, the first of `SEGMENTATION_LABEL_COLUMNS` present is used (and written to `data_args`).

    Args:
        task (`str`): `"image-classification"` or `"semantic-segmentation"`.
    """
    import datasets

    raw = load_raw_dataset(data_args, hub, task=task)
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
    splits = {
        name: ds for name, ds in splits.items() if (name == "train" and do_train) or (name == "validation" and do_eval)
    }
    if not splits:
        raise ArgumentError("Nothing to do: pass --do_train and/or --do_eval.")

    first = next(iter(splits.values()))
    check_image_column(first, data_args.image_column_name)
    columns = first.column_names
    if data_args.label_column_name is None and task == SEMANTIC_SEGMENTATION:
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


def load_pretraining_dataset(data_args: PretrainingDataArguments, hub: HubArguments, transform, *, seed: int):
    """The pretraining images, transformed on the fly by `transform` (a batch transform `{image} -> {pixel_values}`).

    Returns a [`SeededDataset`] (per-example seeded augmentation), or with `--streaming` a shuffled
    `datasets.IterableDataset` (augmentation from the global RNG).
    """
    raw = load_raw_dataset(data_args, hub, task=PRETRAINING, streaming=data_args.streaming)
    if data_args.train_split not in raw:
        raise ArgumentError(
            f"The dataset has no split {data_args.train_split!r}; its splits are {list(raw)}. Pass one with "
            "--train_split."
        )
    dataset = raw[data_args.train_split]
    check_image_column(dataset, data_args.image_column_name)
    if data_args.streaming:
        if data_args.max_train_samples is not None:
            dataset = dataset.take(data_args.max_train_samples)
        dataset = dataset.shuffle(seed=seed, buffer_size=data_args.shuffle_buffer_size)
        return dataset.map(transform, batched=True, remove_columns=list(dataset.column_names or []) or None)
    if data_args.max_train_samples is not None:
        dataset = dataset.select(range(min(data_args.max_train_samples, len(dataset))))
    dataset.set_transform(transform)
    return SeededDataset(dataset, seed)


class SeededDataset(torch.utils.data.Dataset):
    """A map-style dataset whose example `index` is fetched (and augmented by its transform) with the torch RNG seeded
    from `(seed, epoch, index)`.

    The augmentation of an example then does not depend on the process, the data-loader worker, the batch size or
    what was drawn before it: a resumed run sees exactly the augmentations of the uninterrupted run (accelerate's data
    loader fetches one batch ahead, which would otherwise shift the global RNG across a checkpoint), and N processes
    see those of one. The training loops call `set_epoch` at the start of every epoch.
    """

    def __init__(self, dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_003 + int(index)) % (2**63 - 1))
            try:
                return self.dataset[int(index)]
            except Exception as error:  # a corrupt file deep in a large dataset: say which one
                raise ValueError(
                    f"Training example {index} could not be loaded: {type(error).__name__}: {error}"
                ) from error


# ----------------------------------------------------------------------------------------------- labels
def prepare_classification_labels(dataset, label_column: str):
    """Make the label column a `ClassLabel` (consistent ids over all splits) and return `(dataset, id2label)`."""
    import datasets

    feature = next(iter(dataset.values())).features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return dataset, dict(enumerate(feature.names))
    if not isinstance(feature, datasets.Value):
        raise ArgumentError(
            f"--label_column_name {label_column!r} holds {feature}, not one class label per image. Pass a column of "
            "class names or ids."
        )
    values = sorted(
        {v for split in dataset.values() for v in split.unique(label_column)}, key=lambda v: (str(type(v)), v)
    )
    to_id = {v: i for i, v in enumerate(values)}
    names = [str(v) for v in values]

    def encode(labels):
        return {label_column: [to_id[v] for v in labels]}

    dataset = dataset.map(encode, batched=True, input_columns=[label_column], desc="Encoding labels")
    dataset = dataset.cast_column(label_column, datasets.ClassLabel(names=names))
    return dataset, dict(enumerate(names))


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
    name = data_args.dataset_name
    if not candidates and name and not looks_like_local_path(name) and not hub_offline():
        try:
            from huggingface_hub import hf_hub_download

            candidates.append(hf_hub_download(name, "id2label.json", repo_type="dataset"))
        except Exception as error:  # any Hub failure: fall back to counting the classes
            print(f"No id2label.json in the Hub repo {name!r} ({type(error).__name__}).")
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
