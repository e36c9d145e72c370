"""Image processor for LookWhere: the high-resolution view and the selector's low-resolution view."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack

from .selection import make_low_res_view


class LookWhereImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    low_res_size (`dict[str, int]`, *optional*, defaults to `{"height": 154, "width": 154}`):
        Size of the selector's low-resolution view.
    low_res_antialias (`bool`, *optional*, defaults to `False`):
        Antialias the bilinear resize that makes the low-resolution view (the JAX pretraining did; the official
        PyTorch inference does not).
    """

    low_res_size: dict[str, int]
    low_res_antialias: bool


def _add_channel_to_2d(images):
    """`(H, W)` grayscale arrays / tensors -> `(H, W, 1)`, which the RGB conversion then expands to 3 channels."""
    if isinstance(images, (list, tuple)):
        return type(images)(_add_channel_to_2d(image) for image in images)
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 2:
        return images[..., None]
    return images


class LookWhereImageProcessor(TorchvisionBackend):
    r"""
    Turns images into LookWhere inputs: `pixel_values` (resized to `size`, 518x518 by default, rescaled to [0, 1] and
    normalized with the ImageNet mean/std) and `low_res_pixel_values` (154x154 by default), made from the normalized
    high-resolution tensor by a bilinear resize exactly as [`LookWhereModel`] makes it when it is not given, so both
    paths give the same numbers.

    Accepts PIL images, numpy arrays and torch tensors, single or batched; grayscale and RGBA inputs are converted to
    RGB. `size` may be non-square; its sides must be multiples of the model's patch size (14).
    """

    valid_kwargs = LookWhereImageProcessorKwargs
    model_input_names = ["pixel_values", "low_res_pixel_values"]
    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"height": 518, "width": 518}
    low_res_size = {"height": 154, "width": 154}
    low_res_antialias = False
    default_to_square = True
    do_resize = True
    do_center_crop = False
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True

    def __init__(self, **kwargs: Unpack[LookWhereImageProcessorKwargs]) -> None:
        super().__init__(**kwargs)
        self._check_sizes(self.size, self.low_res_size)

    @classmethod
    def from_lookwhere_config(cls, config, **kwargs) -> "LookWhereImageProcessor":
        """The processor that matches a [`LookWhereConfig`]: `size` = the extractor's image size, `low_res_size` = the
        selector's, `low_res_antialias` as the config says. `kwargs` override any processor setting."""
        high, low = config.high_res_size, config.low_res_size
        settings = {
            "size": {"height": high, "width": high},
            "low_res_size": {"height": low, "width": low},
            "low_res_antialias": config.low_res_antialias,
        }
        return cls(**{**settings, **kwargs})

    @staticmethod
    def _sides(size, name: str) -> tuple[int, int]:
        height = size.height if isinstance(size, SizeDict) else (size or {}).get("height")
        width = size.width if isinstance(size, SizeDict) else (size or {}).get("width")
        if not isinstance(height, int) or not isinstance(width, int) or height < 1 or width < 1:
            raise ValueError(f"`{name}` must be a dict with positive int 'height' and 'width', got {size!r}.")
        return height, width

    def _check_sizes(self, size, low_res_size) -> None:
        self._sides(size, "size")
        self._sides(low_res_size, "low_res_size")

    def preprocess(self, images, *args, **kwargs: Unpack[LookWhereImageProcessorKwargs]) -> BatchFeature:
        """Preprocess one image or a batch (PIL, numpy or torch; `(H, W)` grayscale arrays are accepted too)."""
        return super().preprocess(_add_channel_to_2d(images), *args, **kwargs)

    def to_dict(self) -> dict:
        # The processor is found through the model's config.json (`model_type` "lookwhere" locally, its `auto_map`
        # with trust_remote_code). Writing `image_processor_type` / `auto_map` here as well would make pipelines look
        # for a remote *video* processor and prompt the user about custom code even when lookwhere_hf is installed.
        output = super().to_dict()
        output.pop("image_processor_type", None)
        output.pop("auto_map", None)
        return output

    def _preprocess(self, images, low_res_size=None, low_res_antialias=None, return_tensors=None, **kwargs) -> BatchFeature:
        outputs = super()._preprocess(images, return_tensors=None, **kwargs)
        low_res_size = low_res_size if low_res_size is not None else self.low_res_size
        low_res_antialias = self.low_res_antialias if low_res_antialias is None else low_res_antialias
        low_hw = self._sides(low_res_size, "low_res_size")
        pixel_values = outputs["pixel_values"]
        low_res = [make_low_res_view(image.unsqueeze(0), low_hw, low_res_antialias)[0] for image in pixel_values]
        return BatchFeature(
            data={"pixel_values": pixel_values, "low_res_pixel_values": low_res}, tensor_type=return_tensors
        )

    def post_process_semantic_segmentation(
        self, outputs, target_sizes: list[tuple[int, int]] | torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Turn [`LookWhereForSemanticSegmentation`] logits into per-pixel class maps.

        Args:
            outputs: model outputs with `logits (batch_size, num_labels, grid_h, grid_w)`.
            target_sizes (`list[tuple[int, int]]`, *optional*): `(height, width)` per image; the logits are
                bilinearly upsampled to it before the argmax. Without it, the maps stay on the patch grid.

        Returns:
            `list[torch.LongTensor]` of length `batch_size`, each `(height, width)` of class ids.
        """
        logits = outputs.logits if hasattr(outputs, "logits") else outputs["logits"]
        if target_sizes is None:
            return list(logits.argmax(dim=1))
        if len(target_sizes) != logits.shape[0]:
            raise ValueError(
                f"`target_sizes` has {len(target_sizes)} entries but the logits hold {logits.shape[0]} images; "
                "pass one (height, width) per image."
            )
        maps = []
        for image_logits, size in zip(logits, target_sizes):
            size = tuple(int(s) for s in size)
            upsampled = F.interpolate(image_logits[None].float(), size=size, mode="bilinear", align_corners=False)
            maps.append(upsampled[0].argmax(dim=0))
        return maps


__all__ = ["LookWhereImageProcessor"]
