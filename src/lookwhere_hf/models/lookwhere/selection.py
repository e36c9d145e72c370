"""Where to look: the low-resolution view, the selector map layout and top-k patch selection.

These are the pieces of LookWhere that decide *which* high-resolution patches the extractor computes. They are
plain functions so that the model, the image processor and the pretraining losses all use the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def make_low_res_view(pixel_values: torch.Tensor, size: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """Resize the (already normalized) high-resolution input to the selector's resolution.

    The official PyTorch inference uses a plain bilinear resize (`align_corners=False`, no antialiasing); the JAX
    pretraining resized with antialiasing (`antialias=True`).

    Args:
        pixel_values (`torch.Tensor` of shape `(batch_size, channels, height, width)`): the high-resolution input.
        size (`tuple[int, int]`): `(low_res_height, low_res_width)`.
        antialias (`bool`): antialiased bilinear resize when downsampling.

    Returns:
        `torch.Tensor` of shape `(batch_size, channels, low_res_height, low_res_width)`.
    """
    if tuple(pixel_values.shape[-2:]) == tuple(size):
        return pixel_values
    return F.interpolate(pixel_values, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias)


def selector_scores_to_map(scores: torch.Tensor, low_res_grid: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Lay the selector head's per-patch scores out as a high-resolution map and resize it to the input grid.

    Low-resolution patch `(h, w)` predicts `r * r` scores; its sub-position `(i, j)` lands on pixel
    `(h * r + i, w * r + j)` of a `(low_h * r, low_w * r)` map, which is bilinearly resized
    (`align_corners=False`) to the high-resolution patch grid and flattened row-major.

    Args:
        scores (`torch.Tensor` of shape `(batch_size, low_h * low_w, r * r)`): the selector head outputs.
        low_res_grid (`tuple[int, int]`): `(low_h, low_w)`, the selector's patch grid.
        grid (`tuple[int, int]`): `(grid_h, grid_w)`, the high-resolution patch grid.

    Returns:
        `torch.Tensor` of shape `(batch_size, grid_h * grid_w)`: the selector map logits.
    """
    batch_size, num_low, rr = scores.shape
    low_h, low_w = low_res_grid
    r = int(round(rr**0.5))
    if r * r != rr or num_low != low_h * low_w:
        raise ValueError(f"Selector scores of shape {tuple(scores.shape)} do not fit a {low_h}x{low_w} grid.")
    fine = (
        scores.reshape(batch_size, low_h, low_w, r, r)
        .permute(0, 1, 3, 2, 4)
        .reshape(batch_size, 1, low_h * r, low_w * r)
    )
    if (low_h * r, low_w * r) != tuple(grid):
        fine = F.interpolate(fine.float(), size=tuple(grid), mode="bilinear", align_corners=False).to(scores.dtype)
    return fine.reshape(batch_size, grid[0] * grid[1])


def select_top_k(selector_map: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the `k` highest-scoring positions of each selector map, sorted by descending score.

    Args:
        selector_map (`torch.Tensor` of shape `(batch_size, num_patches)`).
        k (`int`): number of positions to keep, `1 <= k <= num_patches`.

    Returns:
        `torch.LongTensor` of shape `(batch_size, k)`: row-major patch indices.
    """
    return torch.topk(selector_map.detach(), k, dim=1, largest=True, sorted=True).indices


def gather_tokens(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """`tokens[b, indices[b, i]]` for every batch row: `(B, N, D)` and `(B, k)` -> `(B, k, D)`."""
    return torch.gather(tokens, 1, indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
