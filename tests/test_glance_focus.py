"""Glance-and-Focus (issue 13): the model family on tiny backbones (ResNet, ConvNeXt, MobileNetV2, DINOv2 with
registers, a timm model through TimmWrapper), the policy, the budgeted forward, FLOPs, save / load and the pipeline."""

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FLOAT64_TOLERANCE
from huggingface_hub.errors import StrictDataclassClassValidationError
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    BertConfig,
    ConvNextConfig,
    Dinov2WithRegistersConfig,
    MobileNetV2Config,
    ResNetConfig,
    TimmWrapperConfig,
    ViTConfig,
    pipeline,
)

from lookwhere_hf import GlanceFocusConfig, GlanceFocusForImageClassification, GlanceFocusImageProcessor, cli
from lookwhere_hf.budget import NEVER_EXIT, calibrate_budget, simulate_exits
from lookwhere_hf.models.glance_focus.modeling_glance_focus import _confidence, crop_boxes_from_centers, crop_patches

SIZE, PATCH, STEPS, NUM_LABELS = 64, 32, 4, 4

BACKBONES = {
    "resnet": lambda: ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", downsample_in_first_stage=False
    ),
    "convnext": lambda: ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2),
    "mobilenet_v2": lambda: MobileNetV2Config(depth_multiplier=0.35, image_size=PATCH),
    "dinov2_with_registers": lambda: Dinov2WithRegistersConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        patch_size=8,
        image_size=PATCH,
        num_register_tokens=2,
    ),
    "vit": lambda: ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, patch_size=8, image_size=PATCH
    ),
    # timm's own tiny test architecture: built from the config alone, no download
    "timm_wrapper": lambda: TimmWrapperConfig(architecture="test_efficientnet"),
}


def make_config(backbone="resnet", **kwargs) -> GlanceFocusConfig:
    settings = dict(
        backbone_config=BACKBONES[backbone](),
        image_size=SIZE,
        patch_size=PATCH,
        num_steps=STEPS,
        classifier_hidden_size=16,
        policy_hidden_size=16,
        policy_mlp_size=32,
        num_labels=NUM_LABELS,
    )
    return GlanceFocusConfig(**{**settings, **kwargs})


