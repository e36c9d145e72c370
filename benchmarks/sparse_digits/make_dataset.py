#!/usr/bin/env python
"""Generate *Sparse Digits*: one real handwritten digit, small, somewhere on a large cluttered canvas.

A miniature of the LookWhere paper's Traffic Signs experiment: the label depends on a small region of a
high-resolution image, so a model that knows *where to look* can skip most of the image.

Source digits are scikit-learn's handwritten digits (`sklearn.datasets.load_digits`: 1797 real 8x8 grayscale scans,
values 0..16, shipped with scikit-learn, no download). Each image:

- a dark background with a smooth random colour gradient and sparse speckles;
- distractor clutter in clearly coloured (never white) paint: random line strokes, filled blobs, and *fragments*
  (short blocky strokes rendered exactly like the digits, but not digits), never placed over the digit's box (lines
  may cross it, under the digit);
- one source digit upscaled (bicubic) to a random size (`--min_digit_size` .. `--max_digit_size` px) in near-white
  ink (the salient colour, like a traffic sign's), alpha-blended on top of everything at a random position;
- the label is the digit's class.

The source digits are split per class into disjoint train / validation / test pools, so no test digit was seen
in training (each pool is reused with new positions, sizes, colours and clutter).

Output (an `imagefolder` that `datasets.load_dataset("imagefolder", data_dir=...)` and the example scripts read)::

    OUTPUT_DIR/train/<label>/<index>.png
    OUTPUT_DIR/validation/<label>/<index>.png
    OUTPUT_DIR/test/<label>/<index>.png
    OUTPUT_DIR/annotations.jsonl    one row per image: split, file_name, label, source_index, digit_size,
                                    box = [x0, y0, x1, y1] (tight box of the digit's ink, pixels, x1/y1 exclusive),
                                    placed_box (the full square the digit was drawn into)
    OUTPUT_DIR/dataset_info.json    generation arguments and the source digits of each split

Generation is deterministic: every image has its own random generator seeded with `(seed, split, index)`, so the
same arguments give byte-identical files.

Example:

    python benchmarks/sparse_digits/make_dataset.py --output_dir data/sparse_digits --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from multiprocessing import get_context

import numpy as np
from PIL import Image, ImageDraw

SPLITS = ("train", "validation", "test")
SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
INK_THRESHOLD = 0.1  # alpha above which a digit pixel counts as ink (for the tight box)


@dataclass
class SparseDigitsConfig:
    """All generation parameters (stored in `dataset_info.json`)."""

    seed: int = 0
    canvas_size: int = 448
    min_digit_size: int = 40
    max_digit_size: int = 64
    num_train: int = 3000
    num_validation: int = 300
    num_test: int = 600
    align_to_grid: int = field(
        default=0,
        metadata={
            "help": "Draw each digit inside one cell of a grid with this cell size (e.g. the ViT patch size); "
            "0 = anywhere."
        },
    )
    source_fractions: tuple[float, float, float] = (0.6, 0.15, 0.25)
    num_lines: tuple[int, int] = (4, 9)
    num_blobs: tuple[int, int] = (2, 5)
    num_fragments: tuple[int, int] = (2, 5)

    def validate(self) -> None:
        if self.canvas_size < 32:
            raise ValueError(f"--canvas_size must be at least 32 px, got {self.canvas_size}.")
        if not 8 <= self.min_digit_size <= self.max_digit_size:
            raise ValueError(
                f"Need 8 <= --min_digit_size <= --max_digit_size, got {self.min_digit_size} and {self.max_digit_size}."
            )
        if self.align_to_grid and (self.canvas_size % self.align_to_grid or self.max_digit_size > self.align_to_grid):
            raise ValueError(
                f"--align_to_grid {self.align_to_grid} must divide --canvas_size ({self.canvas_size}) and be at least "
                f"--max_digit_size ({self.max_digit_size}): each digit is drawn inside one grid cell."
            )
        if self.max_digit_size > self.canvas_size // 2:
            raise ValueError(
                f"--max_digit_size ({self.max_digit_size}) must be at most half the canvas ({self.canvas_size // 2}) "
                "so that the task stays sparse; lower it or raise --canvas_size."
            )
        for name in ("num_train", "num_validation", "num_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be a positive number of images, got {getattr(self, name)}.")
        if len(self.source_fractions) != 3 or min(self.source_fractions) <= 0:
            raise ValueError(f"source_fractions must be three positive numbers, got {self.source_fractions}.")


# ----------------------------------------------------------------------------------------------------- sources
def load_source_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 real handwritten digits of scikit-learn: images `(N, 8, 8)` float32 in [0, 1], labels `(N,)`."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Sparse Digits needs scikit-learn for its source digits: pip install scikit-learn "
            "(or pip install -e '.[test]')."
        ) from err
    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def split_sources(labels: np.ndarray, seed: int, fractions=(0.6, 0.15, 0.25)) -> dict[str, np.ndarray]:
    """Disjoint source-digit pools per split, stratified by class: `{split: sorted indices into the source set}`."""
    rng = np.random.default_rng([seed, 1_000_003])
    fractions = np.asarray(fractions, dtype=np.float64) / np.sum(fractions)
    pools = {name: [] for name in SPLITS}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = max(1, int(round(fractions[1] * len(members))))  # noqa: RUF046 (numpy float)
        n_test = max(1, int(round(fractions[2] * len(members))))  # noqa: RUF046
        pools["validation"].extend(members[:n_val])
        pools["test"].extend(members[n_val : n_val + n_test])
        pools["train"].extend(members[n_val + n_test :])
    return {name: np.sort(np.asarray(idx, dtype=np.int64)) for name, idx in pools.items()}


def assign_sources(pool: np.ndarray, num_images: int, seed: int, split: str) -> np.ndarray:
    """Which source digit each image of a split shows: the pool shuffled and cycled, so every digit is used."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], 2_000_003])
    reps = -(-num_images // len(pool))
    return np.concatenate([rng.permutation(pool) for _ in range(reps)])[:num_images]


# ----------------------------------------------------------------------------------------------------- drawing
def scale_digit(digit: np.ndarray, size: int) -> np.ndarray:
    """Upscale an 8x8 digit in [0, 1] to `size x size` (bicubic, clipped to [0, 1]): the ink alpha mask."""
    scaled = Image.fromarray(digit.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC)
    return np.clip(np.asarray(scaled, dtype=np.float32), 0.0, 1.0)


def ink_box(alpha: np.ndarray, threshold: float = INK_THRESHOLD) -> tuple[int, int, int, int]:
    """Tight `(x0, y0, x1, y1)` box (x1, y1 exclusive) of the pixels with `alpha > threshold`."""
    ys, xs = np.nonzero(alpha > threshold)
    if len(xs) == 0:
        raise ValueError("The digit has no ink above the threshold.")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _ink_color(rng: np.random.Generator) -> np.ndarray:
    """The digit's ink: near-white (every channel 0.85-1), the salient colour of the sign, as on a traffic sign."""
    return rng.uniform(0.85, 1.0, size=3).astype(np.float32)


def _clutter_color(rng: np.random.Generator, low: float = 0.15) -> np.ndarray:
    """A clearly coloured (never near-white) colour: one channel at most 0.5."""
    color = rng.uniform(low, 1.0, size=3)
    color[rng.integers(3)] = rng.uniform(low / 2, 0.5)
    return color.astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Dark smooth colour gradient (a random 3x3 grid bilinearly upsampled) with sparse speckles, `(size, size, 3)`."""
    coarse = rng.integers(0, 90, size=(3, 3, 3), dtype=np.uint8)
    canvas = np.asarray(Image.fromarray(coarse, mode="RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
    canvas /= 255.0
    num_speckles = int(rng.integers(200, 600))
    ys, xs = rng.integers(0, size, num_speckles), rng.integers(0, size, num_speckles)
    canvas[ys, xs] = rng.uniform(0.2, 0.9, size=(num_speckles, 1)).astype(np.float32)
    return canvas


def _fragment(rng: np.random.Generator) -> np.ndarray:
    """A non-digit stroke on an 8x8 grid: a short random walk of 3-6 cells, with digit-like intensities."""
    grid = np.zeros((8, 8), dtype=np.float32)
    y, x = int(rng.integers(1, 7)), int(rng.integers(1, 7))
    for _ in range(int(rng.integers(3, 7))):
        grid[y, x] = rng.uniform(0.7, 1.0)
        dy, dx = [(0, 1), (1, 0), (0, -1), (-1, 0), (1, 1)][int(rng.integers(5))]
        y, x = int(np.clip(y + dy, 0, 7)), int(np.clip(x + dx, 0, 7))
    # soft edges like the scanned digits
    soft = grid.copy()
    soft[1:] = np.maximum(soft[1:], 0.3 * grid[:-1])
    soft[:, 1:] = np.maximum(soft[:, 1:], 0.3 * grid[:, :-1])
    return soft


def _overlaps(box_a, box_b, margin: int = 0) -> bool:
    return not (
        box_a[2] + margin <= box_b[0]
        or box_b[2] + margin <= box_a[0]
        or box_a[3] + margin <= box_b[1]
        or box_b[3] + margin <= box_a[1]
    )


def _blend(canvas: np.ndarray, alpha: np.ndarray, color: np.ndarray, x: int, y: int) -> None:
    h, w = alpha.shape
    region = canvas[y : y + h, x : x + w]
    region[:] = region * (1.0 - alpha[..., None]) + color[None, None, :] * alpha[..., None]


def render_sample(digit: np.ndarray, rng: np.random.Generator, config: SparseDigitsConfig) -> tuple[np.ndarray, dict]:
    """Draw one Sparse Digits image.

    Args:
        digit (`np.ndarray` of shape `(8, 8)`): the source digit, values in [0, 1].
        rng (`np.random.Generator`): the image's own generator.
        config ([`SparseDigitsConfig`]).

    Returns:
        `(image, info)`: `image` uint8 `(canvas, canvas, 3)`; `info` with `box` (tight ink box, `[x0, y0, x1, y1]`,
        exclusive ends), `placed_box` (the `digit_size` square the digit was drawn into), `digit_size`, `ink_color`.
    """
    size = config.canvas_size
    canvas = _background(rng, size)
    digit_size = int(rng.integers(config.min_digit_size, config.max_digit_size + 1))
    if config.align_to_grid:  # inside one random cell of the grid (a ViT patch when the grid is the patch size)
        cell, cells = config.align_to_grid, size // config.align_to_grid
        jitter = cell - digit_size
        dx = int(rng.integers(0, cells)) * cell + int(rng.integers(0, jitter + 1))
        dy = int(rng.integers(0, cells)) * cell + int(rng.integers(0, jitter + 1))
    else:
        dx, dy = int(rng.integers(0, size - digit_size + 1)), int(rng.integers(0, size - digit_size + 1))
    placed_box = (dx, dy, dx + digit_size, dy + digit_size)
    alpha = scale_digit(digit, digit_size)

    # clutter that never covers the digit's square: blobs and digit-like fragments
    occupied = [placed_box]
    layer = Image.fromarray((canvas * 255.0).round().astype(np.uint8))
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(*config.num_blobs))):
        for _attempt in range(20):
            rx, ry = int(rng.integers(8, 36)), int(rng.integers(8, 36))
            cx, cy = int(rng.integers(rx, size - rx)), int(rng.integers(ry, size - ry))
            box = (cx - rx, cy - ry, cx + rx, cy + ry)
            if not any(_overlaps(box, other, 4) for other in occupied):
                color = tuple(int(round(c * 255)) for c in _clutter_color(rng))  # noqa: RUF046
                draw.ellipse(box, fill=color)
                occupied.append(box)
                break
    # lines may cross the digit's square: the digit is drawn over them
    for _ in range(int(rng.integers(*config.num_lines))):
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        length, angle = rng.uniform(30, 220), rng.uniform(0, 2 * np.pi)
        x1, y1 = int(x0 + length * np.cos(angle)), int(y0 + length * np.sin(angle))
        color = tuple(int(round(c * 255)) for c in _clutter_color(rng))  # noqa: RUF046
        draw.line((x0, y0, x1, y1), fill=color, width=int(rng.integers(2, 7)))
    canvas = np.asarray(layer, dtype=np.float32) / 255.0

    for _ in range(int(rng.integers(*config.num_fragments))):
        frag_size = int(rng.integers(config.min_digit_size, config.max_digit_size + 1))
        for _attempt in range(20):
            fx, fy = int(rng.integers(0, size - frag_size + 1)), int(rng.integers(0, size - frag_size + 1))
            box = (fx, fy, fx + frag_size, fy + frag_size)
            if not _overlaps(box, placed_box, 4):
                _blend(canvas, scale_digit(_fragment(rng), frag_size), _clutter_color(rng, 0.5), fx, fy)
                break

    ink_color = _ink_color(rng)
    _blend(canvas, alpha, ink_color, dx, dy)
    x0, y0, x1, y1 = ink_box(alpha)
    image = (np.clip(canvas, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    info = {
        "box": [dx + x0, dy + y0, dx + x1, dy + y1],
        "placed_box": list(placed_box),
        "digit_size": digit_size,
        "ink_color": [round(float(c), 6) for c in ink_color],
    }
    return image, info


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image `index` of `split` (independent of how many images are generated)."""
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


def split_size(config: SparseDigitsConfig, split: str) -> int:
    return {"train": config.num_train, "validation": config.num_validation, "test": config.num_test}[split]


def make_sample(split: str, index: int, source: int, config: SparseDigitsConfig, images, labels):
    """Render image `index` of `split` (showing source digit `source`): `(file_name, image, annotation)`."""
    image, info = render_sample(images[source], sample_rng(config.seed, split, index), config)
    label = int(labels[source])
    file_name = f"{split}/{label}/{split}_{index:05d}.png"
    row = {"split": split, "file_name": file_name, "label": label, "source_index": int(source), **info}
    return file_name, image, row


def generate_split(split: str, config: SparseDigitsConfig, images: np.ndarray, labels: np.ndarray, pool: np.ndarray):
    """Yield `(file_name, image, annotation)` for every image of a split, in order."""
    sources = assign_sources(pool, split_size(config, split), config.seed, split)
    for index, source in enumerate(sources):
        yield make_sample(split, index, int(source), config, images, labels)


_WORKER = {}


def _init_worker(output_dir, config):
    _WORKER.update(output_dir=output_dir, config=config, sources=load_source_digits())


def _write_one(task):
    split, index, source = task
    images, labels = _WORKER["sources"]
    file_name, image, row = make_sample(split, index, source, _WORKER["config"], images, labels)
    path = os.path.join(_WORKER["output_dir"], file_name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # PNG level 1: ~3x faster to write than the default for ~40% larger files; the pixels are the same.
    Image.fromarray(image).save(path, format="PNG", compress_level=1)
    return row


def write_dataset(
    output_dir: str, config: SparseDigitsConfig, overwrite: bool = False, progress: bool = True, num_workers: int = 1
) -> dict:
    """Generate all splits into `output_dir` (with `num_workers` processes; same files for any number).

    Returns the `dataset_info.json` contents.
    """
    config.validate()
    if num_workers < 1:
        raise ValueError(f"--num_workers must be >= 1, got {num_workers}.")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise FileExistsError(
            f"{output_dir} exists and is not empty; pass --overwrite to replace it or choose another --output_dir."
        )
    _, labels = load_source_digits()
    pools = split_sources(labels, config.seed, config.source_fractions)
    tasks = [
        (split, index, int(source))
        for split in SPLITS
        for index, source in enumerate(assign_sources(pools[split], split_size(config, split), config.seed, split))
    ]
    os.makedirs(output_dir, exist_ok=True)
    if num_workers == 1:
        _init_worker(output_dir, config)
        rows = map(_write_one, tasks)
        executor = None
    else:
        executor = get_context("spawn" if sys.platform == "darwin" else "fork").Pool(
            num_workers, initializer=_init_worker, initargs=(output_dir, config)
        )
        rows = executor.imap(_write_one, tasks, chunksize=16)
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, total=len(tasks), desc="Sparse Digits images", unit="img", mininterval=2)
    counts = {split: np.zeros(10, dtype=int) for split in SPLITS}
    try:
        with open(os.path.join(output_dir, "annotations.jsonl"), "w", encoding="utf-8") as annotations:
            for row in rows:
                annotations.write(json.dumps(row) + "\n")
                counts[row["split"]][row["label"]] += 1
    finally:
        if executor is not None:
            executor.close()
            executor.join()
    info = {
        "config": asdict(config),
        "source": "sklearn.datasets.load_digits (1797 real 8x8 handwritten digits)",
        "source_indices": {name: pool.tolist() for name, pool in pools.items()},
        "counts_per_label": {name: c.tolist() for name, c in counts.items()},
    }
    with open(os.path.join(output_dir, "dataset_info.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    return info


def read_annotations(data_dir: str, split: str | None = None) -> dict[str, dict]:
    """`{file_name: annotation}` from `annotations.jsonl` (optionally one split only)."""
    path = os.path.join(data_dir, "annotations.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No annotations.jsonl in {data_dir}; generate the data with make_dataset.py first.")
    rows = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if split is None or row["split"] == split:
                rows[row["file_name"]] = row
    return rows


def parse_args(argv=None) -> tuple[str, SparseDigitsConfig, bool, int]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--output_dir", required=True, help="Where the imagefolder is written.")
    # the integer settings of SparseDigitsConfig are flags, with the config's defaults (the tuples stay fixed)
    flags = [f for f in fields(SparseDigitsConfig) if isinstance(f.default, int)]
    for f in flags:
        parser.add_argument(f"--{f.name}", type=int, default=f.default, help=f.metadata.get("help"))
    parser.add_argument("--num_workers", type=int, default=2, help="Processes that render/write images.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing, non-empty --output_dir.")
    args = parser.parse_args(argv)
    config = SparseDigitsConfig(**{f.name: getattr(args, f.name) for f in flags})
    return args.output_dir, config, args.overwrite, args.num_workers


def main(argv=None) -> int:
    output_dir, config, overwrite, num_workers = parse_args(argv)
    try:
        info = write_dataset(output_dir, config, overwrite=overwrite, num_workers=num_workers)
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = sum(sum(c) for c in info["counts_per_label"].values())
    print(
        f"Wrote {total} images ({', '.join(f'{k}: {sum(v)}' for k, v in info['counts_per_label'].items())}) "
        f"of {config.canvas_size}x{config.canvas_size} px to {output_dir}"
    )
    print(
        f"Digit boxes: {os.path.join(output_dir, 'annotations.jsonl')}; settings: "
        f"{os.path.join(output_dir, 'dataset_info.json')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
