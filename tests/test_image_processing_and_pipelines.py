"""LookWhereImageProcessor and the transformers pipelines on real photographs."""

import builtins
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import EPS32, make_tiny_config
from PIL import Image
from transformers import AutoImageProcessor, SegformerImageProcessor, pipeline
from transformers.image_processing_outputs import (
    SemanticSegmentationPostProcessorOutput,
)

from lookwhere_hf import (
    LookWhereForImageClassification,
    LookWhereForSemanticSegmentation,
    LookWhereImageProcessor,
    LookWhereModel,
)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _processor(**kwargs):
    return LookWhereImageProcessor(
        size={"height": 112, "width": 112}, low_res_size={"height": 56, "width": 56}, **kwargs
    )


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
    # PIL's and torch's antialiased bicubic kernels differ on edges by about one grey level on average (both round to
    # uint8): 0.02 in normalized units is 0.02 * 255 * 0.225 = 1.15 grey levels.
    assert (out["pixel_values"][0] - expected).abs().mean() < 0.02
    # The low-res view is made from the normalized high-res tensor exactly as the model makes it.
    low = F.interpolate(out["pixel_values"], size=(56, 56), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out["low_res_pixel_values"], low, atol=0, rtol=0)  # the same call on the same tensor
    model = LookWhereModel(make_tiny_config()).eval()
    a = model(out["pixel_values"])
    b = model(**out)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)


