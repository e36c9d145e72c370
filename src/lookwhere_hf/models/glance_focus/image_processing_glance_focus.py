"""Image processor for Glance-and-Focus: the full-resolution view and the glance view."""

from __future__ import annotations

from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import is_torchvision_available

from .configuration_glance_focus import GLANCE_INTERPOLATIONS
from .modeling_glance_focus import make_glance_view

# The official evaluation resizes the shorter side to image_size / crop_pct, then centre-crops image_size.
OFFICIAL_CROP_PCT = 0.875


class GlanceFocusImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    glance_size (`int`, *optional*, defaults to 96):
        Side of the glance view.
    glance_interpolation (`str`, *optional*, defaults to `"bicubic"`):
        `"bicubic"` or `"bilinear"` (`align_corners=True`), the resize that makes the glance view from the normalized
        full-resolution tensor.
    """

    glance_size: int
    glance_interpolation: str


class GlanceFocusImageProcessor(TorchvisionBackend):
    r"""
    Turns images into Glance-and-Focus inputs, the official evaluation transform: resize the shorter side to 256
    (bilinear), centre-crop 224, rescale to [0, 1], normalize with the ImageNet mean / std -> `pixel_values`; then
    `glance_pixel_values`, the normalized tensor resized to `glance_size` (96) exactly as
    [`GlanceFocusForImageClassification`] makes it when it is not given ([`make_glance_view`]), so both paths give the
    same numbers.

    [`GlanceFocusImageProcessor.from_model_config`] builds the one that matches a model's config.
    """

    valid_kwargs = GlanceFocusImageProcessorKwargs
    model_input_names = ["pixel_values", "glance_pixel_values"]
    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 256}
    crop_size = {"height": 224, "width": 224}
    glance_size = 96
    glance_interpolation = "bicubic"
    default_to_square = False
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True

    def __init__(self, **kwargs: Unpack[GlanceFocusImageProcessorKwargs]) -> None:
        if not is_torchvision_available():  # transformers' TorchvisionBackend would fail later, on the first image
            raise ImportError(
                "GlanceFocusImageProcessor resizes with torchvision, which is not installed here. Install it with "
                "`pip install torchvision` (a build that matches your torch)."
            )
        super().__init__(**kwargs)
        self._check_glance(self.glance_size, self.glance_interpolation)

    @classmethod
    def from_model_config(cls, config, crop_pct: float = OFFICIAL_CROP_PCT, **kwargs) -> GlanceFocusImageProcessor:
        """The processor that matches a [`GlanceFocusConfig`]: centre crop `image_size` of the shorter side resized
        to `int(image_size / crop_pct)` (default 0.875, the official `inference.py`'s rule; 1.0 keeps the whole
        square image), and the config's glance size and interpolation. `kwargs` override any setting."""
        if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0.0 < crop_pct <= 1.0:
            raise ValueError(
                f"`crop_pct` must be in (0, 1] (the share of the resized shorter side kept by the centre crop; "
                f"official 0.875, 1.0 keeps everything), got {crop_pct!r}."
            )
        settings = {
            "size": {"shortest_edge": int(config.image_size / crop_pct)},
            "crop_size": {"height": config.image_size, "width": config.image_size},
            "glance_size": config.glance_side,
            "glance_interpolation": config.glance_interpolation,
        }
        return cls(**{**settings, **kwargs})

    @staticmethod
    def _check_glance(glance_size, glance_interpolation) -> None:
        if isinstance(glance_size, bool) or not isinstance(glance_size, int) or glance_size < 1:
            raise ValueError(f"`glance_size` must be a positive int, got {glance_size!r}.")
        if glance_interpolation not in GLANCE_INTERPOLATIONS:
            raise ValueError(
                f"`glance_interpolation` must be one of {GLANCE_INTERPOLATIONS}, got {glance_interpolation!r}."
            )

    def _preprocess(
        self, images, glance_size=None, glance_interpolation=None, return_tensors=None, **kwargs
    ) -> BatchFeature:
        outputs = super()._preprocess(images, return_tensors=None, **kwargs)
        glance_size = self.glance_size if glance_size is None else glance_size
        glance_interpolation = self.glance_interpolation if glance_interpolation is None else glance_interpolation
        self._check_glance(glance_size, glance_interpolation)
        pixel_values = outputs["pixel_values"]
        glance = [make_glance_view(image.unsqueeze(0), glance_size, glance_interpolation)[0] for image in pixel_values]
        return BatchFeature(
            data={"pixel_values": pixel_values, "glance_pixel_values": glance}, tensor_type=return_tensors
        )


__all__ = ["GlanceFocusImageProcessor"]
