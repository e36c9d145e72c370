"""The official GFNet checkpoint converter against an independent forward of the official architecture.

`tests/gfnet_reference.py` writes official-format checkpoints (the release's keys, `module.` prefixes, stored FLOPs
and thresholds) with random weights and runs them the way the official `inference.py` does, with torchvision / timm
modules. The converted folder must give the same per-step logits and the same crop boxes.
"""

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import EPS64
from gfnet_reference import make_official_checkpoint
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

from lookwhere_hf.cli import main as cli_main
from lookwhere_hf.models.glance_focus.convert_gfnet_original_to_hf import (
    ConversionError,
    convert_checkpoint,
    convert_state_dict,
    load_original_checkpoint,
    normalize_checkpoint,
    push_folder_to_hub,
    read_architecture,
)

PATCH = 96
NUM_CLASSES = 10
BUDGET_GFLOPS = 3.0
# Two float64 evaluations of the same network by different code (transformers' ResNet / timm wrapper and our GRU
# cells vs torchvision / timm and nn.GRU): each layer's sums of <= 6400 terms (the widest: the cascade's fc_5 on
# 5 x 1280 features) differ by <= 6400 * EPS64 relative, over < 40 layers, with activations of O(1)
# (BatchNorm-calibrated random weights) and an amplification < 100: < 100 * 40 * 6400 * EPS64 ~= 6e-9 of the logits'
# scale. Float32 rounding anywhere (>= 6e-8 relative) or a wrong tensor is far above it.
FLOAT64_LOGIT_RTOL = 100 * 40 * 6400 * EPS64
# Reduced where the converter reads the size off the tensors (depths, hidden sizes, classes), the release's layout
# and key names everywhere else. MobileNet-V3 runs at full size (5M parameters); T as released (ResNet 5, MNv3 3).
CASES = {
    "resnet50": {
        "num_steps": 5,
        "sizes": {"resnet_depths": (1, 1, 1, 1), "policy_hidden": 32, "fc_hidden": 48, "policy_linear_width": 64},
    },
    "mobilenetv3_large_100": {"num_steps": 3, "sizes": {}},
}


def _make(arch: str, seed: int = 0, **kwargs):
    case = CASES[arch]
    return make_official_checkpoint(
        arch, PATCH, case["num_steps"], seed=seed, num_classes=NUM_CLASSES, **case["sizes"], **kwargs
    )


@pytest.fixture(scope="module", params=sorted(CASES))
def converted(request, tmp_path_factory):
    """An official-format checkpoint on disk, its reference model, and the converted folder (with the self-check)."""
    arch = request.param
    checkpoint, reference = _make(arch)
    root = tmp_path_factory.mktemp(arch)
    torch.save(checkpoint, root / "official.pth.tar")
    logs = []
    result = convert_checkpoint(root / "official.pth.tar", root / "hf", budget_gflops=BUDGET_GFLOPS, log=logs.append)
    return SimpleNamespace(arch=arch, checkpoint=checkpoint, reference=reference, result=result, folder=root / "hf",
                           logs=logs)  # fmt: skip


@pytest.fixture(scope="module")
def photo_batch(photos):
    """The three scikit-image photos through the official evaluation transform (resize 256, centre crop 224)."""
    from lookwhere_hf.models.glance_focus.image_processing_glance_focus import GlanceFocusImageProcessor

    processor = GlanceFocusImageProcessor()
    return processor(images=[photos[name] for name in sorted(photos)], return_tensors="pt")["pixel_values"]


def _assert_crop_margin(actions: torch.Tensor, side: int, margin: float) -> None:
    """Fail unless every `actions * (side - PATCH)` is more than `margin` away from an integer, so that two
    computations of the actions that agree within `margin / (side - PATCH)` floor them to the same crop."""
    scaled = actions.double() * (side - PATCH)
    distance = (scaled - scaled.round()).abs().min().item()
    assert distance > margin, f"near-tie: a crop corner is {distance:.3g} from an integer; choose another seed/input"