def make_model(backbone="resnet", dtype=torch.float64, seed=0, **kwargs) -> GlanceFocusForImageClassification:
    """A tiny model in eval mode with perturbed weights, so that confidences and crop centres spread out instead of
    sitting at the uniform 1/4 and the image centre of a fresh initialisation."""
    torch.manual_seed(seed)
    model = GlanceFocusForImageClassification._from_config(
        make_config(backbone, **kwargs), attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "backbone" not in name and param.ndim > 1:  # weights only: no bias picks one class for all
                param.add_(torch.randn_like(param) * 0.5)
    return model.to(dtype)


def images(count, seed=1, dtype=torch.float64, size=SIZE):
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def confidences_of(rung_logits):
    return rung_logits.softmax(-1).amax(-1)  # (B, T)


def corner_margin(centers: torch.Tensor, free: int) -> float:
    """Smallest distance of `centers * free` to an integer: crop corners (floors) of two computations that agree to
    within this are the same, so comparing their boxes does not depend on a near-tie."""
    scaled = centers.double() * free
    return float((scaled - scaled.round()).abs().min())


@pytest.fixture(scope="module")
def model():
    return make_model()


# ----------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_backbone_gives_the_documented_outputs_and_the_official_loss(backbone):
    model = make_model(backbone)
    batch, labels = images(3), torch.tensor([0, 3, 1])
    out = model(batch, labels=labels, return_policy=True)
    channels, height, width = model.policy.state_shape
    assert out.rung_logits.shape == (3, STEPS, NUM_LABELS)
    assert torch.equal(out.logits, out.rung_logits[:, -1])
    assert out.crop_boxes.shape == (3, STEPS - 1, 4) and out.crop_centers.shape == (3, STEPS - 1, 2)
    assert out.policy_states.shape == (3, STEPS - 1, channels, height, width)
    assert out.policy_actions.shape == (3, STEPS - 1, 2)
    assert out.policy_log_probs.shape == out.state_values.shape == (3, STEPS - 1)
    assert out.exit_rung.tolist() == [STEPS - 1] * 3 and out.rung_flops.shape == (3, STEPS)
    ladder = out.rung_flops[0]
    assert bool((ladder[1:] > ladder[:-1]).all()) and torch.equal(out.flops, ladder[[-1] * 3])
    assert bool((out.rung_flops == ladder).all())
    assert torch.equal(out.policy_actions, out.crop_centers)
    # every crop lies inside the image and has the patch size
    x0, y0, x1, y1 = out.crop_boxes.unbind(-1)
    assert bool((x0 >= 0).all() and (y0 >= 0).all() and (x1 <= SIZE).all() and (y1 <= SIZE).all())
    assert bool((x1 - x0 == PATCH).all() and (y1 - y0 == PATCH).all())
    # the official stage-1/3 loss: (sum of the step losses + dsn_ratio * sum of the encoder heads' losses) / T
    expected = sum(F.cross_entropy(r, labels) for r in out.rung_logits.unbind(1))
    expected = (expected + sum(F.cross_entropy(e, labels) for e in out.encoder_logits.unbind(1))) / STEPS
    torch.testing.assert_close(out.loss, expected, **FLOAT64_TOLERANCE)


def test_vit_feature_map_is_the_patch_tokens_row_major():
    model = make_model("dinov2_with_registers")
    crop = images(2, size=PATCH)
    pooled, feature_map = model.focus_encoder(crop)
    tokens = model.focus_encoder.backbone(pixel_values=crop).last_hidden_state  # CLS, 2 registers, 4x4 patches
    assert feature_map.shape == (2, 16, 4, 4)
    torch.testing.assert_close(feature_map[:, :, 1, 2], tokens[:, 3 + 1 * 4 + 2], **FLOAT64_TOLERANCE)
    torch.testing.assert_close(pooled, tokens[:, 0], **FLOAT64_TOLERANCE)


def test_crop_boxes_follow_the_official_corner_rule_and_cut_those_pixels():
    # x is the column, y the row; 0 and 1 put the crop at the edges; corner = floor(fraction * free range)
    centers = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 0.25], [0.999, 0.001]])
    boxes = crop_boxes_from_centers(centers, height=48, width=80, patch_size=32)
    assert boxes.tolist() == [[0, 0, 32, 32], [48, 16, 80, 48], [24, 4, 56, 36], [47, 0, 79, 32]]
    picture = torch.arange(2 * 3 * 48 * 80, dtype=torch.float64).reshape(2, 3, 48, 80)
    rows = torch.tensor([1, 0, 1, 1])
    crops = crop_patches(picture, boxes, 32, rows)
    for crop, (x0, y0, x1, y1), row in zip(crops, boxes.tolist(), rows.tolist(), strict=True):
        assert torch.equal(crop, picture[row, :, y0:y1, x0:x1])


