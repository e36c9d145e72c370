"""LookWhereImageProcessor and the transformers pipelines on real photographs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_config
from PIL import Image
from transformers import AutoImageProcessor, pipeline

from lookwhere_hf import (
    LookWhereForImageClassification,
    LookWhereForSemanticSegmentation,
    LookWhereImageProcessor,
    LookWhereModel,
)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _processor(**kwargs):
    return LookWhereImageProcessor(size={"height": 112, "width": 112}, low_res_size={"height": 56, "width": 56}, **kwargs)


def test_processor_defaults_are_the_release_sizes():
    processor = LookWhereImageProcessor()
    out = processor(np.zeros((300, 400, 3), dtype=np.uint8), return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 518, 518)
    assert out["low_res_pixel_values"].shape == (1, 3, 154, 154)


def test_processor_numbers(photos):
    image = photos["astronaut"]
    out = _processor()(image, return_tensors="pt")
    tensor = torch.from_numpy(image).permute(2, 0, 1).float()
    resized = F.interpolate(tensor[None], size=(112, 112), mode="bicubic", align_corners=False, antialias=True)[0]
    expected = (resized.round().clamp(0, 255) / 255 - MEAN) / STD
    assert (out["pixel_values"][0] - expected).abs().mean() < 0.02
    # The low-res view is made from the normalized high-res tensor exactly as the model makes it.
    low = F.interpolate(out["pixel_values"], size=(56, 56), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out["low_res_pixel_values"], low, atol=1e-6, rtol=0)
    model = LookWhereModel(make_tiny_config()).eval()
    a = model(out["pixel_values"])
    b = model(**out)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)


def test_processor_input_kinds_and_modes(photos):
    image = photos["coffee"]
    processor = _processor()
    reference = processor(image, return_tensors="pt")["pixel_values"]
    for variant in (Image.fromarray(image), torch.from_numpy(image).permute(2, 0, 1), image.transpose(2, 0, 1)):
        torch.testing.assert_close(processor(variant, return_tensors="pt")["pixel_values"], reference, atol=0.02, rtol=0)
    batch = processor([image, photos["chelsea"]], return_tensors="pt")
    assert batch["pixel_values"].shape == (2, 3, 112, 112) and batch["low_res_pixel_values"].shape == (2, 3, 56, 56)
    gray = processor(Image.fromarray(image).convert("L"), return_tensors="pt")["pixel_values"]
    assert gray.shape == (1, 3, 112, 112)
    rgba = processor(Image.fromarray(image).convert("RGBA"), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(rgba, reference, atol=0.02, rtol=0)
    gray_np = processor(np.asarray(Image.fromarray(image).convert("L")), return_tensors="pt")["pixel_values"]
    assert gray_np.shape == (1, 3, 112, 112)


def test_processor_non_square_and_save_load(tmp_path):
    processor = LookWhereImageProcessor(size={"height": 126, "width": 84}, low_res_antialias=True)
    out = processor(np.random.randint(0, 255, (200, 100, 3), dtype=np.uint8), return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 126, 84)
    processor.save_pretrained(tmp_path)
    loaded = LookWhereImageProcessor.from_pretrained(tmp_path)
    assert loaded.size.height == 126 and loaded.low_res_antialias is True


def test_processor_rejects_bad_sizes():
    with pytest.raises(ValueError, match="low_res_size"):
        LookWhereImageProcessor(low_res_size={"height": 0, "width": 154})


def test_post_process_semantic_segmentation():
    logits = torch.randn(2, 4, 8, 8)
    processor = _processor()
    maps = processor.post_process_semantic_segmentation(type("O", (), {"logits": logits})(), target_sizes=[(30, 40), (8, 8)])
    assert maps[0].shape == (30, 40) and torch.equal(maps[1], logits[1].argmax(0))
    up = F.interpolate(logits[:1], size=(30, 40), mode="bilinear", align_corners=False)
    assert torch.equal(maps[0], up[0].argmax(0))
    with pytest.raises(ValueError, match="target_sizes"):
        processor.post_process_semantic_segmentation(type("O", (), {"logits": logits})(), target_sizes=[(1, 1)])


def _save(tmp_path, cls, **config_kwargs):
    config = make_tiny_config(**config_kwargs)
    model = cls(config).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path)
    _processor().save_pretrained(tmp_path)
    return model


def test_auto_image_processor_found_from_model_folder(tmp_path):
    _save(tmp_path, LookWhereModel)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), LookWhereImageProcessor)


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_image_classification_pipeline_equals_manual_forward(tmp_path, photos, name):
    labels = {0: "cat", 1: "dog", 2: "person", 3: "cup"}
    model = _save(tmp_path, LookWhereForImageClassification, num_labels=4, id2label=labels, label2id={v: k for k, v in labels.items()})
    classifier = pipeline("image-classification", model=str(tmp_path))
    image = Image.fromarray(photos[name])
    result = classifier(image, top_k=4)
    with torch.no_grad():
        probs = model(**_processor()(image, return_tensors="pt")).logits.softmax(-1)[0]
    assert [r["label"] for r in result] == [labels[i] for i in probs.argsort(descending=True).tolist()]
    np.testing.assert_allclose([r["score"] for r in result], probs.sort(descending=True).values.numpy(), atol=1e-5)


def test_image_segmentation_pipeline_equals_manual_forward(tmp_path, photos):
    labels = {0: "background", 1: "sky", 2: "person"}
    model = _save(tmp_path, LookWhereForSemanticSegmentation, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    segmenter = pipeline("image-segmentation", model=str(tmp_path))
    image = Image.fromarray(photos["chelsea"])
    result = segmenter(image)
    logits = model(**_processor()(image, return_tensors="pt")).logits
    expected = F.interpolate(logits, size=(image.height, image.width), mode="bilinear", align_corners=False)[0].argmax(0)
    assert {r["label"] for r in result} == {labels[i] for i in expected.unique().tolist()}
    for r in result:
        class_id = {v: k for k, v in labels.items()}[r["label"]]
        mask = np.array(r["mask"]) > 0
        np.testing.assert_array_equal(mask, (expected == class_id).numpy())


def test_image_feature_extraction_pipeline_equals_manual_forward(tmp_path, photos):
    model = _save(tmp_path, LookWhereModel)
    extractor = pipeline("image-feature-extraction", model=str(tmp_path))
    image = Image.fromarray(photos["astronaut"])
    features = np.array(extractor(image))
    expected = model(**_processor()(image, return_tensors="pt")).last_hidden_state
    np.testing.assert_allclose(features, expected.detach().numpy(), atol=1e-5)
    pooled = np.array(extractor(image, pool=True))
    np.testing.assert_allclose(pooled[0], expected[0, 0].detach().numpy(), atol=1e-5)
