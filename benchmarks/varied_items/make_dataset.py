#!/usr/bin/env python
"""Generate *Varied Items*: one real product photo (Fashion-MNIST) at a random scale, anywhere on a cluttered canvas.

The second where-to-look benchmark (issue 24). Unlike Sparse Digits (one 24-28 px digit aligned inside one patch),
the item's size is drawn log-uniformly over about 10x (default 20-224 px on a 448 px canvas) and it is placed
anywhere, not aligned to the patch grid: large items can be read at low resolution, small ones need
high-resolution patches.

Items (`--items`):

- `fashion_mnist` (default): Fashion-MNIST (Zalando Research), 70,000 real 28x28 grayscale product photos in 10
  classes, read from a folder (`--items_dir`) with the four standard IDX files (`train-images-idx3-ubyte`,
  `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each optionally `.gz`). On Debian
  `apt-get install dataset-fashion-mnist` puts them in `/usr/share/datasets/fashion-mnist` (the default); elsewhere
  they come from the dataset's release or torchvision's `FashionMNIST` download (its `raw/` folder).
- `digits`: scikit-learn's bundled handwritten digits (`sklearn.datasets.load_digits`, 1797 real 8x8 scans), no
  download: for tests and smoke runs.

Splits: for Fashion-MNIST, train and validation items come from disjoint, class-stratified parts of its training
set (`--validation_fraction` of each class goes to validation) and test items from its test set. For the digits
(one set), the three pools are disjoint, stratified parts of it (Sparse Digits' `split_sources`). Each pool is
shuffled and cycled, so every item of a pool is used before any repeats. The pools depend on `--split_seed` only
(default: `--seed`): extra training canvases made with another `--seed` and the same `--split_seed` never show a
validation item.

Each image (`--canvas_size`, RGB):

- a dark background: a smooth random colour gradient with sparse speckles;
- clutter that is not an item, in clearly coloured (never near-white) paint: line strokes, filled blobs and
  blocky random-walk fragments; blobs and fragments never cover the item's square, lines may cross under it. With
  `--light_clutter p`, each clutter element is painted in an item-like light tint with probability p instead: by
  default (0) the item is the only near-white thing, and a network with *random* weights already finds it by
  brightness (see TEACHER_ATTEMPTS.md);
- the item, scaled (bicubic) to a random side drawn log-uniformly in `[--min_item_size, --max_item_size]`, at a
  random position (anywhere on the canvas), in a light tint: the item's pixel intensity is its alpha mask (Fashion-MNIST
  photos are light objects on black), `alpha = min(1, intensity * --alpha_gain)`, and its colour keeps the photo's
  texture, `tint * (0.35 + 0.65 * intensity)`, so it stands out against the dark, cluttered background;
- the label is the item's class.

Output (an `imagefolder` that `datasets.load_dataset("imagefolder", data_dir=...)` and the example scripts read)::

    OUTPUT_DIR/{train,validation,test}/<class_name>/<split>_<index>.png
    OUTPUT_DIR/annotations.jsonl    one row per image: split, file_name, label (class index), class_name,
                                    source_split and source_index (which IDX file and row), item_size (px),
                                    size_bin (small / medium / large), box = [x0, y0, x1, y1] (tight box of the
                                    item's pixels with alpha > 0.1, x1/y1 exclusive), placed_box (the item's square)
    OUTPUT_DIR/dataset_info.json    generation arguments, the size-bin edges, the item pools of each split

The boxes are for evaluation only: no model may train with them (issue 24).

Size bins: the terciles of the log size range, `edges = min * (max / min) ** (1/3, 2/3)` (44.7 and 100 px for
20-224 px): with log-uniform sizes each bin holds about a third of the images. The edges are stored in
`dataset_info.json`; an image is `small` if `item_size < edges[0]`, `large` if `item_size >= edges[1]`.

Generation is deterministic: every image has its own random generator seeded with `(seed, split, index)`, so the
same arguments give byte-identical files with any number of worker processes.

Example:

    python benchmarks/varied_items/make_dataset.py --output_dir data/varied_items --seed 0 \\
        --items_dir /usr/share/datasets/fashion-mnist
    python benchmarks/varied_items/make_dataset.py --output_dir data/varied_digits --items digits \\
        --num_train 300 --num_validation 100 --num_test 100
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from multiprocessing import get_context

import numpy as np
from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_sparse_digits_generator():
    """Sparse Digits' `make_dataset.py` (same file name as this one, so it is loaded by path under its own name)."""
    name = "sparse_digits_make_dataset"
    if name in sys.modules:
        return sys.modules[name]
    path = os.path.join(HERE, os.pardir, "sparse_digits", "make_dataset.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_sparse_digits = _load_sparse_digits_generator()
SPLITS = _sparse_digits.SPLITS  # ("train", "validation", "test")
ink_box = _sparse_digits.ink_box  # tight box of the pixels with alpha > threshold
scale_item = _sparse_digits.scale_digit  # bicubic upscaling of a [0, 1] image, clipped to [0, 1]
sample_rng = _sparse_digits.sample_rng  # the per-image generator (seed, split, index)
read_annotations = _sparse_digits.read_annotations  # {file_name: row} from annotations.jsonl

DEFAULT_ITEMS_DIR = "/usr/share/datasets/fashion-mnist"
ITEM_SOURCES = ("fashion_mnist", "digits")
FASHION_MNIST_CLASSES = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX magic numbers: two zero bytes, the element type (0x08 = unsigned byte), the number of dimensions
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SIZE_BINS = ("small", "medium", "large")


@dataclass
class VariedItemsConfig:
    """All generation parameters (stored in `dataset_info.json`)."""

    seed: int = 0
    split_seed: int = field(
        default=-1,
        metadata={
            "help": "Seed of the train / validation item split (-1: --seed). Keep it fixed when you generate extra "
            "training canvases with another --seed, so that no validation item shows up in them."
        },
    )
    items: str = field(default="fashion_mnist", metadata={"help": f"Item source: one of {ITEM_SOURCES}."})
    items_dir: str = field(
        default=DEFAULT_ITEMS_DIR,
        metadata={"help": "Folder with Fashion-MNIST's four IDX files (.gz or not); only for --items fashion_mnist."},
    )
    canvas_size: int = 448
    min_item_size: int = field(default=20, metadata={"help": "Smallest item side (px), log-uniform sizes."})
    max_item_size: int = field(default=224, metadata={"help": "Largest item side (px), at most the canvas side."})
    num_train: int = 8000
    num_validation: int = 1000
    num_test: int = 2000
    validation_fraction: float = field(
        default=1 / 6,
        metadata={"help": "Share of each class of Fashion-MNIST's training set kept for validation items."},
    )
    alpha_gain: float = field(
        default=3.0, metadata={"help": "Item alpha = min(1, intensity * gain): the photo's pixels as its mask."}
    )
    light_clutter: float = field(
        default=0.0,
        metadata={
            "help": "Probability that a clutter stroke / blob / fragment is painted in an item-like light tint instead "
            "of a clearly coloured one (0 = never: then the item is the only near-white thing on the canvas, and "
            "brightness alone finds it)."
        },
    )
    num_lines: tuple[int, int] = (4, 9)
    num_blobs: tuple[int, int] = (2, 5)
    num_fragments: tuple[int, int] = (2, 5)

    def validate(self) -> None:
        if self.items not in ITEM_SOURCES:
            raise ValueError(f"--items must be one of {', '.join(ITEM_SOURCES)}, got {self.items!r}.")
        if self.canvas_size < 32:
            raise ValueError(f"--canvas_size must be at least 32 px, got {self.canvas_size}.")
        if not 8 <= self.min_item_size <= self.max_item_size <= self.canvas_size:
            raise ValueError(
                "Need 8 <= --min_item_size <= --max_item_size <= --canvas_size, got "
                f"{self.min_item_size}, {self.max_item_size} and {self.canvas_size}."
            )
        for name in ("num_train", "num_validation", "num_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be a positive number of images, got {getattr(self, name)}.")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"--validation_fraction must be in (0, 1), got {self.validation_fraction}.")
        if self.split_seed < -1:
            raise ValueError(f"--split_seed must be -1 (use --seed) or a seed >= 0, got {self.split_seed}.")
        if not 0.0 <= self.light_clutter <= 1.0:
            raise ValueError(f"--light_clutter must be a probability in [0, 1], got {self.light_clutter}.")
        if self.alpha_gain < 1.0:
            raise ValueError(f"--alpha_gain must be >= 1, got {self.alpha_gain}.")

    @property
    def pool_seed(self) -> int:
        """The seed of the item pools: `split_seed`, or `seed` when it is -1."""
        return self.seed if self.split_seed == -1 else self.split_seed

    def size_bin_edges(self) -> tuple[float, float]:
        """The terciles of the log size range: `(small/medium edge, medium/large edge)` in pixels."""
        ratio = self.max_item_size / self.min_item_size
        return (self.min_item_size * ratio ** (1 / 3), self.min_item_size * ratio ** (2 / 3))


