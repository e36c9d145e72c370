"""Shape checks of LookWhere's inputs, shared by all its model classes: clear errors that say what to do.

A sibling of `modeling_lookwhere.py`: saved model folders copy it for `trust_remote_code`, so it imports only torch
and its siblings.
"""

from __future__ import annotations

import torch

from .configuration_lookwhere import LookWhereConfig, to_pair

__all__ = ["check_inputs"]


def check_inputs(config: LookWhereConfig, pixel_values, low_res_pixel_values) -> tuple[int, int]:
    """Shape checks of the inputs (Python-level, on shapes only: free under torch.compile and torch.export).
    NaN / inf values are not checked here: that needs a reduction and a device-to-host sync on every forward (a
    stall of the GPU queue) and a data-dependent branch that `torch.compile(fullgraph=True)` / `torch.export`
    cannot trace; `LookWhereImageProcessor` refuses such images instead. Returns the high-resolution grid."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
        got = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(
            f"`pixel_values` must be a float tensor of shape (batch_size, 3, height, width), got {got}. "
            "Use LookWhereImageProcessor to turn images into model inputs."
        )
    batch_size, channels, height, width = pixel_values.shape
    if batch_size == 0:
        raise ValueError("`pixel_values` is an empty batch (batch_size 0); pass at least one image.")
    expected_channels = config.extractor_config.num_channels
    if channels != expected_channels:
        raise ValueError(
            f"`pixel_values` must have {expected_channels} channels (RGB), got {channels} in shape "
            f"{tuple(pixel_values.shape)}. Convert grayscale/RGBA images to RGB (LookWhereImageProcessor does)."
        )
    p = config.patch_size
    if height < p or width < p:
        raise ValueError(
            f"`pixel_values` of shape {tuple(pixel_values.shape)} are smaller than one {p}x{p} patch; resize the "
            f"images to at least {p}x{p} pixels (LookWhereImageProcessor does, and refuses images without pixels)."
        )
    if height % p or width % p:
        raise ValueError(
            f"`pixel_values` height and width must be multiples of the patch size {p}, got {height}x{width}. "
            f"Resize the images (e.g. LookWhereImageProcessor(size={{'height': {height // p * p or p}, "
            f"'width': {width // p * p or p}}}))."
        )
    if low_res_pixel_values is not None:
        lp = to_pair(config.selector_config.patch_size)[0]
        if low_res_pixel_values.ndim != 4 or low_res_pixel_values.shape[:2] != pixel_values.shape[:2]:
            raise ValueError(
                "`low_res_pixel_values` must have shape (batch_size, channels, low_h, low_w) with the batch size "
                f"and channels of `pixel_values` {tuple(pixel_values.shape[:2])}, got "
                f"{tuple(low_res_pixel_values.shape)}. Omit it to let the model make it from `pixel_values`."
            )
        if min(low_res_pixel_values.shape[-2:]) < lp:
            raise ValueError(
                f"`low_res_pixel_values` of shape {tuple(low_res_pixel_values.shape)} are smaller than one "
                f"{lp}x{lp} selector patch. Omit it to let the model make it from `pixel_values`."
            )
        if low_res_pixel_values.shape[-2] % lp or low_res_pixel_values.shape[-1] % lp:
            raise ValueError(
                f"`low_res_pixel_values` height and width must be multiples of the selector patch size {lp}, "
                f"got {tuple(low_res_pixel_values.shape[-2:])}."
            )
    return height // p, width // p