# ----------------------------------------------------------------------------------------------------- parity
def test_converted_model_matches_the_official_forward(converted, photo_batch):
    """Per-step logits and crop boxes of the converted folder (loaded with the Auto class) against the reference,
    in float64 on three real photos and one noise image."""
    noise = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    images = torch.cat([photo_batch, noise]).double()
    model = AutoModelForImageClassification.from_pretrained(converted.folder).double().eval()
    reference = converted.reference.double()
    with torch.no_grad():
        expected = reference(images)
        outputs = model(images, anytime=True)

    num_steps = CASES[converted.arch]["num_steps"]
    logits = outputs.rung_logits.transpose(0, 1)
    assert logits.shape == expected.step_logits.shape == (num_steps, 4, NUM_CLASSES)
    scale = expected.step_logits.abs().max().item()
    assert 1.0 < scale < 1e3
    torch.testing.assert_close(logits, expected.step_logits, rtol=0, atol=FLOAT64_LOGIT_RTOL * scale)
    # The crops: the same pixels. Ours are (x0, y0, x1, y1), the official rows / columns (top, left, bottom, right).
    _assert_crop_margin(expected.actions, 224, margin=1e-6)
    assert torch.equal(outputs.crop_boxes, expected.crop_boxes[..., [1, 0, 3, 2]])
    torch.testing.assert_close(outputs.crop_centers, expected.actions.flip(-1), rtol=0, atol=1e-10)
    # Crops spread over the image (not all at one place), so the test sees the policy and the crop rule at work.
    assert len({tuple(box) for box in expected.crop_boxes.reshape(-1, 4).tolist()}) == 4 * (num_steps - 1)


def test_official_rule_reproduced_with_processor_inputs_in_float32(converted, photos):
    """The folder's own processor (glance view included) and float32, as a user runs it: crop boxes equal the
    reference's, and the step predictions are the reference's (with a margin that float32 rounding cannot cross)."""
    processor = AutoImageProcessor.from_pretrained(converted.folder)
    inputs = processor(images=[photos[name] for name in sorted(photos)], return_tensors="pt")
    model = AutoModelForImageClassification.from_pretrained(converted.folder).eval()
    reference = converted.reference.float()
    with torch.no_grad():
        expected = reference(inputs["pixel_values"])
        outputs = model(**inputs, anytime=True)
    _assert_crop_margin(expected.actions, 224, margin=1e-3)
    assert torch.equal(outputs.crop_boxes, expected.crop_boxes[..., [1, 0, 3, 2]])
    top2 = expected.step_logits.topk(2, dim=-1).values
    assert (top2[..., 0] - top2[..., 1]).min() > 1e-3  # float32 differences (~1e-5 here) cannot swap the top class
    assert torch.equal(outputs.rung_logits.transpose(0, 1).argmax(-1), expected.step_logits.argmax(-1))


@pytest.mark.slow
def test_release_size_resnet50_matches_the_official_forward(tmp_path, photo_batch):
    """The released ResNet-50 model's exact sizes (depths 3-4-6-3, policy MLP 18432 -> 2048 -> 1024, GRU 1024, 1000
    classes, T = 5, 96 px): 108M parameters, float64 parity on the three photos."""
    checkpoint, reference = make_official_checkpoint("resnet50", PATCH, 5, seed=7)
    torch.save(checkpoint, tmp_path / "official.pth.tar")
    del checkpoint
    result = convert_checkpoint(tmp_path / "official.pth.tar", tmp_path / "hf", log=lambda *a: None)
    assert result.architecture.resnet_depths == (3, 4, 6, 3) and result.config.policy_mlp_size == 2048
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "hf").double().eval()
    with torch.no_grad():
        expected = reference.double()(photo_batch.double())
        outputs = model(photo_batch.double(), anytime=True)
    _assert_crop_margin(expected.actions, 224, margin=1e-6)
    assert torch.equal(outputs.crop_boxes, expected.crop_boxes[..., [1, 0, 3, 2]])
    scale = expected.step_logits.abs().max().item()
    # Depth 50 instead of < 40 layers: the bound scales with the depth, 2x covers it.
    atol = 2 * FLOAT64_LOGIT_RTOL * scale
    torch.testing.assert_close(outputs.rung_logits.transpose(0, 1), expected.step_logits, rtol=0, atol=atol)


