"""Image processor for LookWhere: the high-resolution view and the selector's low-resolution view."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_outputs import (
    SemanticSegmentationPostProcessorOutput,
)
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    PILImageResampling,
    SizeDict,
    is_pil_image,
    make_flat_list_of_images,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import is_torchvision_available

from .selection import make_low_res_view

# PIL modes whose pixels do not fit 8 bits: read as arrays so that their real value range is used (PIL's own
# conversion to RGB would clip them to 255).
_PIL_16_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_PIL_WIDE_MODES = (*_PIL_16_BIT_MODES, "I", "F")
_CHANNEL_COUNTS = (1, 3, 4)  # grayscale, RGB, RGBA


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


def _describe(image) -> str:
    if is_pil_image(image):
        return f"PIL image (mode {image.mode!r}, size {image.width}x{image.height})"
    return f"{type(image).__name__} of shape {tuple(image.shape)} and dtype {image.dtype}"


def _is_single_image(image) -> bool:
    return is_pil_image(image) or (isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim in (2, 3))


def _as_tensor(image) -> torch.Tensor:
    """A numpy array (any byte order) or PIL image in a mode wider than 8 bits -> a torch tensor, dtype kept."""
    if is_pil_image(image):
        image = np.asarray(image)
    if isinstance(image, np.ndarray):
        if image.dtype.kind not in "buif":
            raise ValueError(
                f"Images must hold numbers (uint8, uint16, other integers in [0, 255], or floats), got a numpy array "
                f"of dtype {image.dtype}. Convert it with `.astype(np.uint8)` or `.astype(np.float32)`."
            )
        # native byte order (PIL's 'I;16B' is big-endian) and writable memory, as torch.from_numpy needs
        image = torch.from_numpy(np.require(image, dtype=image.dtype.newbyteorder("="), requirements=["C", "W"]))
    return image


def _channel_layout(image: torch.Tensor, input_data_format) -> ChannelDimension:
    """Where the channels of a 3-D array are: given by `input_data_format`, else the only axis (first or last) whose
    size is a channel count (1, 3 or 4). Shapes where both could be refuse to guess."""
    if input_data_format is not None:
        return ChannelDimension(input_data_format)
    first, last = image.shape[0] in _CHANNEL_COUNTS, image.shape[-1] in _CHANNEL_COUNTS
    if first and last:
        raise ValueError(
            f"Cannot tell where the channels of an image of shape {tuple(image.shape)} are: it reads as "
            f"{image.shape[0]} channels of {image.shape[1]}x{image.shape[2]} pixels (channels first) and as "
            f"{image.shape[2]} channels of {image.shape[0]}x{image.shape[1]} pixels (channels last). Pass "
            "`input_data_format='channels_last'` for (height, width, channels) or `'channels_first'` for "
            "(channels, height, width)."
        )
    if not (first or last):
        raise ValueError(
            f"Found no channel axis in an image of shape {tuple(image.shape)}: the first or the last axis must have "
            "1 (grayscale), 3 (RGB) or 4 (RGBA) entries. Pass (height, width, channels) or (channels, height, width) "
            "arrays, or 2-D (height, width) grayscale arrays."
        )
    return ChannelDimension.FIRST if first else ChannelDimension.LAST


def _on_8_bit_scale(image: torch.Tensor, source: str) -> tuple[torch.Tensor, int | None]:
    """For `do_rescale`: `(image, full_scale)`, where `full_scale` is the value of a white pixel when the image must be
    brought to the 8-bit scale [0, 255] first (65535 for 16-bit images, 255 for floats), or `None` when it is 8-bit
    already (uint8, or other integers within [0, 255], returned as uint8). Raises a `ValueError` for values that fit
    no such range and for booleans."""
    if image.dtype == torch.uint8:
        return image, None
    if image.dtype == torch.uint16:
        return image, 65535
    if image.dtype == torch.bool or image.is_complex():
        raise ValueError(
            f"Got a {source}; images must be uint8, uint16, other integers in [0, 255] or floats. Convert masks with "
            "`.astype(np.uint8) * 255`."
        )
    low, high = image.min().item(), image.max().item()
    if not image.is_floating_point():
        if low < 0 or high > 255:
            raise ValueError(
                f"Got a {source} with values in [{low}, {high}]. Integer images other than uint16 are read as 8-bit "
                "and must lie in [0, 255]. Pass 16-bit images as uint16 (numpy / torch, or PIL mode 'I;16') to "
                "have them scaled by 65535, or scale the values to [0, 255] yourself."
            )
        return image.to(torch.uint8), None
    if low < 0 or high > 255:
        raise ValueError(
            f"Got a {source} with values in [{low:g}, {high:g}]. With `do_rescale=True` (the default) float images "
            "must be on the 8-bit scale [0, 255]. Scale them to [0, 255], or to [0, 1] and pass `do_rescale=False` "
            "(already normalized inputs also need `do_normalize=False`)."
        )
    if 0 < high <= 1:
        raise ValueError(
            f"Got a {source} whose values all lie in [0, 1] while `do_rescale=True` (the default) reads float images "
            "on the 8-bit scale [0, 255], which would make it almost black. Pass `do_rescale=False` for images "
            "already scaled to [0, 1], or multiply them by 255."
        )
    return image, 255


class LookWhereImageProcessor(TorchvisionBackend):
    r"""
    Turns images into LookWhere inputs: `pixel_values` (resized to `size`, 518x518 by default, rescaled to [0, 1] and
    normalized with the ImageNet mean/std) and `low_res_pixel_values` (154x154 by default), made from the normalized
    high-resolution tensor by a bilinear resize exactly as [`LookWhereModel`] makes it when it is not given, so both
    paths give the same numbers.

    Accepts PIL images, numpy arrays and torch tensors, single or batched; grayscale (also 2-D `(height, width)`
    arrays) and RGBA inputs are converted to RGB. `size` may be non-square; its sides must be multiples of the
    model's patch size (14).

    Input rules (anything else raises a `ValueError` that says what to change):

    - Value range, with `do_rescale=True` (the default): uint8 is divided by 255; **16-bit** images (uint16 arrays /
      tensors, PIL modes `I;16*`) by 65535, their real range, so they give the numbers of the same picture in 8 bits;
      other integers (int32 arrays, PIL mode `I`, int64 tensors) and floats (PIL mode `F`) are read on the 8-bit
      scale and must lie in [0, 255]. A float image whose values all lie in [0, 1] is refused (it would come out
      black): pass `do_rescale=False` for images already scaled to [0, 1]. With `do_rescale=False` values are used
      as given.
    - NaN or infinite values, boolean masks, empty lists and images without pixels are refused.
    - Channel layout of 3-D arrays: `input_data_format` if given, else the first or last axis, whichever has 1, 3
      or 4 entries. When both have (e.g. `(1, 1, 3)` or `(4, 4000, 3)`), the layout cannot be told from the shape and
      `input_data_format` is required.
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
        if not is_torchvision_available():  # transformers' TorchvisionBackend would fail later, on the first image
            raise ImportError(
                "LookWhereImageProcessor resizes with torchvision, which is not installed here. Install it with "
                "`pip install torchvision` (a build that matches your torch)."
            )
        super().__init__(**kwargs)
        self._check_sizes(self.size, self.low_res_size)

    @classmethod
    def from_model_config(cls, config, **kwargs) -> LookWhereImageProcessor:
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

    def _prepare_images_structure(self, images, expected_ndims: int = 3) -> list:
        """One image or a (nested) batch -> a flat, non-empty list of single images; 2-D grayscale arrays stay 2-D
        (the backend adds their channel axis, so their layout is never guessed)."""
        images = self.fetch_images(images)
        if _is_single_image(images):
            images = [images]
        elif not (isinstance(images, (list, tuple)) and images and all(_is_single_image(i) for i in images)):
            try:
                images = make_flat_list_of_images(images, expected_ndims=expected_ndims)
            except ValueError:
                got = _describe(images) if isinstance(images, (np.ndarray, torch.Tensor)) else type(images).__name__
                raise ValueError(
                    f"Could not read images from a {got}. Pass one image or a list of images: PIL images, or "
                    "numpy arrays / torch tensors of shape (height, width), (height, width, channels) or "
                    "(channels, height, width), or 4-D batches of those."
                ) from None
        if len(images) == 0:
            raise ValueError("Got no images (an empty list or batch); pass at least one image.")
        return list(images)

    def process_image(
        self,
        image,
        do_convert_rgb: bool | None = None,
        input_data_format=None,
        do_rescale: bool | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """One PIL image / array / tensor -> a channels-first RGB tensor for the resize and rescale steps, after the
        checks of the class docstring. Images that are not uint8 are brought to the 8-bit scale [0, 255] here."""
        source = _describe(image)
        if 0 in ((image.width, image.height) if is_pil_image(image) else tuple(image.shape)):
            raise ValueError(f"Got an image without pixels: {source}. Pass images of at least 1x1 pixel.")
        if is_pil_image(image) and image.mode not in _PIL_WIDE_MODES:  # 8-bit modes: PIL converts them to RGB
            return super().process_image(image, do_convert_rgb=do_convert_rgb, device=kwargs.get("device"))
        image = _as_tensor(image)
        if image.is_floating_point() and not torch.isfinite(image).all():
            raise ValueError(f"Got a {source} with NaN or infinite values; replace them (e.g. `np.nan_to_num`).")
        if image.ndim == 3:
            input_data_format = _channel_layout(image, input_data_format)
        full_scale = None
        if do_rescale:
            image, full_scale = _on_8_bit_scale(image, source)
        if full_scale is None:
            return super().process_image(
                image, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, device=kwargs.get("device")
            )
        # In [0, 1] for the RGB conversion (it composites RGBA over white on that scale), then back on the 8-bit
        # scale that `rescale_factor` (1/255) expects.
        unit = image.to(torch.float32) / full_scale
        rgb = super().process_image(
            unit, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, device=kwargs.get("device")
        )
        return rgb * 255

    def _preprocess(
        self, images, low_res_size=None, low_res_antialias=None, return_tensors=None, **kwargs
    ) -> BatchFeature:
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
        self,
        outputs,
        target_sizes: list[tuple[int, int]] | torch.Tensor | None = None,
        return_segmentation_scores: bool = False,
    ) -> list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]:
        """Turn [`LookWhereForSemanticSegmentation`] logits into per-pixel class maps (the API of transformers'
        segmentation processors, e.g. Segformer's).

        Args:
            outputs: model outputs with `logits` of shape `(batch_size, num_labels, grid_height, grid_width)`.
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor` of shape `(batch_size, 2)`, *optional*):
                `(height, width)` per image; the logits are bilinearly upsampled (`align_corners=False`) to it before
                the argmax. Without it, the maps stay on the patch grid.
            return_segmentation_scores (`bool`, *optional*, defaults to `False`):
                Also return the (upsampled) logits the maps were taken from.

        Returns:
            `list[torch.LongTensor]` of length `batch_size`, each `(height, width)` of class ids; with
            `return_segmentation_scores=True`, a list of `SemanticSegmentationPostProcessorOutput` with `segmentation`
            `(height, width)` and `segmentation_scores` `(num_labels, height, width)` (float32 logits).
        """
        logits = outputs.logits if hasattr(outputs, "logits") else outputs["logits"]
        if target_sizes is None:
            target_sizes = [None] * logits.shape[0]
        elif len(target_sizes) != logits.shape[0]:
            raise ValueError(
                f"`target_sizes` has {len(target_sizes)} entries but the logits hold {logits.shape[0]} images; "
                "pass one (height, width) per image."
            )
        results = []
        for image_logits, size in zip(logits, target_sizes):
            scores = image_logits.float()
            if size is not None:
                size = tuple(int(s) for s in size)
                if len(size) != 2 or min(size) < 1:
                    raise ValueError(f"Each target size must be a positive (height, width) pair, got {size}.")
                scores = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
            segmentation = scores.argmax(dim=0)
            results.append(
                SemanticSegmentationPostProcessorOutput(
                    data={"segmentation": segmentation, "segmentation_scores": scores}
                )
                if return_segmentation_scores
                else segmentation
            )
        return results


__all__ = ["LookWhereImageProcessor"]