def test_processor_input_kinds_and_modes(photos):
    image = photos["coffee"]
    processor = _processor()
    reference = processor(image, return_tensors="pt")["pixel_values"]
    # Every input kind becomes the same uint8 array before any arithmetic: the same numbers, bit for bit.
    for variant in (Image.fromarray(image), torch.from_numpy(image).permute(2, 0, 1), image.transpose(2, 0, 1)):
        torch.testing.assert_close(processor(variant, return_tensors="pt")["pixel_values"], reference, atol=0, rtol=0)
    batch = processor([image, photos["chelsea"]], return_tensors="pt")
    assert batch["pixel_values"].shape == (2, 3, 112, 112) and batch["low_res_pixel_values"].shape == (2, 3, 56, 56)
    gray = processor(Image.fromarray(image).convert("L"), return_tensors="pt")["pixel_values"]
    assert gray.shape == (1, 3, 112, 112)
    rgba = processor(Image.fromarray(image).convert("RGBA"), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(rgba, reference, atol=0, rtol=0)  # opaque alpha dropped: the same array
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


def test_post_process_semantic_segmentation_matches_segformer_api():
    """Same signature and numbers as transformers' Segformer post-processing (maps, scores, tensor target sizes)."""
    torch.manual_seed(0)
    outputs = type("O", (), {"logits": torch.randn(2, 4, 8, 8)})()
    processor, segformer = _processor(), SegformerImageProcessor()
    sizes = [(30, 40), (8, 8)]
    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
    assert [m.shape for m in maps] == [(30, 40), (8, 8)]
    for ours, theirs in zip(maps, segformer.post_process_semantic_segmentation(outputs, target_sizes=sizes)):
        assert torch.equal(ours, theirs)
    scored = processor.post_process_semantic_segmentation(
        outputs, target_sizes=torch.tensor(sizes), return_segmentation_scores=True
    )
    reference = segformer.post_process_semantic_segmentation(
        outputs, target_sizes=sizes, return_segmentation_scores=True
    )
    for ours, theirs in zip(scored, reference):
        assert isinstance(ours, SemanticSegmentationPostProcessorOutput)
        assert torch.equal(ours.segmentation, theirs.segmentation)
        assert torch.equal(ours.segmentation_scores, theirs.segmentation_scores)
    on_grid = processor.post_process_semantic_segmentation(outputs, return_segmentation_scores=True)
    assert torch.equal(on_grid[1].segmentation, outputs.logits[1].argmax(0))
    assert torch.equal(on_grid[1].segmentation_scores, outputs.logits[1])
    with pytest.raises(ValueError, match="target_sizes"):
        processor.post_process_semantic_segmentation(outputs, target_sizes=[(1, 1)])
    with pytest.raises(ValueError, match="positive"):
        processor.post_process_semantic_segmentation(outputs, target_sizes=[(0, 5), (8, 8)])


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


def test_processor_saved_alone_loads_with_auto_image_processor(tmp_path, photos):
    processor = LookWhereImageProcessor(size={"height": 126, "width": 84}, low_res_size={"height": 42, "width": 28})
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "LookWhereImageProcessor"
    assert saved["auto_map"] == {"AutoImageProcessor": "image_processing_lookwhere.LookWhereImageProcessor"}
    assert (tmp_path / "image_processing_lookwhere.py").is_file() and (tmp_path / "selection.py").is_file()
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is LookWhereImageProcessor and loaded.to_dict() == processor.to_dict()
    expected = processor(photos["coffee"], return_tensors="pt")
    got = loaded(photos["coffee"], return_tensors="pt")
    assert all(torch.equal(got[key], expected[key]) for key in ("pixel_values", "low_res_pixel_values"))


def test_model_folder_holds_no_processor_code_of_its_own(tmp_path):
    """The model's config.json no longer names the image processor: the processor's own file does."""
    _tiny = LookWhereForImageClassification(make_tiny_config(num_labels=2))
    _tiny.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert "AutoImageProcessor" not in auto_map and auto_map["AutoModelForImageClassification"].startswith("modeling_")
    assert not (tmp_path / "image_processing_lookwhere.py").exists()
    _processor().save_pretrained(tmp_path)
    assert (tmp_path / "image_processing_lookwhere.py").is_file()


@pytest.fixture
def no_prompt(monkeypatch):
    """Fails the test if anything asks the user whether to run custom code."""
    prompts = []
    monkeypatch.setattr(builtins, "input", lambda *args: prompts.append(args) or "n")
    yield prompts
    assert prompts == [], f"prompted: {prompts}"


@pytest.mark.parametrize("task", ["image-classification", "image-segmentation", "image-feature-extraction"])
def test_pipelines_load_without_prompting(tmp_path, photos, no_prompt, task):
    """With lookwhere_hf imported, no pipeline asks about remote code: the processor's auto_map entry is not taken for
    a remote video processor (LookWhere registers that it has none)."""
    cls = {
        "image-classification": LookWhereForImageClassification,
        "image-segmentation": LookWhereForSemanticSegmentation,
    }
    _save(tmp_path, cls.get(task, LookWhereModel), num_labels=3)
    assert "auto_map" in json.loads((tmp_path / "preprocessor_config.json").read_text())
    runner = pipeline(task, model=str(tmp_path))
    assert isinstance(runner.image_processor, LookWhereImageProcessor)
    assert getattr(runner, "video_processor", None) is None
    runner(Image.fromarray(photos["coffee"]))


def test_folder_saved_before_the_processor_carried_its_auto_map_still_loads(tmp_path, photos, no_prompt):
    """Folders written by earlier versions: the processor named only in config.json's auto_map, not in its file."""
    model = _save(tmp_path, LookWhereForImageClassification, num_labels=3)
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"]["AutoImageProcessor"] = "image_processing_lookwhere.LookWhereImageProcessor"
    (tmp_path / "config.json").write_text(json.dumps(config))
    settings = json.loads((tmp_path / "preprocessor_config.json").read_text())
    del settings["image_processor_type"], settings["auto_map"]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings))
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), LookWhereImageProcessor)
    image = Image.fromarray(photos["chelsea"])
    scores = pipeline("image-classification", model=str(tmp_path))(image, top_k=3)
    with torch.no_grad():
        probs = model(**_processor()(image, return_tensors="pt")).logits.softmax(-1)[0]
    # the same logits (same forward), softmaxed by two float32 implementations: each probability (<= 1) is within
    # (n + 3) u of exact for n = 3 classes, so they differ by <= (n + 3) EPS32
    np.testing.assert_allclose(sorted(r["score"] for r in scores), sorted(probs.tolist()), atol=6 * EPS32, rtol=0)