# ----------------------------------------------------------------------------------------------------- metadata
def test_config_carries_architecture_and_stored_budget(converted):
    config, checkpoint = converted.result.config, converted.checkpoint
    arch = converted.arch
    assert config.num_steps == CASES[arch]["num_steps"] and config.patch_size == PATCH and config.glance_side == PATCH
    assert config.num_labels == NUM_CLASSES and config.glance_interpolation == "bicubic"
    assert config.classifier_type == ("gru" if arch == "resnet50" else "concat")
    assert config.glance_logits == ("classifier" if arch == "resnet50" else "glance_head")
    # 2 FLOPs per stored Multiply-Add (stored as raw counts).
    assert config.budget_rung_gflops == pytest.approx([2 * f / 1e9 for f in checkpoint["flops"]], rel=1e-12)
    # The stored profile: the most accurate one whose recorded cost fits the budget.
    costs = [2 * f / 1e9 for f in checkpoint["budgeted_batch_classification"][0]]
    accuracy = checkpoint["budgeted_batch_classification"][1]
    best = max((i for i, c in enumerate(costs) if c <= BUDGET_GFLOPS), key=lambda i: accuracy[i])
    row = checkpoint["dynamic_threshold"][best].tolist()
    assert config.budget_thresholds == [t if t <= 1 else 2.0 for t in row[:-1]]
    assert config.budget_expected_gflops == pytest.approx(costs[best])
    assert config.budget_calibration_accuracy == pytest.approx(accuracy[best] / 100)
    if arch == "mobilenetv3_large_100":  # T = 3: the cascade's fc_4 / fc_5 are reported, not silently dropped
        assert sorted(converted.result.skipped) == ["fc.fc_4.bias", "fc.fc_4.weight", "fc.fc_5.bias", "fc.fc_5.weight"]
        assert any("fc_4" in line for line in converted.logs)


def test_pipeline_runs_budgeted_with_the_stored_thresholds(converted, photos):
    """pipeline("image-classification") on the converted folder exits by the stored thresholds: each image's logits
    are the anytime logits of its exit step, the first step whose confidence reaches the threshold."""
    model = AutoModelForImageClassification.from_pretrained(converted.folder).eval()
    processor = AutoImageProcessor.from_pretrained(converted.folder)
    images = [photos[name] for name in sorted(photos)]
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        anytime = model(**inputs, anytime=True)
        budgeted = model(**inputs)
    thresholds = model.config.budget_thresholds
    confidence = anytime.rung_logits.transpose(0, 1).softmax(-1).amax(-1)  # (T, B)
    gaps = (confidence[:-1] - torch.tensor(thresholds)[:, None]).abs()
    assert gaps.min() > 1e-4  # no confidence within float32 noise of its threshold
    passing = torch.cat([confidence[:-1] >= torch.tensor(thresholds)[:, None], torch.ones(1, len(images), dtype=bool)])
    exit_rung = passing.int().argmax(0)
    assert torch.equal(budgeted.exit_rung, exit_rung)
    chosen = anytime.rung_logits.transpose(0, 1)[exit_rung, torch.arange(len(images))]
    torch.testing.assert_close(budgeted.logits, chosen, rtol=0, atol=1e-4 * max(1.0, chosen.abs().max().item()))
    classify = pipeline("image-classification", model=model, image_processor=processor)
    predictions = classify([photos[name] for name in sorted(photos)], top_k=1)
    assert [p[0]["label"] for p in predictions] == [model.config.id2label[int(i)] for i in budgeted.logits.argmax(-1)]


