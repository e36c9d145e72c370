"""What a user hands `lookwhere-hf` or `lookwhere-hf app`, opened with one-line messages: image files and model
folders. The command line and the app share these, so a bad file or folder reads the same in a terminal and on the
page.

```python
from lookwhere_hf.user_inputs import UserInputError, open_image_file

try:
    image = open_image_file("notes.txt")
except UserInputError as err:
    print(err)  # cannot read notes.txt as an image (UnidentifiedImageError); pass a PNG/JPEG/... file
```
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from transformers import AutoImageProcessor
from transformers.utils import logging as hf_logging

from .models.lookwhere.image_processing_lookwhere import LookWhereImageProcessor
from .utils import looks_like_local_path

__all__ = [
    "CLASSIFIER_FAMILIES",
    "UserInputError",
    "check_model_path",
    "load_model_and_processor",
    "open_image_file",
]


class UserInputError(Exception):
    """A user error with a one-line message that says what to pass instead (`lookwhere-hf` prints it and exits with
    status 2; `lookwhere-hf app` shows it in the page)."""


def open_image_file(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB; unreadable and oversized (decompression bomb) files raise `UserInputError`."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Image.DecompressionBombError as err:
        raise UserInputError(
            f"{path} is too large to open safely ({err}); downscale it first (the model resizes every image to its "
            "input size anyway)"
        ) from None
    except (UnidentifiedImageError, OSError) as err:
        raise UserInputError(
            f"cannot read {path} as an image ({type(err).__name__}); pass a PNG/JPEG/... file"
        ) from None


def check_model_path(model: str) -> str:
    """A model folder (checked: it exists and has a `config.json`; `~` expanded) or a Hub id, unchanged."""
    if not looks_like_local_path(model):
        return model  # a Hub id
    model = os.path.expanduser(model)
    if not os.path.isdir(model):
        raise UserInputError(f"model folder not found: {model}")
    if not os.path.isfile(os.path.join(model, "config.json")):
        raise UserInputError(f"{model} has no config.json; pass a folder written by save_pretrained")
    return model


CLASSIFIER_FAMILIES = ("lookwhere", "lookupvit", "glance_focus")
"""The `model_type`s `predict` classifies with (every family of the package; `--budget` needs saved thresholds)."""


def load_model_and_processor(
    auto_class, model_path: str, k_ratio: float | None, families: tuple[str, ...] = ("lookwhere",)
):
    """Load a model of one of `families` (with `auto_class`) and its image processor; errors become one-line
    `UserInputError`s. `k_ratio` is LookWhere's fixed k (it turns saved budget thresholds off)."""
    hf_logging.set_verbosity_error()  # e.g. the "unexpected classifier weights" report when loading the bare model
    try:
        model, loading = auto_class.from_pretrained(model_path, output_loading_info=True)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserInputError(f"could not load a model from {model_path!r}: {first}") from None
    model.eval()
    if loading["missing_keys"]:  # transformers would fill them with random weights: the answers would be noise
        saved = ", ".join(getattr(model.config, "architectures", None) or []) or "an unnamed class"
        missing = sorted(loading["missing_keys"])
        raise UserInputError(
            f"{model_path!r} holds a {saved}, which lacks what {type(model).__name__} needs "
            f"({len(missing)} weights, e.g. {missing[0]!r}); transformers would fill them with random values. "
            "Pass a folder saved from the right class (for `predict`: a fine-tuned ...ForImageClassification, "
            "e.g. from examples/pytorch/image-classification/run_image_classification.py)"
        )
    model_type = getattr(model.config, "model_type", None)
    if model_type not in families:
        wanted = " or ".join(repr(family) for family in families)
        raise UserInputError(f"{model_path!r} holds a {model_type!r} model; this command needs a {wanted} model")
    if k_ratio is not None:
        if model_type != "lookwhere":
            raise UserInputError(
                f"--k-ratio sets LookWhere's k; {model_path!r} is a {model_type!r} model, drop --k-ratio"
            )
        model.config.k_ratio = k_ratio
        model.config.use_budget = False  # a fixed k was asked for: saved budget thresholds would override it
    try:
        processor = AutoImageProcessor.from_pretrained(model_path)
    except (OSError, ValueError):  # a folder without preprocessor_config.json
        if model_type != "lookwhere":
            raise UserInputError(
                f"{model_path!r} has no preprocessor_config.json; save the image processor with the model"
            ) from None
        processor = LookWhereImageProcessor.from_model_config(model.config)
    return model, processor
