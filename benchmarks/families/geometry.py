"""Where a model looked, against the item's box: patch and crop hits, and their exact chance levels.

Boxes are `[x0, y0, x1, y1]` in pixels with exclusive ends. Used by the families harness and by
`benchmarks/sparse_digits/evaluate_sparse_digits.py` / `benchmarks/varied_items/probe_teacher.py`.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def patch_overlaps(box: np.ndarray, grid: int, patch: int) -> np.ndarray:
    """Intersection area (pixels) of a box `[x0, y0, x1, y1]` with every patch of a `grid x grid` map, `(grid * grid,)`
    row-major."""
    edges = np.arange(grid + 1) * patch
    ox = np.clip(np.minimum(edges[1:], box[2]) - np.maximum(edges[:-1], box[0]), 0, None)
    oy = np.clip(np.minimum(edges[1:], box[3]) - np.maximum(edges[:-1], box[1]), 0, None)
    return (oy[:, None] * ox[None, :]).reshape(-1).astype(np.float64)


def selection_hits(indices: np.ndarray, overlaps: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: `hit` (a selected patch overlaps the box), `coverage` (share of box area under selected patches),
    `full` (every overlapping patch is selected). `indices (B, k)`, `overlaps (B, N)`."""
    selected = np.take_along_axis(overlaps, indices, axis=1)
    touching = (overlaps > 0).sum(axis=1)
    return {
        "hit": (selected > 0).any(axis=1),
        "coverage": selected.sum(axis=1) / overlaps.sum(axis=1),
        "full": (selected > 0).sum(axis=1) == touching,
    }


def random_hit_probability(num_patches: int, num_touching: int, k: int) -> float:
    """P(at least one of k distinct random patches is among `num_touching`) = 1 - C(N - m, k) / C(N, k)."""
    if k > num_patches - num_touching:
        return 1.0
    return 1.0 - math.comb(num_patches - num_touching, k) / math.comb(num_patches, k)


def crop_hits(crops: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: does a focus crop overlap the box, does one contain it whole? `crops (N, S, 4)` pixel boxes
    (`-1`: step not taken), `boxes (N, 4)`."""
    box = boxes[:, None, :]
    taken = crops[..., 0] >= 0
    overlap = (torch.minimum(crops[..., 2], box[..., 2]) > torch.maximum(crops[..., 0], box[..., 0])) & (
        torch.minimum(crops[..., 3], box[..., 3]) > torch.maximum(crops[..., 1], box[..., 1])
    )
    contain = (crops[..., 0] <= box[..., 0]) & (crops[..., 1] <= box[..., 1])
    contain &= (crops[..., 2] >= box[..., 2]) & (crops[..., 3] >= box[..., 3])
    return (overlap & taken).any(dim=1), (contain & taken).any(dim=1)


def crop_corner_positions(crop: int, side: int) -> int:
    """How many top-left corners a uniform Glance-and-Focus crop can take per axis: the corner is
    `floor(a * (side - crop))` with `a` uniform in [0, 1), so `0 .. side - crop - 1` (only 0 when the crop fills
    the side)."""
    return max(1, side - crop)


def _corners_overlapping(low: float, high: float, crop: int, side: int) -> int:
    """Crop corners `c` (`crop_corner_positions`) whose span `[c, c + crop)` overlaps `[low, high)`:
    `low - crop < c < high`."""
    first = max(0, math.floor(low - crop) + 1)
    last = min(crop_corner_positions(crop, side) - 1, math.ceil(high) - 1)
    return max(0, last - first + 1)


def random_crop_hit_probability(box, crop: int, side: int, num_crops: int) -> float:
    """Exact chance that at least one of `num_crops` random `crop x crop` crops of a square `side`-pixel image
    overlaps `box` (processed pixels), each crop's corner uniform over `crop_corner_positions` per axis,
    independently: Glance-and-Focus's crops (corner `floor(a * (side - crop))`) with a uniform policy."""
    if not 0 < crop <= side:
        raise ValueError(f"The crop ({crop} px) must fit in the image ({side} px).")
    positions = crop_corner_positions(crop, side)
    x0, y0, x1, y1 = (float(v) for v in box)
    single = (_corners_overlapping(x0, x1, crop, side) / positions) * (
        _corners_overlapping(y0, y1, crop, side) / positions
    )
    return 1.0 - (1.0 - single) ** num_crops


def processed_boxes(processor, boxes: torch.Tensor, canvas: int) -> torch.Tensor:
    """Boxes `(N, 4)` of square `canvas`-pixel images in the pixels of the processor's output: scaled by its resize
    (`shortest_edge` or `height`), then shifted by its centre crop (`crop_size`) when it crops."""
    size = processor.size
    resized = (size.shortest_edge or size.height) if processor.do_resize else canvas
    final = processor.crop_size.height if processor.do_center_crop else resized
    return boxes * (resized / canvas) - (resized - final) / 2