@pytest.mark.slow
def test_processor_folder_and_pipeline_with_trust_remote_code_alone(tmp_path, photos):
    """In a fresh process that never imports lookwhere_hf: a processor folder loads on its own, and a model folder
    runs in pipeline() with trust_remote_code=True, same numbers as here, and nothing prompts."""
    processor = _processor(low_res_antialias=True)
    processor.save_pretrained(tmp_path / "processor")
    model = _save(tmp_path / "model", LookWhereForImageClassification, num_labels=3)
    image = photos["astronaut"]
    np.save(tmp_path / "image.npy", image)
    expected_pixels = processor(image, return_tensors="pt")
    with torch.no_grad():
        expected_probs = model(**_processor()(image, return_tensors="pt")).logits.softmax(-1)[0]
    script = textwrap.dedent(
        f"""
        import builtins, os, sys, json
        import numpy as np, torch
        builtins.input = lambda *args: os._exit(3)  # a prompt for remote code fails the test
        torch.set_num_threads({torch.get_num_threads()})  # the parent's thread count: the same kernels, same logits
        from transformers import AutoImageProcessor, pipeline
        image = np.load({str(tmp_path / "image.npy")!r})
        processor = AutoImageProcessor.from_pretrained({str(tmp_path / "processor")!r}, trust_remote_code=True)
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        out = processor(image, return_tensors="pt")
        torch.save({{k: out[k] for k in ("pixel_values", "low_res_pixel_values")}}, {str(tmp_path / "pixels.pt")!r})
        classifier = pipeline("image-classification", model={str(tmp_path / "model")!r}, trust_remote_code=True)
        result = classifier(image, top_k=3)
        assert "lookwhere_hf" not in sys.modules, "lookwhere_hf was imported"
        json.dump(result, open({str(tmp_path / "result.json")!r}, "w"))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pixels = torch.load(tmp_path / "pixels.pt")
    assert all(torch.equal(pixels[k], expected_pixels[k]) for k in ("pixel_values", "low_res_pixel_values"))
    scores = json.loads((tmp_path / "result.json").read_text())
    labels = model.config.id2label
    expected = {labels[i]: p for i, p in enumerate(expected_probs.tolist())}
    got = [r["score"] for r in scores]
    np.testing.assert_allclose(got, [expected[r["label"]] for r in scores], atol=6 * EPS32, rtol=0)  # as above


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_image_classification_pipeline_equals_manual_forward(tmp_path, photos, name):
    labels = {0: "cat", 1: "dog", 2: "person", 3: "cup"}
    model = _save(
        tmp_path,
        LookWhereForImageClassification,
        num_labels=4,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    classifier = pipeline("image-classification", model=str(tmp_path))
    image = Image.fromarray(photos[name])
    result = classifier(image, top_k=4)
    with torch.no_grad():
        probs = model(**_processor()(image, return_tensors="pt")).logits.softmax(-1)[0]
    # no near-tie between classes (gaps above the two softmaxes' difference below), so the order is the same
    assert (probs.sort(descending=True).values.diff().abs() > 14 * EPS32).all()
    assert [r["label"] for r in result] == [labels[i] for i in probs.argsort(descending=True).tolist()]
    # as above, n = 4 classes
    expected = probs.sort(descending=True).values.numpy()
    np.testing.assert_allclose([r["score"] for r in result], expected, atol=7 * EPS32, rtol=0)


def test_image_segmentation_pipeline_equals_manual_forward(tmp_path, photos):
    labels = {0: "background", 1: "sky", 2: "person"}
    model = _save(
        tmp_path,
        LookWhereForSemanticSegmentation,
        num_labels=3,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    segmenter = pipeline("image-segmentation", model=str(tmp_path))
    image = Image.fromarray(photos["chelsea"])
    result = segmenter(image)
    logits = model(**_processor()(image, return_tensors="pt")).logits
    expected = F.interpolate(logits, size=(image.height, image.width), mode="bilinear", align_corners=False)[0].argmax(
        0
    )
    # the pipeline post-processes with the same resize and argmax on the same logits: exact, ties included
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
    np.testing.assert_array_equal(features, expected.detach().numpy())  # the same forward on the same input
    pooled = np.array(extractor(image, pool=True))
    np.testing.assert_array_equal(pooled[0], expected[0, 0].detach().numpy())