# ----------------------------------------------------------------------------------------------------- other inputs
def test_training_checkpoint_without_metadata_converts_with_flags(tmp_path):
    """A stage-2/3 training checkpoint (`train.py`'s save: no `module.` prefix, no model_name / patch_size / flops)
    converts when they are given, and the same weights give the same model as the released layout."""
    checkpoint, reference = _make("mobilenetv3_large_100", seed=3, data_parallel_prefix=False, with_results=False)
    torch.save(checkpoint | {"model_name": None, "patch_size": None} | {"epoch": 15}, tmp_path / "ckpt.pth.tar")
    with pytest.raises(ConversionError, match="--model_name and --patch_size"):
        convert_checkpoint(tmp_path / "ckpt.pth.tar", tmp_path / "out", run_self_check=False, log=lambda *a: None)
    result = convert_checkpoint(tmp_path / "ckpt.pth.tar", tmp_path / "out", model_name="mobilenetv3_large_100",
                                patch_size=PATCH, num_steps=3, run_self_check=False, log=lambda *a: None)  # fmt: skip
    assert result.config.budget_thresholds is None and result.config.budget_rung_gflops is None
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "out").double().eval()
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        expected, outputs = reference.double()(images), model(images)
    _assert_crop_margin(expected.actions, 224, margin=1e-6)
    assert torch.equal(outputs.crop_boxes, expected.crop_boxes[..., [1, 0, 3, 2]])
    scale = expected.step_logits.abs().max().item()
    torch.testing.assert_close(
        outputs.rung_logits.transpose(0, 1), expected.step_logits, rtol=0, atol=FLOAT64_LOGIT_RTOL * scale
    )


@pytest.fixture(scope="module")
def small_checkpoint():
    """A normalized tiny-ResNet checkpoint (dicts only) for the error tests."""
    checkpoint, _ = _make("resnet50", seed=5)
    return checkpoint


def _edited(checkpoint, part=None, drop=None, add=None, **top):
    copy = {key: dict(value) if isinstance(value, dict) else value for key, value in checkpoint.items()} | top
    if drop:
        del copy[part][drop]
    if add:
        copy[part][add] = torch.zeros(1)
    return normalize_checkpoint(copy)


def _convert_dicts(checkpoint):
    """Architecture + renaming of a checkpoint held in memory, against the model's shapes."""
    from lookwhere_hf.models.glance_focus.convert_gfnet_original_to_hf import build_config
    from lookwhere_hf.models.glance_focus.modeling_glance_focus import GlanceFocusForImageClassification

    arch = read_architecture(checkpoint)
    with torch.device("meta"):
        model = GlanceFocusForImageClassification(build_config(arch))
    return convert_state_dict(checkpoint, arch, {k: v.shape for k, v in model.state_dict().items()})


def test_bad_checkpoints_raise_clear_errors(small_checkpoint, tmp_path):
    good = normalize_checkpoint(small_checkpoint)
    state, skipped = _convert_dicts(good)
    assert not skipped and "policy.actor.0.weight" in state
    # The actor's outputs are swapped from (row, column) to (x, y).
    assert torch.equal(state["policy.actor.0.weight"], good["policy"]["actor.0.weight"][[1, 0]])
    cases = [
        (_edited(small_checkpoint, model_name="densenet121"), "not supported"),
        (_edited(small_checkpoint, patch_size=128), "is patch_size 128 right"),
        (_edited(small_checkpoint, "policy", add="extra.weight"), "no place in the model"),
        (_edited(small_checkpoint, "model_state_dict", drop="module.layer2.0.bn3.running_var"), "lacks"),
    ]
    for checkpoint, message in cases:
        with pytest.raises(ConversionError, match=message):
            _convert_dicts(checkpoint)
    with pytest.raises(ConversionError, match="lacks \\['policy'\\].*stage-1"):
        normalize_checkpoint({k: v for k, v in small_checkpoint.items() if k != "policy"})
    with pytest.raises(ConversionError, match="contradicts"):
        read_architecture(good, num_steps=3)
    # Files.
    with pytest.raises(ConversionError, match="does not exist"):
        load_original_checkpoint(tmp_path / "missing.pth.tar")
    (tmp_path / "text.pth.tar").write_text("not a checkpoint")
    with pytest.raises(ConversionError, match="not a PyTorch checkpoint"):
        load_original_checkpoint(tmp_path / "text.pth.tar")
    torch.save({"model_name": "resnet50", "obj": SimpleNamespace(a=1)}, tmp_path / "pickled.pth.tar")
    with pytest.raises(ConversionError, match="--allow_pickle"):
        load_original_checkpoint(tmp_path / "pickled.pth.tar")
    torch.save(small_checkpoint, tmp_path / "small.pth.tar")
    with pytest.raises(ConversionError, match="offline mode is on"):
        push_folder_to_hub(tmp_path, "user/gfnet-resnet50-96")
    with pytest.raises(ConversionError, match="No stored exit profile fits 0.5 GFLOPs"):
        convert_checkpoint(tmp_path / "small.pth.tar", tmp_path / "out", budget_gflops=0.5, run_self_check=False,
                           log=lambda *a: None)  # fmt: skip