def size_bin(item_size: float, edges: tuple[float, float]) -> str:
    """`small` below `edges[0]`, `large` from `edges[1]` on, else `medium`."""
    return SIZE_BINS[int(item_size >= edges[0]) + int(item_size >= edges[1])]


# ----------------------------------------------------------------------------------------------------- sources
def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (the MNIST format; gzip-compressed if the name ends in `.gz`) into a numpy array.

    The header is two zero bytes, a type byte (0x08 unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64) and the number of dimensions, then one big-endian int32 per dimension; the data follow
    in row-major order. Raises `ValueError` with the file's name when the magic number, the shape or the length is
    wrong."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as err:  # includes gzip.BadGzipFile
        raise ValueError(f"Cannot read the IDX file {path}: {err}") from err
    if len(data) < 4:
        raise ValueError(f"{path} is not an IDX file: {len(data)} bytes, shorter than the 4-byte magic number.")
    zero, dtype_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or dtype_code not in IDX_DTYPES or ndim < 1:
        raise ValueError(
            f"{path} is not an IDX file: bad magic number 0x{data[:4].hex()} (expected 0x0000 followed by a type byte "
            f"in {sorted(hex(c) for c in IDX_DTYPES)} and the number of dimensions, e.g. 0x00000803 for images)."
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, need {header} for {ndim} dimensions).")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[dtype_code])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{path}: the header says shape {shape} of {dtype} ({expected} bytes with the header), but the file has "
            f"{len(data)} bytes; the file is truncated or not an IDX file."
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find_idx(items_dir: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        path = os.path.join(items_dir, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"No {stem} or {stem}.gz in --items_dir {items_dir!r}. Fashion-MNIST's four IDX files are installed by "
        "`apt-get install dataset-fashion-mnist` (in /usr/share/datasets/fashion-mnist) or come with the dataset's "
        "release / torchvision's FashionMNIST download; or use --items digits (no download)."
    )


def load_idx_pair(items_dir: str, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Images `(N, H, W)` uint8 and labels `(N,)` of one part (`train` or `test`) of an MNIST-style IDX folder."""
    images_path, labels_path = (_find_idx(items_dir, stem) for stem in IDX_FILES[part])
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise ValueError(f"{images_path} must hold images (3 dimensions N x H x W), got shape {images.shape}.")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"{labels_path} must hold one label per image of {images_path} ({len(images)}), got shape {labels.shape}."
        )
    return images, labels.astype(np.int64)


@dataclass
class ItemSource:
    """Item photos in [0, 1] and labels, per source part (`train`, and `test` when the source has one)."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    class_names: tuple[str, ...]
    description: str


def load_items(config: VariedItemsConfig) -> ItemSource:
    if config.items == "digits":
        images, labels = _sparse_digits.load_source_digits()
        return ItemSource(
            {"train": images},
            {"train": labels},
            tuple(str(i) for i in range(10)),
            "sklearn.datasets.load_digits (1797 real 8x8 handwritten digits)",
        )
    parts = {part: load_idx_pair(config.items_dir, part) for part in ("train", "test")}
    for part, (_, labels) in parts.items():
        if labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES):
            raise ValueError(f"Fashion-MNIST {part} labels must be 0-9, got {labels.min()}..{labels.max()}.")
    return ItemSource(
        {part: (images.astype(np.float32) / 255.0) for part, (images, _) in parts.items()},
        {part: labels for part, (_, labels) in parts.items()},
        tuple(f"{i}_{name}" for i, name in enumerate(FASHION_MNIST_CLASSES)),
        f"Fashion-MNIST IDX files in {os.path.abspath(config.items_dir)}",
    )


def item_pools(source: ItemSource, config: VariedItemsConfig) -> dict[str, tuple[str, np.ndarray]]:
    """Disjoint item pools: `{split: (source part, sorted indices into that part)}`.

    With a test part (Fashion-MNIST): train / validation from the training part (stratified per class, a share
    `validation_fraction` of each class to validation), test = the whole test part. Without one (digits): Sparse
    Digits' stratified three-way split of the one set."""
    if "test" not in source.labels:
        pools = _sparse_digits.split_sources(source.labels["train"], config.pool_seed)
        return {split: ("train", pool) for split, pool in pools.items()}
    rng = np.random.default_rng([config.pool_seed, 1_000_003])
    labels = source.labels["train"]
    train, validation = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = max(1, round(config.validation_fraction * len(members)))
        validation.extend(members[:n_val])
        train.extend(members[n_val:])
    return {
        "train": ("train", np.sort(np.asarray(train, dtype=np.int64))),
        "validation": ("train", np.sort(np.asarray(validation, dtype=np.int64))),
        "test": ("test", np.arange(len(source.labels["test"]), dtype=np.int64)),
    }


def assign_items(pool: np.ndarray, num_images: int, seed: int, split: str) -> np.ndarray:
    """Which item each image of a split shows: the pool shuffled and cycled, so every item is used before repeats."""
    return _sparse_digits.assign_sources(pool, num_images, seed, split)


# ----------------------------------------------------------------------------------------------------- drawing
def item_size_draw(rng: np.random.Generator, config: VariedItemsConfig) -> int:
    """A log-uniform item side in `[min_item_size, max_item_size]` (rounded to whole pixels)."""
    low, high = math.log(config.min_item_size), math.log(config.max_item_size + 0.5)
    return int(min(config.max_item_size, max(config.min_item_size, round(math.exp(rng.uniform(low, high))))))


def clutter_color(rng: np.random.Generator, low: float = 0.15) -> np.ndarray:
    """A clearly coloured, never near-white colour: one random channel at most 0.5."""
    color = rng.uniform(low, 1.0, size=3)
    color[rng.integers(3)] = rng.uniform(low / 2, 0.5)
    return color.astype(np.float32)


def item_tint(rng: np.random.Generator) -> np.ndarray:
    """The item's light tint: every channel 0.75-1 (near-white with a hint of colour)."""
    return rng.uniform(0.75, 1.0, size=3).astype(np.float32)


def clutter_paint(rng: np.random.Generator, config: VariedItemsConfig, low: float = 0.15) -> np.ndarray:
    """A clutter colour: item-like light with probability `config.light_clutter`, else `clutter_color`. With
    `light_clutter` 0 it draws nothing extra from `rng` (the same images as before the option existed)."""
    if config.light_clutter > 0 and rng.random() < config.light_clutter:
        return item_tint(rng)
    return clutter_color(rng, low)


def dark_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dark smooth colour gradient (random 3x3 grid, bilinear) with sparse speckles, float `(size, size, 3)`."""
    coarse = rng.integers(0, 90, size=(3, 3, 3), dtype=np.uint8)
    canvas = np.asarray(Image.fromarray(coarse, mode="RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
    canvas /= 255.0
    num_speckles = int(rng.integers(200, 600) * (size / 448) ** 2) + 1
    ys, xs = rng.integers(0, size, num_speckles), rng.integers(0, size, num_speckles)
    canvas[ys, xs] = rng.uniform(0.2, 0.9, size=(num_speckles, 1)).astype(np.float32)
    return canvas


def random_fragment(rng: np.random.Generator) -> np.ndarray:
    """A blocky random-walk stroke on an 8x8 grid (3-6 cells, soft edges): paint, not an item."""
    grid = np.zeros((8, 8), dtype=np.float32)
    y, x = int(rng.integers(1, 7)), int(rng.integers(1, 7))
    for _ in range(int(rng.integers(3, 7))):
        grid[y, x] = rng.uniform(0.7, 1.0)
        dy, dx = [(0, 1), (1, 0), (0, -1), (-1, 0), (1, 1)][int(rng.integers(5))]
        y, x = int(np.clip(y + dy, 0, 7)), int(np.clip(x + dx, 0, 7))
    soft = grid.copy()
    soft[1:] = np.maximum(soft[1:], 0.3 * grid[:-1])
    soft[:, 1:] = np.maximum(soft[:, 1:], 0.3 * grid[:, :-1])
    return soft


def boxes_overlap(box_a, box_b, margin: int = 0) -> bool:
    """Whether two `[x0, y0, x1, y1]` boxes (exclusive ends) overlap, or come closer than `margin` px."""
    return not (
        box_a[2] + margin <= box_b[0]
        or box_b[2] + margin <= box_a[0]
        or box_a[3] + margin <= box_b[1]
        or box_b[3] + margin <= box_a[1]
    )


def blend(canvas: np.ndarray, alpha: np.ndarray, color: np.ndarray, x: int, y: int) -> None:
    """Alpha-blend `color` (a colour `(3,)` or an image `(h, w, 3)`) with mask `alpha (h, w)` into `canvas` at x, y."""
    h, w = alpha.shape
    region = canvas[y : y + h, x : x + w]
    color = color if color.ndim == 3 else color[None, None, :]
    region[:] = region * (1.0 - alpha[..., None]) + color * alpha[..., None]


def render_sample(item: np.ndarray, rng: np.random.Generator, config: VariedItemsConfig) -> tuple[np.ndarray, dict]:
    """Draw one Varied Items image.

    Args:
        item (`np.ndarray` of shape `(h, w)`): the item photo, values in [0, 1] (0 = the photo's black background).
        rng (`np.random.Generator`): the image's own generator.
        config ([`VariedItemsConfig`]).

    Returns:
        `(image, info)`: `image` uint8 `(canvas, canvas, 3)`; `info` with `box` (tight box of the item's pixels with
        alpha > 0.1, `[x0, y0, x1, y1]`, exclusive ends), `placed_box` (the `item_size` square), `item_size`, `tint`.
    """
    size = config.canvas_size
    canvas = dark_background(rng, size)
    item_size = item_size_draw(rng, config)
    dx, dy = int(rng.integers(0, size - item_size + 1)), int(rng.integers(0, size - item_size + 1))
    placed_box = (dx, dy, dx + item_size, dy + item_size)
    intensity = scale_item(item, item_size)

    # clutter never covers the item's square: blobs and fragments
    scale = size / 448
    occupied = [placed_box]
    layer = Image.fromarray((canvas * 255.0).round().astype(np.uint8))
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(*config.num_blobs))):
        for _attempt in range(20):
            rx, ry = (max(2, int(rng.integers(8, 36) * scale)) for _ in range(2))
            cx, cy = int(rng.integers(rx, size - rx)), int(rng.integers(ry, size - ry))
            box = (cx - rx, cy - ry, cx + rx, cy + ry)
            if not any(boxes_overlap(box, other, 4) for other in occupied):
                draw.ellipse(box, fill=tuple(round(float(c) * 255) for c in clutter_paint(rng, config)))
                occupied.append(box)
                break
    # lines may cross the item's square: the item is drawn over them
    for _ in range(int(rng.integers(*config.num_lines))):
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        length, angle = rng.uniform(30, 220) * scale, rng.uniform(0, 2 * np.pi)
        x1, y1 = int(x0 + length * np.cos(angle)), int(y0 + length * np.sin(angle))
        color = tuple(round(float(c) * 255) for c in clutter_paint(rng, config))
        draw.line((x0, y0, x1, y1), fill=color, width=max(1, int(rng.integers(2, 7) * scale)))
    canvas = np.asarray(layer, dtype=np.float32) / 255.0
    for _ in range(int(rng.integers(*config.num_fragments))):
        frag_size = item_size_draw(rng, config)
        for _attempt in range(20):
            fx, fy = int(rng.integers(0, size - frag_size + 1)), int(rng.integers(0, size - frag_size + 1))
            box = (fx, fy, fx + frag_size, fy + frag_size)
            if not boxes_overlap(box, placed_box, 4):
                blend(canvas, scale_item(random_fragment(rng), frag_size), clutter_paint(rng, config, 0.5), fx, fy)
                break

    tint = item_tint(rng)
    alpha = np.minimum(1.0, intensity * config.alpha_gain)
    color = tint[None, None, :] * (0.35 + 0.65 * intensity[..., None])
    blend(canvas, alpha, color, dx, dy)
    x0, y0, x1, y1 = ink_box(alpha)
    image = (np.clip(canvas, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    info = {
        "box": [dx + x0, dy + y0, dx + x1, dy + y1],
        "placed_box": list(placed_box),
        "item_size": item_size,
        "tint": [round(float(c), 6) for c in tint],
    }
    return image, info


def split_size(config: VariedItemsConfig, split: str) -> int:
    return {"train": config.num_train, "validation": config.num_validation, "test": config.num_test}[split]


def make_sample(split: str, index: int, part: str, source_index: int, config: VariedItemsConfig, source: ItemSource):
    """Render image `index` of `split` (showing item `source_index` of the source's `part`):
    `(file_name, image, annotation)`."""
    image, info = render_sample(source.images[part][source_index], sample_rng(config.seed, split, index), config)
    label = int(source.labels[part][source_index])
    class_name = source.class_names[label]
    file_name = f"{split}/{class_name}/{split}_{index:05d}.png"
    row = {
        "split": split,
        "file_name": file_name,
        "label": label,
        "class_name": class_name,
        "source_split": part,
        "source_index": int(source_index),
        "size_bin": size_bin(info["item_size"], config.size_bin_edges()),
        **info,
    }
    return file_name, image, row


def split_tasks(config: VariedItemsConfig, pools: dict) -> list[tuple[str, int, str, int]]:
    """`(split, index, source part, source index)` of every image, in order."""
    tasks = []
    for split in SPLITS:
        part, pool = pools[split]
        for index, source_index in enumerate(assign_items(pool, split_size(config, split), config.seed, split)):
            tasks.append((split, index, part, int(source_index)))
    return tasks


_WORKER = {}


def _init_worker(output_dir, config, source=None):
    _WORKER.update(output_dir=output_dir, config=config, source=source if source is not None else load_items(config))


def _write_one(task):
    split, index, part, source_index = task
    file_name, image, row = make_sample(split, index, part, source_index, _WORKER["config"], _WORKER["source"])
    path = os.path.join(_WORKER["output_dir"], file_name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # PNG level 1: ~3x faster to write than the default for larger files; the pixels are the same.
    Image.fromarray(image).save(path, format="PNG", compress_level=1)
    return row


def write_dataset(
    output_dir: str, config: VariedItemsConfig, overwrite: bool = False, progress: bool = True, num_workers: int = 1
) -> dict:
    """Generate all splits into `output_dir` (with `num_workers` processes; the same files for any number).

    Returns the `dataset_info.json` contents."""
    config.validate()
    if num_workers < 1:
        raise ValueError(f"--num_workers must be >= 1, got {num_workers}.")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise FileExistsError(
            f"{output_dir} exists and is not empty; pass --overwrite to replace it or choose another --output_dir."
        )
    source = load_items(config)
    pools = item_pools(source, config)
    tasks = split_tasks(config, pools)
    os.makedirs(output_dir, exist_ok=True)
    if num_workers == 1:
        _init_worker(output_dir, config, source)
        rows = map(_write_one, tasks)
        executor = None
    else:  # fork shares the loaded items with the workers; spawn (macOS) loads them in each worker
        fork = sys.platform != "darwin"
        executor = get_context("fork" if fork else "spawn").Pool(
            num_workers, initializer=_init_worker, initargs=(output_dir, config, source if fork else None)
        )
        rows = executor.imap(_write_one, tasks, chunksize=16)
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, total=len(tasks), desc="Varied Items images", unit="img", mininterval=2)
    num_classes = len(source.class_names)
    counts = {split: np.zeros(num_classes, dtype=int) for split in SPLITS}
    bins = {split: dict.fromkeys(SIZE_BINS, 0) for split in SPLITS}
    try:
        with open(os.path.join(output_dir, "annotations.jsonl"), "w", encoding="utf-8") as annotations:
            for row in rows:
                annotations.write(json.dumps(row) + "\n")
                counts[row["split"]][row["label"]] += 1
                bins[row["split"]][row["size_bin"]] += 1
    finally:
        if executor is not None:
            executor.close()
            executor.join()
    edges = config.size_bin_edges()
    info = {
        "config": asdict(config),
        "source": source.description,
        "class_names": list(source.class_names),
        "size_bins": {
            "names": list(SIZE_BINS),
            "edges_px": [round(e, 4) for e in edges],
            "rule": "small: item_size < edges_px[0]; medium: edges_px[0] <= item_size < edges_px[1]; large: the rest",
        },
        "item_pools": {
            split: {"source_split": part, "indices": pool.tolist()} for split, (part, pool) in pools.items()
        },
        "counts_per_label": {name: c.tolist() for name, c in counts.items()},
        "counts_per_size_bin": bins,
    }
    with open(os.path.join(output_dir, "dataset_info.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    return info


def parse_args(argv=None) -> tuple[str, VariedItemsConfig, bool, int]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--output_dir", required=True, help="Where the imagefolder is written.")
    # the scalar settings of VariedItemsConfig are flags, with the config's defaults (the tuples stay fixed)
    flags = [f for f in fields(VariedItemsConfig) if isinstance(f.default, (int, float, str))]
    for f in flags:
        kind = type(f.default)
        help_text = f.metadata.get("help", "") + f" (default: {f.default})"
        if f.name == "items":
            parser.add_argument(f"--{f.name}", choices=ITEM_SOURCES, default=f.default, help=help_text)
        else:
            parser.add_argument(f"--{f.name}", type=kind, default=f.default, help=help_text)
    parser.add_argument("--num_workers", type=int, default=2, help="Processes that render/write images.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing, non-empty --output_dir.")
    args = parser.parse_args(argv)
    config = VariedItemsConfig(**{f.name: getattr(args, f.name) for f in flags})
    return args.output_dir, config, args.overwrite, args.num_workers


def main(argv=None) -> int:
    output_dir, config, overwrite, num_workers = parse_args(argv)
    try:
        info = write_dataset(output_dir, config, overwrite=overwrite, num_workers=num_workers)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = sum(sum(c) for c in info["counts_per_label"].values())
    print(
        f"Wrote {total} images ({', '.join(f'{k}: {sum(v)}' for k, v in info['counts_per_label'].items())}) "
        f"of {config.canvas_size}x{config.canvas_size} px with {config.items} items of "
        f"{config.min_item_size}-{config.max_item_size} px to {output_dir}"
    )
    edges = info["size_bins"]["edges_px"]
    print(
        f"Size bins (px): small < {edges[0]:.1f} <= medium < {edges[1]:.1f} <= large; per split: "
        + "; ".join(f"{split} {counts}" for split, counts in info["counts_per_size_bin"].items())
    )
    print(
        f"Item boxes (evaluation only): {os.path.join(output_dir, 'annotations.jsonl')}; settings: "
        f"{os.path.join(output_dir, 'dataset_info.json')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
