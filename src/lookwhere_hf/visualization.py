"""Pictures of where LookWhere looked: the selector heat map and the patches the extractor computed.

Used by `lookwhere-hf visualize`, `lookwhere-hf demo` and `lookwhere-hf app` (which also draws LookupViT's token
grids and Glance-and-Focus's crops here); needs matplotlib (`pip install -e ".[plots]"`).

```python
>>> from lookwhere_hf.visualization import save_selection_figure
>>> outputs = model(**processor(image, return_tensors="pt"))
>>> save_selection_figure(image, outputs.selector_map[0], outputs.selected_indices[0], grid=(37, 37), path="where.png")
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .models.lookwhere.configuration_lookwhere import to_pair

__all__ = [
    "SelectionPicture",
    "selection_figure_data",
    "save_selection_figure",
    "selection_image",
    "crop_steps_image",
    "compressed_grid_image",
    "PANEL_INCHES",
    "DPI",
]

PANEL_INCHES = 5.0
DPI = 100


@dataclass
class SelectionPicture:
    """The arrays a selection picture is drawn from.

    Attributes:
        image (`np.ndarray` of shape `(height, width, 3)`, uint8): the image at the model's input size.
        heat (`np.ndarray` of shape `(grid_h, grid_w)`, float): the selector map as probabilities (softmax over all
            patches), laid out on the patch grid.
        selected (`np.ndarray` of shape `(grid_h, grid_w)`, bool): patches the extractor computed.
        patch_size (`tuple[int, int]`): image pixels per grid cell `(height, width)`.
    """

    image: np.ndarray
    heat: np.ndarray
    selected: np.ndarray
    patch_size: tuple[int, int]


def _to_uint8_rgb(image) -> np.ndarray:
    """PIL image, `(H, W)` / `(H, W, 3|4)` array or `(3, H, W)` tensor -> `(H, W, 3)` uint8."""
    if hasattr(image, "convert"):  # PIL
        return np.asarray(image.convert("RGB"))
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"Expected an RGB image (H, W, 3), got an array of shape {array.shape}.")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    array = array[..., :3]
    if array.dtype != np.uint8:
        scale = 255.0 if array.max() <= 1.0 else 1.0
        array = np.clip(array * scale, 0, 255).astype(np.uint8)
    return array


def selection_figure_data(image, selector_map, selected_indices, grid: int | tuple[int, int]) -> SelectionPicture:
    """Put one image's selection on its patch grid.

    Args:
        image: the photo (PIL image, `(H, W[, C])` numpy array or `(C, H, W)` tensor) at any size; it is resized to
            `(grid_h * s, grid_w * s)` pixels, `s` (at most 32) the smallest cell size keeping its resolution.
        selector_map (`torch.Tensor` of shape `(grid_h * grid_w,)`): selector map logits of one image.
        selected_indices (`torch.LongTensor` of shape `(k,)`): row-major indices of the computed patches.
        grid (`int` or `tuple[int, int]`): `(grid_h, grid_w)`.

    Returns:
        [`SelectionPicture`].
    """
    grid_h, grid_w = to_pair(grid)
    scores = torch.as_tensor(selector_map).detach().float().reshape(-1).cpu()
    if scores.numel() != grid_h * grid_w:
        raise ValueError(f"`selector_map` has {scores.numel()} values, expected grid_h * grid_w = {grid_h * grid_w}.")
    indices = torch.as_tensor(selected_indices).detach().reshape(-1).long().cpu()
    if indices.numel() and (indices.min() < 0 or indices.max() >= grid_h * grid_w):
        raise ValueError(f"`selected_indices` must be in [0, {grid_h * grid_w}), got {indices.min()}..{indices.max()}.")
    heat = scores.softmax(0).reshape(grid_h, grid_w).numpy()
    selected = np.zeros(grid_h * grid_w, dtype=bool)
    selected[indices.numpy()] = True

    rgb = _to_uint8_rgb(image)
    cell = max(1, -(-rgb.shape[0] // grid_h), -(-rgb.shape[1] // grid_w))
    cell = min(cell, 32)
    resized = np.asarray(Image.fromarray(rgb).resize((grid_w * cell, grid_h * cell), Image.BICUBIC))
    return SelectionPicture(resized, heat, selected.reshape(grid_h, grid_w), (cell, cell))


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Selection pictures need matplotlib: pip install matplotlib (or lookwhere_hf[plots])"
        ) from err
    return plt


def _selection_figure(image, selector_map, selected_indices, grid, title: str | None = None):
    """The two-panel matplotlib figure of [`save_selection_figure`] (the caller closes it)."""
    plt = _pyplot()
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    picture = selection_figure_data(image, selector_map, selected_indices, grid)
    height, width = picture.image.shape[:2]
    cell_h, cell_w = picture.patch_size
    extent = (0, width, height, 0)

    fig, axes = plt.subplots(1, 2, figsize=(2 * PANEL_INCHES, PANEL_INCHES), dpi=DPI)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.88 if title else 0.93, wspace=0.04)
    heat_ax, chosen_ax = axes

    heat_ax.imshow(picture.image, extent=extent)
    heat_ax.imshow(picture.heat, cmap="inferno", alpha=0.6, extent=extent, interpolation="nearest")
    heat_ax.set_title("selector map (where to look)", fontsize=10)

    dimmed = (picture.image.astype(np.float32) * 0.25).astype(np.uint8)
    mask = np.kron(picture.selected, np.ones((cell_h, cell_w), dtype=bool))[:height, :width]
    shown = np.where(mask[..., None], picture.image, dimmed)
    chosen_ax.imshow(shown, extent=extent)
    rows, cols = np.nonzero(picture.selected)
    boxes = [Rectangle((c * cell_w, r * cell_h), cell_w, cell_h) for r, c in zip(rows, cols, strict=True)]
    chosen_ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor="#00e5ff", linewidth=0.6))
    k, total = int(picture.selected.sum()), picture.selected.size
    chosen_ax.set_title(f"patches computed: k = {k} of {total} ({100 * k / total:.0f}%)", fontsize=10)

    for ax in axes:
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _figure_to_image(fig) -> Image.Image:
    """Render a matplotlib figure to an RGB PIL image (at its own size and DPI) and close it."""
    plt = _pyplot()
    try:
        fig.canvas.draw()
        return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    finally:
        plt.close(fig)


def save_selection_figure(
    image,
    selector_map,
    selected_indices,
    grid: int | tuple[int, int],
    path: str | os.PathLike,
    title: str | None = None,
) -> tuple[int, int]:
    """Save a two-panel PNG: the selector heat map over the image (left) and the computed patches (right, the others
    dimmed, the chosen ones outlined).

    The PNG is `2 * PANEL_INCHES * DPI` pixels wide and `PANEL_INCHES * DPI` high (1000 x 500).

    Args:
        image, selector_map, selected_indices, grid: as in [`selection_figure_data`].
        path (`str` or `os.PathLike`): output file (`.png`); parent folders are created.
        title (`str`, *optional*): figure title.

    Returns:
        `(width, height)` of the saved picture in pixels.
    """
    fig = _selection_figure(image, selector_map, selected_indices, grid, title)
    plt = _pyplot()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return int(round(2 * PANEL_INCHES * DPI)), int(round(PANEL_INCHES * DPI))


def selection_image(
    image, selector_map, selected_indices, grid: int | tuple[int, int], title: str | None = None
) -> Image.Image:
    """The picture of [`save_selection_figure`] as an RGB PIL image (1000 x 500) instead of a file."""
    return _figure_to_image(_selection_figure(image, selector_map, selected_indices, grid, title))


def crop_steps_image(image, crop_boxes, glance_size: int | None = None, title: str | None = None) -> Image.Image:
    """Glance-and-Focus step by step, as an RGB PIL image: the glance (the whole image) and one panel per focus step
    with its crop outlined (earlier crops thin, this one thick); steps an image did not take (box `-1`, it exited
    earlier) are shown dimmed.

    Args:
        image: the model input (PIL image, `(H, W[, C])` array or `(C, H, W)` tensor) the boxes refer to.
        crop_boxes (`torch.LongTensor` or array of shape `(num_steps - 1, 4)`): pixel boxes `(x0, y0, x1, y1)`, x1 and
            y1 exclusive, as `GlanceFocusImageClassifierOutput.crop_boxes[i]`.
        glance_size (`int`, *optional*): the glance view's side, for the first panel's title.
        title (`str`, *optional*): figure title.

    Returns:
        `PIL.Image.Image`, `PANEL_INCHES * 0.6 * DPI` pixels per panel wide.
    """
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    rgb = _to_uint8_rgb(image)
    boxes = np.asarray(torch.as_tensor(crop_boxes).detach().cpu().reshape(-1, 4))
    height, width = rgb.shape[:2]
    panel = 0.6 * PANEL_INCHES
    fig, axes = plt.subplots(1, len(boxes) + 1, figsize=(panel * (len(boxes) + 1), panel + 0.5), dpi=DPI)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.82 if title else 0.9, wspace=0.04)
    axes = np.atleast_1d(axes)
    axes[0].imshow(rgb)
    glance = f" at {glance_size} px" if glance_size else ""
    axes[0].set_title(f"step 0: glance{glance}", fontsize=9)
    for step, ax in enumerate(axes[1:], start=1):
        taken = bool((boxes[step - 1] >= 0).all())
        ax.imshow(rgb if taken else (rgb.astype(np.float32) * 0.25).astype(np.uint8))
        for earlier in range(step if taken else 0):
            x0, y0, x1, y1 = boxes[earlier].tolist()
            last = earlier == step - 1
            color, linewidth = ("#00e5ff", 2.5) if last else ("#ffb000", 1.0)
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=color, lw=linewidth))
        ax.set_title(f"step {step}: focus crop" if taken else f"step {step}: not taken (exited)", fontsize=9)
    for ax in axes:
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return _figure_to_image(fig)


def compressed_grid_image(
    image, token_grid: int | tuple[int, int], compressed_grid: int | tuple[int, int], title: str | None = None
) -> Image.Image:
    """LookupViT's two token grids over the image, as an RGB PIL image (500 x 500): thin lines, the lookup (patch)
    tokens; thick lines, the compressed tokens the heavy layers run on (each one a bilinear summary of its cell).

    Args:
        image: the model input (PIL image, `(H, W[, C])` array or `(C, H, W)` tensor).
        token_grid (`int` or `(h, w)`): the patch grid (image size / patch size).
        compressed_grid (`int` or `(h, w)`): the compressed-token grid of the forward.
        title (`str`, *optional*): panel title.
    """
    plt = _pyplot()
    rgb = _to_uint8_rgb(image)
    height, width = rgb.shape[:2]
    fig, ax = plt.subplots(1, 1, figsize=(PANEL_INCHES, PANEL_INCHES), dpi=DPI)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.93)
    ax.imshow(rgb, extent=(0, width, height, 0))
    for (rows, cols), color, linewidth in (
        (to_pair(token_grid), "white", 0.3),
        (to_pair(compressed_grid), "#00e5ff", 2),
    ):
        for r in range(1, rows):
            ax.axhline(r * height / rows, color=color, lw=linewidth)
        for c in range(1, cols):
            ax.axvline(c * width / cols, color=color, lw=linewidth)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "", fontsize=10)
    return _figure_to_image(fig)