def test_given_crop_centers_replace_the_policy():
    model = make_model()
    batch = images(2)
    centers = torch.rand(2, STEPS - 1, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = model(batch, crop_centers=centers)
    assert torch.equal(out.crop_centers, centers)
    assert torch.equal(out.crop_boxes, crop_boxes_from_centers(centers, SIZE, SIZE, PATCH))
    # the first focus step's feature is the focus encoder on exactly that crop of the image
    x0, y0, x1, y1 = out.crop_boxes[1, 0].tolist()
    alone, _ = model.focus_encoder(batch[1:2, :, y0:y1, x0:x1])
    in_batch, _ = model.focus_encoder(crop_patches(batch, out.crop_boxes[:, 0], PATCH))
    torch.testing.assert_close(in_batch[1:2], alone, **FLOAT64_TOLERANCE)


# ----------------------------------------------------------------------------------------------------- policy
@torch.no_grad()
def test_each_focus_step_reads_the_previous_steps_feature_map(model):
    """The policy's state before focus step t is the feature map of step t - 1: the glance encoder's on the glance
    view for t = 1, then the focus encoder's on the previous crop (the official loop's `state` of `model(patches)`)."""
    batch = images(3)
    out = model(batch, return_policy=True)
    _, glance_map = model.glance_encoder(model.glance_view(batch))
    torch.testing.assert_close(out.policy_states[:, 0], glance_map, **FLOAT64_TOLERANCE)
    for step in range(1, STEPS - 1):
        _, crop_map = model.focus_encoder(crop_patches(batch, out.crop_boxes[:, step - 1], PATCH))
        torch.testing.assert_close(out.policy_states[:, step], crop_map, **FLOAT64_TOLERANCE)
        assert float((crop_map - glance_map).abs().max()) > 0.1  # not the glance's map again


def test_policy_evaluate_reproduces_the_rollout(model):
    out = model(images(4), return_policy=True, policy_mode="sample", generator=torch.Generator().manual_seed(2))
    actions = out.policy_actions
    assert bool(((actions >= 0) & (actions <= 1)).all())
    log_probs, values, entropy = model.policy.evaluate(out.policy_states, actions)
    torch.testing.assert_close(log_probs, out.policy_log_probs, **FLOAT64_TOLERANCE)
    torch.testing.assert_close(values, out.state_values, **FLOAT64_TOLERANCE)
    # an isotropic 2-D Gaussian with standard deviation 0.1: entropy 1 + log(2 pi) + 2 log(0.1)
    torch.testing.assert_close(entropy, torch.full_like(entropy, 1 + math.log(2 * math.pi) + 2 * math.log(0.1)))
    means, _ = model.policy(out.policy_states)
    sigma = model.config.policy_action_std
    closed_form = (-((actions - means) ** 2) / (2 * sigma**2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(log_probs, closed_form, **FLOAT64_TOLERANCE)
    # one state from a zero hidden state is the first step of the sequence
    first_mean, first_value = model.policy(out.policy_states[:, 0])
    torch.testing.assert_close(first_mean, means[:, 0], **FLOAT64_TOLERANCE)
    torch.testing.assert_close(first_value, values[:, 0], **FLOAT64_TOLERANCE)


def test_sampling_is_seeded_and_the_mean_mode_is_deterministic(model):
    batch = images(4)

    def sample(seed):
        return model(batch, policy_mode="sample", generator=torch.Generator().manual_seed(seed)).crop_centers

    assert torch.equal(sample(3), sample(3)) and not torch.equal(sample(3), sample(4))
    assert torch.equal(model(batch).crop_centers, model(batch).crop_centers)
    assert torch.unique(model(batch).crop_boxes[:, 0], dim=0).shape[0] > 1  # the policy looks at the image


def test_stage_one_gradients_reach_encoders_and_classifier_but_not_the_policy():
    model = make_model(dtype=torch.float32).train()
    centers = torch.rand(2, STEPS - 1, 2, generator=torch.Generator().manual_seed(0))
    model(images(2, dtype=torch.float32), labels=torch.tensor([1, 2]), crop_centers=centers).loss.backward()
    for name in ("glance_encoder", "focus_encoder", "classifier", "glance_head", "focus_head"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, name).parameters()), name
    assert all(p.grad is None for p in model.policy.parameters())


# ----------------------------------------------------------------------------------------------------- budget
@torch.no_grad()
def test_budgeted_output_equals_the_anytime_output_at_each_exit_step(model):
    batch = images(16)
    anytime = model(batch, anytime=True)
    confidences = confidences_of(anytime.rung_logits)
    thresholds = [float(confidences[:, t].median()) + 1e-3 for t in range(STEPS - 1)]
    assert float((confidences[:, :-1] - torch.tensor(thresholds)).abs().min()) > 1e-6  # no exit is a near-tie
    assert corner_margin(anytime.crop_centers, SIZE - PATCH) > 1e-6  # no crop corner is a near-tie
    budgeted = model(batch, exit_thresholds=thresholds)
    exits = budgeted.exit_rung
    assert len(set(exits.tolist())) >= 3  # the batch really splits over the steps
    assert torch.equal(exits, simulate_exits(confidences, thresholds))
    expected = torch.stack([anytime.rung_logits[i, s] for i, s in enumerate(exits.tolist())])
    torch.testing.assert_close(budgeted.logits, expected, **FLOAT64_TOLERANCE)
    assert torch.equal(budgeted.flops, anytime.rung_flops[0, exits]) and budgeted.rung_logits is None
    for i, s in enumerate(exits.tolist()):  # the same crops up to the exit, none after it
        assert torch.equal(budgeted.crop_boxes[i, :s], anytime.crop_boxes[i, :s])
        assert bool((budgeted.crop_boxes[i, s:] == -1).all()) and bool(budgeted.crop_centers[i, s:].isnan().all())


@torch.no_grad()
def test_an_image_exits_when_its_confidence_equals_the_threshold(model):
    """The exit rule is `confidence >= threshold` (the official `dynamic_evaluate`), not `>`: with the step-0
    threshold set to the batch's highest glance confidence (the same float64 numbers: the glance runs on the whole
    batch in both modes), exactly that image leaves at the glance."""
    batch = images(6)
    glance = _confidence(model(batch, anytime=True).rung_logits[:, 0])
    top, second = glance.topk(2).values.tolist()
    assert top - second > 1e-6  # one image alone has the top confidence
    exits = model(batch, exit_thresholds=[top] + [NEVER_EXIT] * (STEPS - 2)).exit_rung
    assert exits.tolist() == [0 if i == int(glance.argmax()) else STEPS - 1 for i in range(6)]


def test_saved_thresholds_switch_eval_mode_to_budgeted(model):
    batch = images(4)
    model.config.budget_thresholds = [0.0] * (STEPS - 1)
    try:
        assert model(batch).exit_rung.tolist() == [0] * 4
        assert model(batch, anytime=True).exit_rung.tolist() == [STEPS - 1] * 4
        model.config.use_budget = False
        assert model(batch).exit_rung.tolist() == [STEPS - 1] * 4
    finally:
        model.config.budget_thresholds, model.config.use_budget = None, True
    assert model(batch, exit_thresholds=[NEVER_EXIT] * (STEPS - 1)).exit_rung.tolist() == [STEPS - 1] * 4


# ----------------------------------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize(
    ("backbone", "glance_size"), [("resnet", PATCH), ("dinov2_with_registers", PATCH), ("resnet", 48)]
)
def test_rung_flops_are_what_the_flop_counter_sees_the_forward_compute(backbone, glance_size):
    # eager attention: FlopCounterMode counts its matmuls on every backend
    model = make_model(backbone, glance_size=glance_size)
    rung_flops = model.rung_flops()

    def counted(**kwargs):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(images(1), **kwargs)
        return counter.get_total_flops()

    assert counted(anytime=True) == rung_flops[-1]
    for step in range(STEPS - 1):  # budgeted: exit at `step` costs exactly the cumulative FLOPs of that step
        thresholds = [NEVER_EXIT] * step + [0.0] * (STEPS - 1 - step)
        assert counted(exit_thresholds=thresholds) == rung_flops[step]
    # the parts: each encoder alone, and the steps adding up to the cumulative costs
    parts = model.step_flops()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.glance_encoder(images(1, size=glance_size))
    assert parts["glance_encoder"] == counter.get_total_flops() > 0
    assert rung_flops[0] == parts["glance_encoder"] + parts["classifier"][0]
    step_cost = parts["policy"] + parts["focus_encoder"] + parts["classifier"][1]
    assert rung_flops[1] - rung_flops[0] == step_cost
    # a conv net's cost grows with the pixels: the 48 px glance costs more than a 32 px crop
    assert (parts["focus_encoder"] == parts["glance_encoder"]) == (glance_size == PATCH)


def test_default_config_is_the_official_resnet50_model_and_its_flops():
    """The defaults build the official ResNet-50 GFNet (96 px crops): built on the meta device (no weights, which also
    exercises the shape probe that `from_pretrained` runs there), its parts have the official shapes and FLOPs."""
    import torchvision

    with torch.device("meta"):
        model = GlanceFocusForImageClassification(GlanceFocusConfig(num_labels=1000))
        reference = torchvision.models.resnet50()
    assert model.policy.state_shape == (2048, 3, 3)  # 2048 x ceil(96 / 32)^2, the official state_dim
    assert model.policy.state_encoder[0].in_features == 2048 * 9 and model.policy.state_encoder[0].out_features == 2048
    assert model.classifier.rnn.weight_ih.shape == (3 * 1024, 2048) and model.classifier.fc.out_features == 1000
    parts = model.step_flops()
    with FlopCounterMode(display=False) as counter:
        reference(torch.zeros(1, 3, 96, 96, device="meta"))
    # transformers' ResNet-50 is torchvision's (less its 2048 -> 1000 fc), counted independently
    assert parts["glance_encoder"] == parts["focus_encoder"] == counter.get_total_flops() - 2 * 2048 * 1000
    # policy: Linear(18432, 2048), Linear(2048, 1024), GRU(1024, 1024) (two 1024 x 3072 products), actor 1024 x 2
    assert parts["policy"] == 2 * (18432 * 2048 + 2048 * 1024 + 2 * 1024 * 3072 + 1024 * 2)
    # classifier step: GRU(2048, 1024) and Linear(1024, 1000)
    assert parts["classifier"] == [2 * (2048 * 3072 + 1024 * 3072 + 1024 * 1000)] * 4


def test_rung_flops_count_sdpa_attention_like_eager():
    eager = make_model("dinov2_with_registers")
    sdpa = GlanceFocusForImageClassification._from_config(eager.config, attn_implementation="sdpa")
    assert sdpa.rung_flops() == eager.rung_flops()


# ----------------------------------------------------------------------------------------------------- variants
def test_official_mobilenet_style_concat_classifier_and_glance_head():
    model = make_model(classifier_type="concat", glance_logits="glance_head", policy_conv=True, encoder_loss_weight=5.0)
    batch, labels = images(2), torch.tensor([0, 1])
    out = model(batch, labels=labels)
    pooled, _ = model.glance_encoder(model.glance_view(batch))
    torch.testing.assert_close(out.rung_logits[:, 0], model.glance_head(pooled), **FLOAT64_TOLERANCE)
    assert list(dict(model.classifier.named_children())) == ["fc_2", "fc_3", "fc_4"]
    assert model.classifier.fc_4.in_features == 4 * model.feature_size
    expected = sum(F.cross_entropy(r, labels) for r in out.rung_logits.unbind(1))
    expected = (expected + 5.0 * sum(F.cross_entropy(e, labels) for e in out.encoder_logits.unbind(1))) / STEPS
    torch.testing.assert_close(out.loss, expected, **FLOAT64_TOLERANCE)


@torch.no_grad()
def test_official_regnet_style_loss_supervises_the_grus_own_glance_logits():
    """A GRU classifier with `glance_logits="glance_head"` (official RegNet): the glance step's prediction is the
    glance head's, but the training loss takes the GRU's own step-0 logits, as the official `train.py` does (the glance
    head is in the deep-supervision sum)."""
    model = make_model(glance_logits="glance_head")
    batch, labels = images(2), torch.tensor([0, 1])
    out = model(batch, labels=labels)
    pooled, _ = model.glance_encoder(model.glance_view(batch))
    torch.testing.assert_close(out.rung_logits[:, 0], model.glance_head(pooled), **FLOAT64_TOLERANCE)
    gru_logits = model.classifier.fc(model.classifier.rnn(pooled))
    assert float((gru_logits - out.rung_logits[:, 0]).abs().max()) > 0.1  # the two step-0 predictions differ
    expected = F.cross_entropy(gru_logits, labels) + sum(
        F.cross_entropy(r, labels) for r in out.rung_logits.unbind(1)[1:]
    )
    expected = (expected + sum(F.cross_entropy(e, labels) for e in out.encoder_logits.unbind(1))) / STEPS
    torch.testing.assert_close(out.loss, expected, **FLOAT64_TOLERANCE)


@pytest.mark.parametrize("backbone", ["resnet", "vit"])
def test_a_glance_larger_than_the_crop_is_pooled_to_the_policy_state(backbone):
    model = make_model(backbone, glance_size=48)
    out = model(images(2), return_policy=True)
    _, glance_map = model.glance_encoder(model.glance_view(images(2)))
    assert glance_map.shape[-1] > model.policy.state_shape[-1]  # a larger map than a crop's ...
    assert out.policy_states.shape[-3:] == model.policy.state_shape  # ... pooled to the policy's state size
    torch.testing.assert_close(
        out.policy_states[:, 0], F.adaptive_avg_pool2d(glance_map, model.policy.state_shape[1:]), **FLOAT64_TOLERANCE
    )
    with pytest.raises(ValueError, match="glance_pixel_values"):
        model(images(2), glance_pixel_values=images(2, size=PATCH))


# ----------------------------------------------------------------------------------------------------- save / load
def test_save_load_calibrate_and_pipeline_use_the_saved_thresholds(tmp_path, capsys):
    model = make_model(dtype=torch.float32)
    processor = GlanceFocusImageProcessor.from_model_config(model.config)
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (12, 1, 1, 3))  # a colour per picture, and noise, so that predictions differ
    arrays = np.clip(colours + rng.normal(0, 40, (12, 80, 96, 3)), 0, 255).astype(np.uint8)
    pictures = [Image.fromarray(array) for array in arrays]
    inputs = processor(pictures, return_tensors="pt")
    assert inputs["pixel_values"].shape == (12, 3, SIZE, SIZE) and inputs["glance_pixel_values"].shape[-1] == PATCH
    assert torch.equal(inputs["glance_pixel_values"], model.glance_view(inputs["pixel_values"]))
    with torch.no_grad():  # labels the last step gets right (relative to the batch): later steps are worth their cost
        logits = model(inputs["pixel_values"], anytime=True).logits
        labels = (logits - logits.mean(0)).argmax(-1)
    assert len(set(labels.tolist())) >= 2
    data = [{"pixel_values": p, "label": int(y)} for p, y in zip(inputs["pixel_values"], labels, strict=True)]
    rung_gflops = [f / 1e9 for f in model.rung_flops()]
    result = calibrate_budget(model, data, target_gflops=(rung_gflops[0] + rung_gflops[-1]) / 2, progress=False)
    assert model.config.budget_thresholds == result.thresholds and len(result.thresholds) == STEPS - 1

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is GlanceFocusForImageClassification
    assert loaded.config.budget_thresholds == result.thresholds
    for (name, saved), (_, restored) in zip(
        model.policy.state_dict().items(), loaded.policy.state_dict().items(), strict=True
    ):
        assert torch.equal(saved, restored), name
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), GlanceFocusImageProcessor)
    with torch.no_grad():
        batched, reference = loaded(**inputs), model(**inputs)
        anytime = loaded(**inputs, anytime=True)
    torch.testing.assert_close(batched.logits, reference.logits)
    assert torch.equal(batched.exit_rung, reference.exit_rung)
    assert len(set(batched.exit_rung.tolist())) >= 2  # the saved thresholds really send images out early
    # The pipeline runs one image at a time in another instance: float32 rounding may differ (by far less than 1e-5
    # for these tiny layers), so check that no exit decision or crop corner is that close to a tie.
    confidences = confidences_of(anytime.rung_logits)[:, :-1]
    assert float((confidences - torch.tensor(result.thresholds)).abs().min()) > 1e-5
    assert corner_margin(anytime.crop_centers, SIZE - PATCH) > 1e-5
    top_two = batched.logits.softmax(-1).topk(2, dim=-1).values
    assert float((top_two[:, 0] - top_two[:, 1]).min()) > 1e-5  # no top label is a near-tie either

    classifier = pipeline("image-classification", model=str(tmp_path), top_k=1)
    assert isinstance(classifier.model, GlanceFocusForImageClassification)
    for picture, logits in zip(pictures, batched.logits, strict=True):
        (top,) = classifier(picture)
        probabilities = logits.softmax(-1)
        assert top["label"] == loaded.config.id2label[int(probabilities.argmax())]
        assert top["score"] == pytest.approx(probabilities.max().item(), rel=1e-5)

    # `lookwhere-hf predict --budget` runs the same budgeted pipeline for this family, and refuses a smaller budget.
    picture_path = tmp_path / "picture.png"
    pictures[0].save(picture_path)  # lossless: the same pixels
    argv = ["predict", str(picture_path), "--model", str(tmp_path), "--top-k", "1", "--json"]
    assert cli.main([*argv, "--budget", str(result.expected_flops)]) == 0
    (printed,) = json.loads(capsys.readouterr().out)
    assert printed["predictions"][0]["label"] == loaded.config.id2label[int(batched.logits[0].argmax())]
    assert cli.main([*argv, "--budget", str(result.expected_flops / 2)]) == 2
    assert cli.main([*argv, "--k-ratio", "0.1"]) == 2  # LookWhere's k means nothing here
    assert "drop --k-ratio" in capsys.readouterr().err


