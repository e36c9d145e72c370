"""Reading a where-to-look imagefolder: the annotations (boxes, size bins) and one split as a torch dataset."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPARSE_DIGITS_GENERATOR = os.path.join(REPO, "benchmarks", "sparse_digits", "make_dataset.py")


def _generator_module():
    """Sparse Digits' `make_dataset.py`, the owner of the annotation format (Varied Items' generator reuses its
    reader), loaded by path under the name Varied Items' generator gives it."""
    name = "sparse_digits_make_dataset"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SPARSE_DIGITS_GENERATOR)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def read_annotations(data_dir: str, split: str | None = None) -> dict[str, dict]:
    """`{file_name: annotation}` from `DATA_DIR/annotations.jsonl` (optionally one split only)."""
    return _generator_module().read_annotations(data_dir, split)


def class_names(data_dir: str) -> list[str]:
    """The class names in label order: the imagefolder's sorted class folders of `train/` (as `datasets` and the
    example scripts number them), checked against the annotations' labels."""
    train = os.path.join(data_dir, "train")
    if not os.path.isdir(train):
        raise FileNotFoundError(f"No train/ folder in {data_dir}: is it a generated imagefolder?")
    names = sorted(name for name in os.listdir(train) if os.path.isdir(os.path.join(train, name)))
    for row in read_annotations(data_dir, "train").values():
        folder = row["file_name"].split("/")[1]
        if not 0 <= int(row["label"]) < len(names) or names[int(row["label"])] != folder:
            raise ValueError(
                f"{data_dir}/annotations.jsonl gives label {row['label']} to {row['file_name']}, but the imagefolder "
                f"numbers its class folders {names}; the labels must be the sorted class folders' indices."
            )
    return names


def read_info(data_dir: str) -> dict:
    """The generator's `dataset_info.json` (settings, size-bin edges)."""
    with open(os.path.join(data_dir, "dataset_info.json"), encoding="utf-8") as f:
        return json.load(f)


SUBSET_SEED = 0  # the seed of the `max_samples` subsets (the same images in every run)


class ImageFolderSplit:
    """One split of a where-to-look imagefolder as a torch dataset: `{pixel_values, [low_res_pixel_values], labels}`
    made by `processor` from the PNG (the class id is the annotation's `label`, the index of the sorted class folders).
    `rows` keeps the annotations (box, size bin) in file-name order."""

    def __init__(self, data_dir: str, split: str, processor, max_samples: int | None = None) -> None:
        rows = sorted(read_annotations(data_dir, split).values(), key=lambda r: r["file_name"])
        if not rows:
            raise ValueError(f"No {split!r} images in {data_dir}/annotations.jsonl; is it a generated imagefolder?")
        if max_samples and max_samples < len(rows):
            # a seeded sample, not the first N: file names start with the class folder, so the first N would be
            # the first classes only
            keep = sorted(random.Random(SUBSET_SEED).sample(range(len(rows)), max_samples))
            rows = [rows[i] for i in keep]
        self.rows = rows
        self.data_dir, self.processor = data_dir, processor

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, index: int):
        from PIL import Image

        return Image.open(os.path.join(self.data_dir, self.rows[index]["file_name"])).convert("RGB")

    def size_bins(self) -> list[str] | None:
        """Each image's `size_bin` (None when the annotations have none)."""
        if "size_bin" not in self.rows[0]:
            return None
        return [row["size_bin"] for row in self.rows]

    def __getitem__(self, index: int) -> dict:
        inputs = self.processor(self.image(index), return_tensors="pt")
        example = {key: value[0] for key, value in inputs.items() if key.endswith("pixel_values")}
        example["labels"] = int(self.rows[index]["label"])
        return example
