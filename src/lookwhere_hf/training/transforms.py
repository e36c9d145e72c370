"""Batch transforms for `Dataset.set_transform` (torchvision v2 augmentation, then the LookWhere image processor) and
the collate function of every script."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..image_processing import processor_resize_size
from .arguments import PretrainingDataArguments
from .data import mask_array, reduce_mask_labels


def to_rgb(image):
    """An RGB `PIL.Image` from a `PIL.Image` of any mode or an array (grayscale `(H, W)` is repeated 3 times)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return Image.fromarray(array[..., :3].astype(np.uint8))


def _both_views(processor, images, **kwargs) -> dict[str, list[torch.Tensor]]:
    """The processor's views: `pixel_values`, and `low_res_pixel_values` where it makes them (LookWhere; a one-view
    processor, e.g. LookupViT's, does not)."""
    inputs = processor(images, return_tensors="pt", **kwargs)
    return {key: list(inputs[key]) for key in ("pixel_values", "low_res_pixel_values") if key in inputs}


class ClassificationTransform:
    """`{image, label}` -> `{pixel_values, low_res_pixel_values, labels}`.

    Training: `RandomResizedCrop` to the processor size + horizontal flip, then the processor (no resize) makes both
    views. Evaluation (and `train=False`): the processor alone (resize), as the pipeline does.
    """

    def __init__(self, processor, image_column: str, label_column: str, train: bool) -> None:
        from torchvision.transforms import v2

        self.processor, self.image_column, self.label_column, self.train = processor, image_column, label_column, train
        self.augment = v2.Compose([v2.RandomResizedCrop(processor_resize_size(processor)), v2.RandomHorizontalFlip()])

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        images = [to_rgb(image) for image in batch[self.image_column]]
        if self.train:
            views = _both_views(self.processor, [self.augment(image) for image in images], do_resize=False)
        else:
            views = _both_views(self.processor, images)
        return {**views, "labels": list(batch[self.label_column])}


class SegmentationTransform:
    """`{image, mask}` -> `{pixel_values, low_res_pixel_values, labels}`.

    Image and mask go through the same geometric transforms (torchvision v2 with a `Mask`, nearest-neighbour for the
    mask): training `RandomResizedCrop` (scale 0.5-1) + flip, evaluation a resize to the processor size.
    `labels` are `(height, width)` int64 class maps with 255 = ignored.
    """

    def __init__(
        self, processor, image_column: str, label_column: str, train: bool, reduce_labels: bool = False
    ) -> None:
        from torchvision.transforms import v2

        self.processor, self.image_column, self.label_column = processor, image_column, label_column
        self.reduce_labels = reduce_labels
        size = processor_resize_size(processor)
        if train:
            self.geometry = v2.Compose([v2.RandomResizedCrop(size, scale=(0.5, 1.0)), v2.RandomHorizontalFlip()])
        else:
            self.geometry = v2.Resize(size)

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as TF

        images, labels = [], []
        for image, mask in zip(batch[self.image_column], batch[self.label_column], strict=True):
            image = to_rgb(image)
            mask = mask_array(mask)
            if mask.shape != (image.height, image.width):
                raise ValueError(
                    f"A mask of size {mask.shape[1]}x{mask.shape[0]} belongs to an image of size "
                    f"{image.width}x{image.height}; masks must have their image's size."
                )
            if self.reduce_labels:
                mask = reduce_mask_labels(mask)
            image_t, mask_t = self.geometry(
                tv_tensors.Image(TF.pil_to_tensor(image)), tv_tensors.Mask(torch.from_numpy(mask)[None])
            )
            images.append(image_t.as_subclass(torch.Tensor))
            labels.append(mask_t.as_subclass(torch.Tensor)[0].long())
        return {**_both_views(self.processor, images, do_resize=False), "labels": labels}


class PretrainingTransform:
    """`{image}` -> `{pixel_values}`: the high-resolution view of pretraining, normalized with the processor's mean
    and std (the model makes the selector's view from it).

    Training: `RandomResizedCrop(size, scale=(--crop_scale_min, 1))`, horizontal flip, `RandAugment` and, after
    normalization, `RandomErasing(p=--random_erasing)`. `--no_augment` (and `train=False`): resize + center crop.
    """

    def __init__(self, processor, data_args: PretrainingDataArguments, train: bool = True) -> None:
        from torchvision.transforms import v2

        self.image_column = data_args.image_column_name
        size = processor_resize_size(processor)
        augment = train and not data_args.no_augment
        if augment:
            steps = [
                v2.RandomResizedCrop(size, scale=(data_args.crop_scale_min, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandAugment(num_ops=data_args.rand_augment_num_ops, magnitude=data_args.rand_augment_magnitude),
            ]
        else:
            steps = [v2.Resize(min(size), antialias=True), v2.CenterCrop(size)]
        steps += [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(processor.image_mean), list(processor.image_std)),
        ]
        if augment and data_args.random_erasing > 0:
            steps.append(v2.RandomErasing(p=data_args.random_erasing, value=0))
        self.transform = v2.Compose(steps)

    def __call__(self, batch: dict[str, list]) -> dict[str, list[torch.Tensor]]:
        return {"pixel_values": [self.transform(to_rgb(image)) for image in batch[self.image_column]]}


def collate_fn(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack transformed examples into a batch: every key becomes one tensor with a leading batch dimension
    (`pixel_values` `(B, 3, H, W)`, `low_res_pixel_values` `(B, 3, h, w)`, `labels` `(B,)` or `(B, H, W)` int64)."""
    # torchvision returns `tv_tensors.Image`; the model gets plain tensors
    batch = {
        key: torch.stack([torch.as_tensor(e[key]).as_subclass(torch.Tensor) for e in examples]) for key in examples[0]
    }
    if "labels" in batch:
        batch["labels"] = batch["labels"].long()
    return batch