def test_calibration_validates_the_glance_focus_config():
    """`calibrate_budget` checks the whole config of any family (its `@strict` validators) once it has written the
    budget: a value made invalid after construction is a `ValueError` that names it, not a silently saved config."""
    model = make_model(dtype=torch.float32)
    model.config.policy_action_std = 2.0  # the policy copied the valid value at construction, so the forward runs
    data = [{"pixel_values": image, "label": i % 2} for i, image in enumerate(images(8, dtype=torch.float32))]
    rung_gflops = [f / 1e9 for f in model.rung_flops()]
    with pytest.raises(ValueError, match="policy_action_std"):
        calibrate_budget(model, data, target_gflops=(rung_gflops[0] + rung_gflops[-1]) / 2, progress=False)


@pytest.mark.slow
def test_budgeted_folder_runs_with_trust_remote_code_alone(tmp_path):
    """Model and processor folder in a process that never imports lookwhere_hf: the copied model, configuration and
    processor files load with `trust_remote_code=True`, exit with the saved thresholds and crop the same boxes."""
    model = make_model(dtype=torch.float32)
    processor = GlanceFocusImageProcessor.from_model_config(model.config)
    arrays = np.random.default_rng(1).integers(0, 256, (6, 70, 90, 3), dtype=np.uint8)
    inputs = processor(list(arrays), return_tensors="pt")
    with torch.no_grad():
        anytime = model(**inputs, anytime=True)
    confidences = confidences_of(anytime.rung_logits)[:, :-1]
    assert corner_margin(anytime.crop_centers, SIZE - PATCH) > 1e-5  # nor a crop corner
    ranked = confidences.sort(dim=0).values
    thresholds = (ranked[2] + ranked[3]) / 2  # half the images leave at each step
    model.config.budget_thresholds = thresholds.tolist()
    assert float((confidences - thresholds).abs().min()) > 1e-5  # no exit is a near-tie across instances
    with torch.no_grad():
        expected = model(**inputs)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    np.save(tmp_path / "images.npy", arrays)
    script = textwrap.dedent(
        f"""
        import builtins, os, sys
        import numpy as np, torch
        builtins.input = lambda *args: os._exit(3)  # a prompt for remote code fails the test
        torch.set_num_threads({torch.get_num_threads()})
        from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline
        folder = {str(tmp_path / "model")!r}
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        images = list(np.load({str(tmp_path / "images.npy")!r}))
        with torch.no_grad():
            out = model(**processor(images, return_tensors="pt"))
        top = pipeline("image-classification", model=folder, trust_remote_code=True)(images[0], top_k=1)[0]
        assert "lookwhere_hf" not in sys.modules, "lookwhere_hf was imported"
        torch.save({{"logits": out.logits, "exit_rung": out.exit_rung, "crop_boxes": out.crop_boxes,
                     "label": top["label"]}}, {str(tmp_path / "out.pt")!r})
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt")
    assert torch.equal(remote["exit_rung"], expected.exit_rung) and len(set(expected.exit_rung.tolist())) >= 2
    assert torch.equal(remote["crop_boxes"], expected.crop_boxes)
    torch.testing.assert_close(remote["logits"], expected.logits)
    assert remote["label"] == model.config.id2label[int(expected.logits[0].argmax())]


def test_config_round_trips_through_auto_config(tmp_path):
    config = make_config("timm_wrapper", glance_size=48, policy_action_std=0.2)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, GlanceFocusConfig) and loaded.backbone_config.model_type == "timm_wrapper"
    assert (loaded.glance_side, loaded.policy_action_std, loaded.num_steps) == (48, 0.2, STEPS)


# ----------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"patch_size": 96}, "larger than the image"),
        ({"backbone_config": BertConfig()}, "not a vision backbone with feature maps"),
        ({"num_steps": 0}, r"num_steps.*>= 1"),
        ({"policy_action_std": 0.0}, r"policy_action_std.*\(0, 1\]"),
        ({"policy_action_std": 1.5}, r"policy_action_std.*\(0, 1\]"),
        ({"policy_action_std": float("nan")}, r"policy_action_std.*\(0, 1\]"),
        ({"policy_hidden_size": 0}, "policy_hidden_size"),
        ({"policy_conv_channels": 0}, "policy_conv_channels"),
        ({"classifier_type": "concat"}, "glance_logits='glance_head'"),
        ({"glance_interpolation": "nearest"}, "glance_interpolation"),
        ({"budget_thresholds": [0.5]}, "one threshold per step except the last"),
        ({"policy_conv_channels": 2.5}, "policy_conv_channels` must be a positive int"),
        ({"initializer_range": -0.02}, "initializer_range` must be a positive number"),
        ({"budget_rung_gflops": [1.0, "2", 3.0, 4.0]}, "budget_rung_gflops` must be positive and increasing numbers"),
        ({"budget_image_size": ["a", 64]}, r"budget_image_size` must be a \(height, width\) pair of positive ints"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_config(**kwargs)


def test_values_changed_after_construction_are_checked_when_saving(tmp_path):
    config = make_config()
    config.policy_action_std = 2.0
    with pytest.raises(StrictDataclassClassValidationError, match="policy_action_std"):
        config.save_pretrained(tmp_path)


@pytest.mark.parametrize("image_size, shorter_side", [(224, 256), (300, 342), (46, 52)])
def test_processor_resizes_like_the_official_evaluation(image_size, shorter_side):
    """Shorter side to `int(image_size / 0.875)` (the official `inference.py`; rounding would give 343 for 300 px and
    53 for 46 px), then the `image_size` centre crop."""
    processor = GlanceFocusImageProcessor.from_model_config(make_config(image_size=image_size))
    assert processor.size.shortest_edge == shorter_side
    assert (processor.crop_size.height, processor.crop_size.width) == (image_size, image_size)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"glance_size": 0}, "glance_size"), ({"glance_interpolation": "nearest"}, "glance_interpolation")],
)
def test_processor_rejects_bad_glance_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GlanceFocusImageProcessor(**kwargs)


def test_vit_views_must_be_tiled_by_its_patches():
    with pytest.raises(ValueError, match="multiple of the ViT backbone's patch size"):
        make_config("dinov2_with_registers", patch_size=36)


def test_forward_rejects_bad_inputs(model):
    with pytest.raises(ValueError, match="larger than the image"):
        model(images(1, size=PATCH - 8))
    with pytest.raises(ValueError, match="must be a float tensor of normalized images"):
        model(torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8))  # raw pixels
    with pytest.raises(ValueError, match="`glance_pixel_values` must be a float tensor"):
        model(images(1), glance_pixel_values=torch.zeros(1, 3, PATCH, PATCH, dtype=torch.uint8))
    with pytest.raises(ValueError, match="crop_centers"):
        model(images(1), crop_centers=torch.full((1, STEPS - 1, 2), 1.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="crop_centers"):
        model(images(1), crop_centers=torch.zeros(1, STEPS, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="policy_mode"):
        model(images(1), policy_mode="greedy")
    with pytest.raises(ValueError, match="exit thresholds"):
        model(images(1), exit_thresholds=[0.5])
    with pytest.raises(ValueError, match="anytime=True"):
        model(images(1), exit_thresholds=[0.5] * (STEPS - 1), return_policy=True)
    with pytest.raises(ValueError, match="output_hidden_states"):
        model(images(1), output_hidden_states=True)
    with pytest.raises(ValueError, match=r"unexpected arguments \['policy_mod'\]"):
        model(images(1), policy_mod="sample")  # misspelt: not silently the mean crops
    with pytest.raises(ValueError, match="Policy states"):
        model.policy.evaluate(torch.zeros(1, 2, 3, 1, 1, dtype=torch.float64), torch.zeros(1, 2, 2))


def test_flops_count_gives_every_module_its_own_mode_back():
    """A training stage keeps frozen encoders in eval mode inside a training model; counting FLOPs (which runs in
    eval mode) must not switch them to training mode, or their batch-norm statistics would start to move."""
    model = make_model()
    model.train()
    model.glance_encoder.eval()
    modes = {name: module.training for name, module in model.named_modules()}
    model.rung_flops()
    assert {name: module.training for name, module in model.named_modules()} == modes
    assert not model.glance_encoder.training and model.focus_encoder.training


@pytest.mark.parametrize("backbone", ["resnet", "dinov2_with_registers"])
def test_from_backbone_copies_the_backbone_into_both_encoders_and_nothing_else(backbone, tmp_path):
    torch.manual_seed(0)
    source = AutoModel.from_config(BACKBONES[backbone]())
    source.save_pretrained(tmp_path)
    torch.manual_seed(1)
    model = GlanceFocusForImageClassification.from_backbone(
        str(tmp_path), num_labels=NUM_LABELS, image_size=SIZE, patch_size=PATCH, num_steps=STEPS
    )
    reference = source.state_dict()
    for encoder in (model.glance_encoder, model.focus_encoder):
        copied = encoder.backbone.state_dict()
        assert copied.keys() == reference.keys()
        for name, tensor in reference.items():
            assert torch.equal(copied[name], tensor), name
    assert model.glance_encoder.backbone.state_dict().keys() == model.focus_encoder.backbone.state_dict().keys()
    # The encoders own separate tensors: stage 1 trains them apart.
    assert next(model.glance_encoder.parameters()).data_ptr() != next(model.focus_encoder.parameters()).data_ptr()
    with pytest.raises(ValueError, match="drop `backbone_config`"):
        GlanceFocusForImageClassification.from_backbone(source, backbone_config=source.config, num_labels=2)
    with pytest.raises(ValueError, match="must be a transformers vision model"):
        GlanceFocusForImageClassification.from_backbone(torch.nn.Linear(2, 2), num_labels=2)


def test_from_backbone_takes_the_base_model_of_a_model_with_a_head():
    """A `ResNetForImageClassification` (a fine-tuned classifier, say) gives its `ResNetModel` weights to both
    encoders; a model of another architecture than its config says is refused with what to pass instead."""
    from transformers import ResNetForImageClassification

    torch.manual_seed(0)
    classifier = ResNetForImageClassification(BACKBONES["resnet"]())
    kwargs = dict(num_labels=NUM_LABELS, image_size=SIZE, patch_size=PATCH, num_steps=STEPS)
    model = GlanceFocusForImageClassification.from_backbone(classifier, **kwargs)
    for name, tensor in classifier.resnet.state_dict().items():
        assert torch.equal(model.focus_encoder.backbone.state_dict()[name], tensor), name
        assert torch.equal(model.glance_encoder.backbone.state_dict()[name], tensor), name
    other = AutoModel.from_config(BACKBONES["convnext"]())
    other.config = classifier.config  # weights of one architecture under the config of another
    with pytest.raises(ValueError, match="Pass the bare backbone"):
        GlanceFocusForImageClassification.from_backbone(other, **kwargs)
