"""Bad or unusual inputs, tried as a new user would: each gets the documented numbers or a ValueError that says what
was wrong and what to do, through the processor, the pipeline and the model."""

import numpy as np
import pytest
import torch
from conftest import make_tiny_config
from PIL import Image
from transformers import pipeline

from lookwhere_hf import LookWhereForImageClassification, LookWhereImageProcessor

# Float32 results of the same resize / normalize arithmetic on inputs that differ only by float32 rounding of the
# scale (x / 65535 vs x / 255, about 1 ulp): a few ulps of values of magnitude <= ~3 after normalization.
FLOAT_PATH_ATOL = 1e-5


def _processor(**kwargs):
    return LookWhereImageProcessor(
        size={"height": 112, "width": 112}, low_res_size={"height": 56, "width": 56}, **kwargs
    )


def _pixels(image, **kwargs):
    return _processor()(image, return_tensors="pt", **kwargs)["pixel_values"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classifier")
    torch.manual_seed(0)
    LookWhereForImageClassification(make_tiny_config(num_labels=3)).save_pretrained(folder)
    _processor().save_pretrained(folder)
    return pipeline("image-classification", model=str(folder))


# ----------------------------------------------------------------------------------------------- empty inputs
@pytest.mark.parametrize(
    "image",
    [np.zeros((0, 10, 3), np.uint8), np.zeros((10, 0), np.uint8), torch.zeros(3, 0, 0), Image.new("RGB", (0, 5))],
    ids=["numpy", "numpy-2d", "torch", "pil"],
)
def test_image_without_pixels(image):
    with pytest.raises(ValueError, match="without pixels.*at least 1x1"):
        _pixels(image)


@pytest.mark.parametrize("images", [[], [[]], np.zeros((0, 20, 20, 3), np.uint8)], ids=["list", "nested", "batch"])
def test_no_images(images):
    with pytest.raises(ValueError, match="Got no images.*at least one image"):
        _pixels(images)


def test_unreadable_structure():
    with pytest.raises(ValueError, match=r"Could not read images from a ndarray of shape \(20,\)"):
        _pixels(np.zeros(20, np.uint8))


# ------------------------------------------------------------------------------------------ non-finite values
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", ["numpy", "torch", "pil-F"])
def test_non_finite_values(bad, kind):
    image = np.full((20, 20, 3), 100.0, np.float32)
    image[3, 4] = bad
    if kind == "torch":
        image = torch.from_numpy(image).permute(2, 0, 1)
    elif kind == "pil-F":
        image = Image.fromarray(image[..., 0])
    for do_rescale in (True, False):
        with pytest.raises(ValueError, match="NaN or infinite"):
            _pixels(image, do_rescale=do_rescale)


def test_boolean_masks_are_refused():
    with pytest.raises(ValueError, match="dtype bool.*astype"):
        _pixels(np.ones((20, 20), bool))


# ------------------------------------------------------------------------------------------- value range
def test_uint16_images_are_scaled_by_their_full_range(photos):
    """A 16-bit copy of a photo (x * 257, so 65535 = white) gives the numbers of the photo on the 8-bit scale."""
    photo = photos["astronaut"]
    reference = _pixels(photo.astype(np.float32))
    for image in (photo.astype(np.uint16) * 257, torch.from_numpy(photo.astype(np.uint16) * 257).permute(2, 0, 1)):
        torch.testing.assert_close(_pixels(image), reference, atol=FLOAT_PATH_ATOL, rtol=0)


def test_pil_16_bit_grayscale(photos):
    gray = np.asarray(Image.fromarray(photos["coffee"]).convert("L"))
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257)
    assert sixteen.mode == "I;16"
    torch.testing.assert_close(_pixels(sixteen), _pixels(gray.astype(np.float32)), atol=FLOAT_PATH_ATOL, rtol=0)


def test_16_bit_rgba_is_composited_over_white():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 65536, (30, 40, 4)).astype(np.uint16)
    unit = rgba.astype(np.float64) / 65535
    rgb = unit[..., :3] * unit[..., 3:] + (1 - unit[..., 3:])  # over white, in float64
    expected = _pixels(rgb.astype(np.float32), do_rescale=False)
    torch.testing.assert_close(_pixels(rgba), expected, atol=FLOAT_PATH_ATOL, rtol=0)


@pytest.mark.parametrize(
    "image",
    [
        Image.fromarray(np.full((20, 20), 1000, np.int32)),
        np.full((20, 20, 3), 300, np.int32),
        torch.full((3, 20, 20), -1, dtype=torch.int64),
    ],
    ids=["pil-I", "int32", "int64-negative"],
)
def test_integers_outside_8_bit_range(image):
    with pytest.raises(ValueError, match=r"must lie in \[0, 255\].*uint16"):
        _pixels(image)