def test_flops_unit_is_read_off_the_magnitude():
    from lookwhere_hf.models.glance_focus.convert_gfnet_original_to_hf import flops_scale

    assert flops_scale([4.1e8, 8.5e8]) == (1.0, "madds")
    assert flops_scale([410.0, 850.0]) == (1e6, "mega_madds")
    assert flops_scale([0.41, 0.85]) == (1e9, "giga_madds")
    assert flops_scale([0.41, 0.85], "mega_madds") == (1e6, "mega_madds")
    with pytest.raises(ConversionError, match="--flops_unit"):
        flops_scale([1.0], "tflops")


def test_stored_results_as_numpy_or_tensors(small_checkpoint):
    """The stored numbers may be Python floats, NumPy scalars / arrays or tensors; thresholds outside [0, 1] become
    "never exit" (above 1) or "always exit" (below 0)."""
    import numpy as np

    from lookwhere_hf.models.glance_focus.convert_gfnet_original_to_hf import budget_fields

    checkpoint = normalize_checkpoint(small_checkpoint)
    arch = read_architecture(checkpoint)
    table = checkpoint["dynamic_threshold"].numpy().copy()
    table[:, 0] = -1e8  # every image exits at the glance
    variants = {
        "flops": np.asarray(checkpoint["flops"], dtype=np.float32),
        "dynamic_threshold": table,
        "budgeted_batch_classification": [torch.tensor(v) for v in checkpoint["budgeted_batch_classification"]],
    }
    fields = budget_fields(checkpoint | variants, arch, budget_gflops=BUDGET_GFLOPS, log=lambda *a: None)
    expected = budget_fields(checkpoint, arch, budget_gflops=BUDGET_GFLOPS, log=lambda *a: None)
    assert fields["budget_thresholds"][0] == 0.0 and expected["budget_thresholds"][0] > 0.0
    assert fields["budget_thresholds"][1:] == expected["budget_thresholds"][1:]
    assert fields["budget_rung_gflops"] == pytest.approx(expected["budget_rung_gflops"], rel=1e-6)  # float32 storage
    assert 2.0 in budget_fields(checkpoint, arch, budget_gflops=1.6, log=lambda *a: None)["budget_thresholds"]
    with pytest.raises(ConversionError, match="non-number"):
        budget_fields(checkpoint | {"flops": ["1e9", 2e9]}, arch, log=lambda *a: None)


# ----------------------------------------------------------------------------------------------------- command line
@pytest.mark.slow
def test_command_line_entry_points(small_checkpoint, tmp_path, capsys):
    """`python -m ...convert_gfnet_original_to_hf` and `lookwhere-hf convert-gfnet`: a folder that loads, exit 0;
    a bad file: exit 2 with a one-line message."""
    torch.save(small_checkpoint, tmp_path / "official.pth.tar")
    module = "lookwhere_hf.models.glance_focus.convert_gfnet_original_to_hf"
    run = subprocess.run(
        [sys.executable, "-m", module, "--checkpoint_path", str(tmp_path / "official.pth.tar"), "--output_dir",
         str(tmp_path / "a"), "--skip_self_check"], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "a" / "config.json").is_file() and (tmp_path / "a" / "preprocessor_config.json").is_file()
    assert cli_main(["convert-gfnet", "--checkpoint_path", str(tmp_path / "nope.pth.tar"), "--output_dir",
                     str(tmp_path / "b")]) == 2  # fmt: skip
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["convert-gfnet", "--checkpoint_path", str(tmp_path / "official.pth.tar"), "--output_dir",
                     str(tmp_path / "b"), "--skip_self_check"]) == 0  # fmt: skip
    assert AutoModelForImageClassification.from_pretrained(tmp_path / "b").config.num_steps == 5
    # Both entry points wrote the same weights.
    from safetensors.torch import load_file

    first, second = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
