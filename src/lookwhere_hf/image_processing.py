"""The image processor that matches a model of any family, in one spelling: [`image_processor_for`]."""

from __future__ import annotations

from transformers import PretrainedConfig, PreTrainedModel

from .models.glance_focus import GlanceFocusConfig, GlanceFocusImageProcessor
from .models.lookupvit import LookupViTConfig, lookupvit_image_processor
from .models.lookwhere import LookWhereConfig, LookWhereImageProcessor


def image_processor_for(model_or_config: PreTrainedModel | PretrainedConfig, **overrides):
    """The image processor that matches a LookWhere, LookupViT or Glance-and-Focus model (or its config): the input
    size(s) the config was built for, ImageNet normalization.

    - LookWhere: [`LookWhereImageProcessor`] (`size` = the extractor's image size, `low_res_size` = the selector's).
    - LookupViT: transformers' `BeitImageProcessor` at `config.image_size` (no crop).
    - Glance-and-Focus: [`GlanceFocusImageProcessor`] (the official evaluation resize + centre crop; `crop_pct=1.0`
      keeps the whole square image).

    `pipeline(task, model=folder)` needs the processor saved next to the model, so save both:

    ```python
    >>> from lookwhere_hf import LookWhereForImageClassification, image_processor_for

    >>> model = LookWhereForImageClassification.from_dinov2("path/to/dinov2_with_registers", num_labels=10)
    >>> model.save_pretrained("my-model")
    >>> image_processor_for(model).save_pretrained("my-model")
    ```

    Args:
        model_or_config: a model of one of the three families, or its config.
        overrides: processor settings that replace the config-derived ones (e.g. `size=...`, `image_mean=...`).
    """
    config = model_or_config.config if isinstance(model_or_config, PreTrainedModel) else model_or_config
    if isinstance(config, LookWhereConfig):
        return LookWhereImageProcessor.from_model_config(config, **overrides)
    if isinstance(config, LookupViTConfig):
        return lookupvit_image_processor(config, **overrides)
    if isinstance(config, GlanceFocusConfig):
        return GlanceFocusImageProcessor.from_model_config(config, **overrides)
    raise ValueError(
        f"image_processor_for takes a LookWhere, LookupViT or Glance-and-Focus model or config, got "
        f"{type(model_or_config).__name__}. For other models use `AutoImageProcessor.from_pretrained(<folder>)`."
    )


def _height_width(size, what: str) -> tuple[int, int]:
    """`(height, width)` of a processor's `size` / `crop_size` (a `SizeDict` or a plain dict): its `height` and
    `width`, or a `shortest_edge` resize taken at a square image (that side both ways)."""
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    if get("height") and get("width"):
        return int(get("height")), int(get("width"))
    if get("shortest_edge"):
        return int(get("shortest_edge")), int(get("shortest_edge"))
    raise ValueError(
        f"The image processor's {what} {dict(size) if isinstance(size, dict) else size} gives no input size; set it "
        'to {"height": H, "width": W} or {"shortest_edge": S}.'
    )


def processor_resize_size(processor) -> tuple[int, int]:
    """`(height, width)` an image processor resizes a square image to (its `size`)."""
    return _height_width(processor.size, "size")


def processor_output_size(processor) -> tuple[int, int]:
    """`(height, width)` of the `pixel_values` an image processor makes from a square image: its centre crop where
    it crops (`do_center_crop`), else its resize."""
    crop = getattr(processor, "crop_size", None)
    if getattr(processor, "do_center_crop", False) and crop is not None:
        return _height_width(crop, "crop_size")
    return processor_resize_size(processor)


__all__ = ["image_processor_for", "processor_output_size", "processor_resize_size"]