def test_integers_within_8_bit_range_are_8_bit(photos):
    gray = np.asarray(Image.fromarray(photos["chelsea"]).convert("L"))
    expected = _pixels(Image.fromarray(gray))
    assert torch.equal(_pixels(Image.fromarray(gray.astype(np.int32))), expected)  # PIL mode "I"
    assert torch.equal(_pixels(torch.from_numpy(photos["chelsea"]).permute(2, 0, 1).long()), _pixels(photos["chelsea"]))


@pytest.mark.parametrize(
    "scale, match", [(300.0, r"\[0, 255\]"), (-1.0, r"\[0, 255\]"), (1.0, "all lie in \\[0, 1\\]")]
)
def test_float_images_outside_the_8_bit_scale(scale, match):
    rng = np.random.default_rng(1)
    image = (rng.random((20, 20, 3)) * scale).astype(np.float32)
    with pytest.raises(ValueError, match=match + ".*do_rescale=False"):
        _pixels(image)


def test_float_images_in_unit_range_with_do_rescale_false(photos):
    photo = photos["coffee"].astype(np.float32)
    torch.testing.assert_close(_pixels(photo / 255, do_rescale=False), _pixels(photo), atol=FLOAT_PATH_ATOL, rtol=0)
    assert torch.equal(_pixels(np.zeros((20, 20, 3), np.float32)), _pixels(np.zeros((20, 20, 3), np.uint8)))


# ----------------------------------------------------------------------------------------------- channel layout
@pytest.mark.parametrize("shape", [(1, 1, 3), (4, 4000, 3), (3, 50, 4)])
def test_ambiguous_channel_layout_asks_for_input_data_format(shape):
    image = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    with pytest.raises(ValueError, match="Cannot tell where the channels.*input_data_format='channels_last'"):
        _pixels(image)


def test_input_data_format_settles_the_layout():
    strip = np.random.default_rng(0).integers(0, 256, (4, 4000, 3)).astype(np.uint8)
    expected = _pixels(Image.fromarray(strip))
    assert torch.equal(_pixels(strip, input_data_format="channels_last"), expected)
    first = np.ascontiguousarray(strip.transpose(2, 0, 1))
    assert torch.equal(_pixels(first, input_data_format="channels_first"), expected)


def test_unambiguous_layouts_are_inferred(photos):
    photo = photos["coffee"]
    expected = _pixels(photo)
    assert torch.equal(_pixels(np.ascontiguousarray(photo.transpose(2, 0, 1))), expected)
    # A narrow 2-D grayscale image is never mistaken for channels: its layout is not guessed.
    narrow = np.random.default_rng(2).integers(0, 256, (3, 50)).astype(np.uint8)
    assert torch.equal(_pixels(narrow), _pixels(Image.fromarray(narrow)))


def test_no_channel_axis():
    with pytest.raises(ValueError, match="no channel axis.*1 \\(grayscale\\), 3 \\(RGB\\) or 4 \\(RGBA\\)"):
        _pixels(np.zeros((20, 20, 5), np.uint8))


# ----------------------------------------------------------------------------------------------- pipeline
@pytest.mark.parametrize(
    "image, match",
    [
        (Image.new("RGB", (0, 0)), "without pixels"),
        (np.full((20, 20, 3), np.nan, np.float32), "NaN or infinite"),
        (np.zeros((1, 1, 3), np.uint8), "input_data_format"),
        (np.full((20, 20, 3), 4000, np.int32), r"\[0, 255\]"),
    ],
    ids=["zero-size", "nan", "ambiguous", "int32"],
)
def test_pipeline_bad_inputs(classifier, image, match):
    with pytest.raises(ValueError, match=match):
        classifier(image)


def test_pipeline_16_bit(classifier, photos):
    """Arrays reach the processor as they are (PIL images are converted to 8-bit RGB by transformers' load_image)."""
    photo = photos["astronaut"]
    inputs = classifier.preprocess(photo.astype(np.uint16) * 257)
    torch.testing.assert_close(inputs["pixel_values"], _pixels(photo.astype(np.float32)), atol=FLOAT_PATH_ATOL, rtol=0)
    assert len(classifier(photo.astype(np.uint16) * 257)) == 3


# ----------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pixel_values": torch.zeros(1, 3, 0, 0)}, "smaller than one 14x14 patch"),
        ({"pixel_values": torch.zeros(1, 3, 0, 112)}, "smaller than one 14x14 patch"),
        (
            {"pixel_values": torch.zeros(1, 3, 112, 112), "low_res_pixel_values": torch.zeros(1, 3, 0, 0)},
            "selector patch",
        ),
    ],
)
def test_model_zero_size_inputs(kwargs, match):
    model = LookWhereForImageClassification(make_tiny_config(num_labels=2)).eval()
    with pytest.raises(ValueError, match=match):
        model(**kwargs)
