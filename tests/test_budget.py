"""Anytime and budgeted classification (issue 12): the rung ladder, the exit rule, FLOPs, calibration, save / load,
the pipeline and the CLI, on tiny seeded models."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EPS32, FLOAT64_TOLERANCE, make_tiny_config, run_script_in_process
from huggingface_hub.errors import StrictDataclassClassValidationError
from PIL import Image
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForImageClassification, pipeline

from lookwhere_hf import (
    LookWhereConfig,
    LookWhereForImageClassification,
    LookWhereImageProcessor,
    LookWhereModel,
    cli,
)
from lookwhere_hf.budget import NEVER_EXIT, calibrate_budget, fit_budget_thresholds, simulate_exits
from lookwhere_hf.flops import lookwhere_flops, transformer_layer_flops
from lookwhere_hf.models.lookwhere.anytime_rungs import _block_flops, anytime_rung_flops

RATIOS = [0.1, 0.25, 0.5]  # on the 8x8 grid of a 112 px input: k = 6, 16, 32
NUM_LABELS = 4
SIZE = 112


def make_model(glance_head=True, dtype=torch.float64, seed=0, **kwargs) -> LookWhereForImageClassification:
    """A tiny classifier with perturbed weights, so that its confidences spread over (1/4, 1) instead of sitting at
    the uniform 1/4 of a freshly initialised head."""
    torch.manual_seed(seed)
    config = make_tiny_config(
        high_res=SIZE, glance_head=glance_head, anytime_k_ratios=RATIOS, num_labels=NUM_LABELS, **kwargs
    )
    # eager attention: FlopCounterMode counts its matmuls (it does not see inside SDPA on every backend)
    model = LookWhereForImageClassification._from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    return model.to(dtype)


def images(count, seed=1, dtype=torch.float64):
    return torch.randn(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def confidences_of(rung_logits):
    return rung_logits.softmax(-1).amax(-1)  # (B, T)


def separating_thresholds(confidences, quantile):
    """Per-rung thresholds at a midpoint between two sorted confidences, and the smallest distance from any
    confidence to its rung's threshold (tests assert it is far above float64 rounding, so no exit is a near-tie)."""
    thresholds, gap = [], float("inf")
    for t in range(confidences.shape[1] - 1):
        ranked = confidences[:, t].sort().values
        i = min(int(quantile * len(ranked)), len(ranked) - 2)
        threshold = float((ranked[i] + ranked[i + 1]) / 2)
        thresholds.append(threshold)
        gap = min(gap, float((confidences[:, t] - threshold).abs().min()))
    return thresholds, gap


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def anytime(model):
    with torch.no_grad():
        return model(images(16), anytime=True)


# ----------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"anytime_k_ratios": [0.1, 0.05]}, "must be increasing"),
        ({"anytime_k_ratios": [0.1, 0.1]}, "duplicate rungs"),
        ({"anytime_k_ratios": [0.0, 0.1]}, r"fractions in \(0, 1\]"),
        ({"anytime_k_ratios": [0.5, 1.5]}, r"fractions in \(0, 1\]"),
        ({"anytime_k_ratios": []}, "non-empty"),
        ({"budget_thresholds": [0.5, 0.5]}, "one threshold per rung except the last"),
        ({"glance_head": True, "budget_thresholds": [0.5, 0.5]}, r"\(4 for glance_head=True"),
        ({"budget_thresholds": [0.5, float("nan"), 0.5]}, "finite max-softmax values"),
        ({"budget_thresholds": [0.5, -0.1, 0.5]}, "finite max-softmax values"),
        ({"budget_rung_gflops": [1.0, 2.0, 3.0]}, "each of the 4 rungs"),
        ({"budget_rung_gflops": [1.0, 3.0, 2.0, 4.0]}, "positive and increasing"),
        ({"budget_image_size": [112]}, r"\(height, width\) pair"),
        ({"budget_target_gflops": -1.0}, "positive number of GFLOPs"),
        ({"budget_calibration_accuracy": 1.5}, r"in \[0, 1\]"),
    ],
)
def test_config_rejects_bad_anytime_and_budget_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LookWhereConfig(**kwargs)


def test_config_rejects_thresholds_that_stop_matching_the_rungs_on_save(tmp_path):
    config = LookWhereConfig(glance_head=True, budget_thresholds=[0.9, 0.8, 0.7, 0.6])
    config.glance_head = False  # the ladder changed after calibration
    with pytest.raises(ValueError, match="Recalibrate"):
        config.validate_lookwhere()
    with pytest.raises(StrictDataclassClassValidationError, match="Recalibrate"):
        config.save_pretrained(tmp_path)  # the strict-dataclass validator wraps the same ValueError


def test_rungs_with_equal_k_on_a_small_grid_raise():
    config = LookWhereConfig(anytime_k_ratios=[0.025, 0.05])
    assert config.rung_ks(1369) == [34, 68]
    with pytest.raises(ValueError, match="two rungs see the same patches"):
        config.rung_ks(16)  # k = 1 for both


# ----------------------------------------------------------------------------------------------------- FLOPs
def test_rung_flops_agree_with_the_flops_module_and_the_flop_counter(model):
    config = model.config
    for layer_config in (config.selector_config, config.extractor_config):
        for tokens in (5, 37, 69):
            assert _block_flops(layer_config, tokens) == transformer_layer_flops(layer_config, tokens)
    # one focus rung without glance = the fixed-k LookWhere of lookwhere_hf.flops
    for k in (6, 16, 32):
        (single,) = anytime_rung_flops(config, (4, 4), [k], NUM_LABELS, glance=False)
        assert single == lookwhere_flops(config, SIZE, k=k, num_labels=NUM_LABELS).total
    # the anytime pass does exactly what its last cumulative count says (linear layers, convolutions, attention)
    batch = images(3)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(batch, anytime=True)
    assert counter.get_total_flops() == 3 * int(out.rung_flops[0, -1])
    assert out.rung_k.tolist() == [[0, 6, 16, 32]] * 3 and out.rung_flops.shape == (3, 4)
    assert out.flops.tolist() == [int(out.rung_flops[0, -1])] * 3 and out.exit_rung.tolist() == [3] * 3


# ----------------------------------------------------------------------------------------------------- exit rule
def test_anytime_rungs_equal_fixed_k_forwards(model):
    """Nested ranking + incremental embedding give each focus rung exactly the fixed-k model's computation."""
    batch = images(4)
    with torch.no_grad():
        out = model(batch, anytime=True)
        for logits, k in zip(out.rung_logits.unbind(1)[1:], out.rung_k[0, 1:].tolist(), strict=True):
            torch.testing.assert_close(logits, model(batch, k=k, budget=False).logits, **FLOAT64_TOLERANCE)


def test_budgeted_output_equals_the_anytime_output_of_each_exit_rung(model, anytime):
    thresholds, gap = separating_thresholds(confidences_of(anytime.rung_logits), quantile=0.6)
    assert gap > 1e-6  # far above float64 rounding (1e-9): no exit decision is a near-tie
    with torch.no_grad():
        budgeted = model(images(16), exit_thresholds=thresholds)
    exits = budgeted.exit_rung
    assert len(set(exits.tolist())) >= 3  # the batch really splits over the rungs
    assert torch.equal(exits, simulate_exits(confidences_of(anytime.rung_logits), thresholds))
    expected = torch.stack([anytime.rung_logits[i, r] for i, r in enumerate(exits.tolist())])
    torch.testing.assert_close(budgeted.logits, expected, **FLOAT64_TOLERANCE)
    assert torch.equal(budgeted.flops, anytime.rung_flops[0, exits])
    assert budgeted.rung_logits is None


def test_exits_are_monotone_in_the_thresholds(model, anytime):
    confidences = confidences_of(anytime.rung_logits)
    previous = None
    for quantile in (0.0, 0.3, 0.6, 0.9):  # higher quantiles: higher thresholds at every rung
        thresholds, gap = separating_thresholds(confidences, quantile)
        assert gap > 1e-6
        with torch.no_grad():
            exits = model(images(16), exit_thresholds=thresholds).exit_rung
        if previous is not None:
            assert bool((exits >= previous).all())
        previous = exits
    with torch.no_grad():
        assert model(images(16), exit_thresholds=[0.0] * 3).exit_rung.tolist() == [0] * 16
        assert model(images(16), exit_thresholds=[NEVER_EXIT] * 3).exit_rung.tolist() == [3] * 16


def test_half_the_batch_exiting_at_the_glance_halves_the_extractor_work(model):
    batch = images(8, seed=3)
    with torch.no_grad():
        glance_confidence = model(batch, anytime=True).rung_logits[:, 0].softmax(-1).amax(-1)
    ranked = glance_confidence.sort().values
    half = float((ranked[3] + ranked[4]) / 2)
    assert float((glance_confidence - half).abs().min()) > 1e-6

    def counted(thresholds):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = model(batch, exit_thresholds=thresholds)
        return counter.get_total_flops(), out

    nobody_total, nobody = counted([NEVER_EXIT, 0.0, 0.0])  # everyone goes on to the first focus rung
    half_total, half_out = counted([half, 0.0, 0.0])
    assert nobody.exit_rung.tolist() == [1] * 8 and sorted(half_out.exit_rung.tolist()) == [0] * 4 + [1] * 4
    # exact counts: what was computed is what the output says was spent
    assert nobody_total == int(nobody.flops.sum()) and half_total == int(half_out.flops.sum())
    selector_and_glance = 8 * int(nobody.rung_flops[0, 0])
    assert half_total - selector_and_glance == (nobody_total - selector_and_glance) // 2


# ----------------------------------------------------------------------------------------------------- model errors
def test_model_errors(model):
    batch = images(2)
    with pytest.raises(ValueError, match="Expected 3 exit thresholds"):
        model(batch, exit_thresholds=[0.5])
    with pytest.raises(ValueError, match="cannot be combined"):
        model(batch, anytime=True, budget=True)
    with pytest.raises(ValueError, match="budgeted inference picks the rung"):
        model(batch, k=6, budget=True)
    with pytest.raises(ValueError, match="calibrate them"):
        model(batch, budget=True)
    with pytest.raises(ValueError, match="finite max-softmax values"):
        model(batch, exit_thresholds=[0.5, float("nan"), 0.5])
    with pytest.raises(ValueError, match="drop one of them"):
        model(batch, exit_thresholds=[0.5] * 3, budget=False)
    with pytest.raises(ValueError, match="only supported in fixed-k mode"):
        model(batch, anytime=True, output_hidden_states=True)


def test_anytime_training_loss_is_the_mean_of_the_rung_losses_and_trains_the_glance_head():
    model = make_model(dtype=torch.float32).train()
    labels = torch.tensor([0, 1, 2, 3])
    out = model(images(4, dtype=torch.float32), labels=labels, anytime=True)
    losses = [torch.nn.functional.cross_entropy(logits, labels) for logits in out.rung_logits.unbind(1)]
    torch.testing.assert_close(out.loss, sum(losses) / 4, rtol=8 * EPS32, atol=0)
    out.loss.backward()
    assert model.glance_classifier.weight.grad.abs().sum() > 0
    assert model.classifier.weight.grad.abs().sum() > 0
    # `config.train_all_rungs` (what --k_ratios / --glance_head set): the same loss without `anytime=True`
    model.config.train_all_rungs = True
    again = model(images(4, dtype=torch.float32), labels=labels)
    assert again.rung_logits.shape[1] == 4
    torch.testing.assert_close(again.loss, out.loss, rtol=0, atol=0)
    assert model.eval()(images(4, dtype=torch.float32), labels=labels).rung_logits is None  # eval: fixed k


# ----------------------------------------------------------------------------------------------------- fitting
def test_fit_gives_the_profile_shares_and_the_exit_cost():
    # 8 images, 2 rungs, 3 classes. Rung 0 predicts class 0 with confidence 0.9 .. 0.4 (the rest split evenly), right
    # for the 3 most confident images; rung 1 is one-hot on the label (always right).
    conf0 = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    probabilities = torch.zeros(8, 2, 3, dtype=torch.float64)
    probabilities[:, 0, 0] = conf0
    probabilities[:, 0, 1:] = ((1 - conf0) / 2).unsqueeze(1)
    probabilities[:, 1] = torch.nn.functional.one_hot(labels, 3).double()
    # p = 1: half exit at rung 0 (the 4 most confident), cost (4 * 1 + 4 * 3) / 8 = 2, image 3 leaves wrong
    fit = fit_budget_thresholds(probabilities, labels, [1.0, 3.0], target_flops=2.0, p_grid=[1.0])
    assert fit.thresholds == [pytest.approx((0.6 + 0.55) / 2, abs=1e-15)] and fit.expected_flops == 2.0
    assert fit.exit_shares == [0.5, 0.5] and fit.accuracy == 7 / 8
    # over the default grid, a budget of 2.25 allows exactly the 3 right early exits: accuracy 1 at (3 + 5 * 3) / 8
    best = fit_budget_thresholds(probabilities, labels, [1.0, 3.0], target_flops=2.25)
    assert best.accuracy == 1.0 and best.expected_flops == 2.25 and best.exit_shares == [3 / 8, 5 / 8]
    # a budget of 2 forces a 4th early exit, which is wrong
    assert fit_budget_thresholds(probabilities, labels, [1.0, 3.0], target_flops=2.0).accuracy == 7 / 8
    # the cheapest budget sends everyone to the first rung
    cheapest = fit_budget_thresholds(probabilities, labels, [1.0, 3.0], target_flops=1.0)
    assert cheapest.exit_shares == [1.0, 0.0] and cheapest.expected_flops == 1.0


def test_fit_skips_a_rung_that_is_not_worth_stopping_at():
    # 3 rungs costing 1, 2, 4; rung 0 (a glance at chance) is wrong on every image but confident on some, rungs 1
    # and 2 are right. For a mean of 2, GFNet's search (shares ~ p ** t over all rungs) must send some images out at
    # rung 0, wrong; with rung subsets the calibration skips rung 0 and sends everyone to rung 1, right.
    labels = torch.arange(12) % 3
    probabilities = torch.zeros(12, 3, 3, dtype=torch.float64)
    confidence = torch.linspace(0.4, 0.9, 12, dtype=torch.float64)
    wrong = (labels + 1) % 3
    probabilities[:, 0] = ((1 - confidence) / 2).unsqueeze(1)
    probabilities[torch.arange(12), 0, wrong] = confidence
    sure = torch.linspace(0.5, 0.95, 12, dtype=torch.float64)  # rung 1: right, with distinct confidences (no ties)
    probabilities[:, 1] = ((1 - sure) / 2).unsqueeze(1)
    probabilities[torch.arange(12), 1, labels] = sure
    probabilities[:, 2] = torch.nn.functional.one_hot(labels, 3).double()
    fit = fit_budget_thresholds(probabilities, labels, [1.0, 2.0, 4.0], target_flops=2.0)
    assert fit.thresholds[0] == NEVER_EXIT and fit.exit_shares == [0.0, 1.0, 0.0]
    assert fit.accuracy == 1.0 and fit.expected_flops == 2.0
    assert simulate_exits(probabilities.max(-1).values, fit.thresholds).tolist() == [1] * 12
    gfnet = fit_budget_thresholds(probabilities, labels, [1.0, 2.0, 4.0], target_flops=2.0, skip_rungs=False)
    assert gfnet.exit_shares[0] > 0 and gfnet.accuracy == 1 - gfnet.exit_shares[0]


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "split is empty"),
        ("single_class", "single class"),
        ("below", "below the cost of the first rung"),
        ("above", "above the cost of the last rung"),
        ("flops", "must be increasing"),
    ],
)
def test_fit_errors(case, message):
    probabilities = torch.full((4, 2, 2), 0.5)
    labels = torch.tensor([0, 1, 0, 1])
    flops, target = [1.0, 3.0], 2.0
    if case == "empty":
        probabilities, labels = probabilities[:0], labels[:0]
    elif case == "single_class":
        labels = torch.zeros(4, dtype=torch.long)
    elif case == "below":
        target = 0.5
    elif case == "above":
        target = 3.5
    else:
        flops = [3.0, 1.0]
    with pytest.raises(ValueError, match=message):
        fit_budget_thresholds(probabilities, labels, flops, target)


def calibration_split(count=48, seed=5):
    pixel_values = images(count, seed=seed)
    labels = torch.arange(count) % NUM_LABELS
    return [{"pixel_values": pixel_values[i], "labels": int(labels[i])} for i in range(count)]


def test_calibration_meets_the_target_on_its_split_and_records_it():
    model = make_model()
    split = calibration_split()
    rung_gflops = [f / 1e9 for f in anytime_rung_flops(model.config, (4, 4), [6, 16, 32], NUM_LABELS, True)]
    target = (rung_gflops[1] + rung_gflops[2]) / 2
    result = calibrate_budget(model, split, target_gflops=target, batch_size=16, progress=False)
    config = model.config
    assert config.budget_thresholds == result.thresholds and config.budget_rung_gflops == result.rung_flops
    assert config.budget_rung_gflops == pytest.approx(rung_gflops, rel=1e-15)
    assert config.budget_image_size == [SIZE, SIZE] and config.budget_target_gflops == target
    assert result.expected_flops <= target

    # the model's own budgeted inference on the split spends what the calibration says, and is as accurate
    pixel_values = torch.stack([e["pixel_values"] for e in split])
    labels = torch.tensor([e["labels"] for e in split])
    with torch.no_grad():
        anytime = model(pixel_values, anytime=True)
        gaps = [
            (confidences_of(anytime.rung_logits)[:, t] - threshold).abs().min()
            for t, threshold in enumerate(config.budget_thresholds)
        ]
        assert min(float(g) for g in gaps) > 1e-9  # midpoint thresholds: no exit is a near-tie
        out = model(pixel_values)  # eval mode + saved thresholds: budgeted by default
    assert out.exit_rung.max() > 0 and out.exit_rung.min() < 3
    assert float(out.flops.double().mean()) / 1e9 == pytest.approx(config.budget_expected_gflops, rel=1e-12)
    assert float(out.flops.double().mean()) / 1e9 <= target
    accuracy = float((out.logits.argmax(-1) == labels).double().mean())
    assert accuracy == config.budget_calibration_accuracy
    # the fitted thresholds are the best of the grid: at least as accurate as sending everyone to the cheapest rung
    assert accuracy >= float((anytime.rung_logits[:, 0].argmax(-1) == labels).double().mean())


def test_calibration_errors():
    model = make_model()
    split = calibration_split(8)
    with pytest.raises(ValueError, match="below the cost of the first rung"):
        calibrate_budget(model, split, target_gflops=1e-6, progress=False)
    with pytest.raises(ValueError, match="above the cost of the last rung"):
        calibrate_budget(model, split, target_gflops=1e3, progress=False)
    with pytest.raises(ValueError, match="split is empty"):
        calibrate_budget(model, [], target_gflops=1e-3, progress=False)
    single = [{**example, "labels": 2} for example in split]
    with pytest.raises(ValueError, match="single class"):
        calibrate_budget(model, single, target_gflops=1e-3, progress=False)
    unlabelled = [{"pixel_values": example["pixel_values"]} for example in split]
    with pytest.raises(ValueError, match="need `labels`"):
        calibrate_budget(model, unlabelled, target_gflops=1e-3, progress=False)
    assert model.config.budget_thresholds is None  # nothing written on failure


# ------------------------------------------------------------------------------------------ save / pipeline / CLI
@pytest.fixture(scope="module")
def calibrated_folder(tmp_path_factory):
    """A float32 model calibrated for a budget between its first two focus rungs, saved with its processor."""
    folder = tmp_path_factory.mktemp("budgeted")
    model = make_model(dtype=torch.float32, id2label={i: f"class{i}" for i in range(NUM_LABELS)})
    split = [{**e, "pixel_values": e["pixel_values"].float()} for e in calibration_split()]
    rung_gflops = [f / 1e9 for f in anytime_rung_flops(model.config, (4, 4), [6, 16, 32], NUM_LABELS, True)]
    calibrate_budget(model, split, target_gflops=(rung_gflops[1] + rung_gflops[2]) / 2, progress=False)
    model.save_pretrained(folder)
    LookWhereImageProcessor.from_model_config(model.config).save_pretrained(folder)
    return folder, model.config


def test_thresholds_round_trip_through_save_load_and_the_pipeline(calibrated_folder, photos):
    folder, saved = calibrated_folder
    loaded = AutoModelForImageClassification.from_pretrained(folder).eval()
    for name in ("budget_thresholds", "budget_rung_gflops", "budget_image_size", "budget_expected_gflops"):
        assert getattr(loaded.config, name) == getattr(saved, name)
    processor = LookWhereImageProcessor.from_pretrained(folder)
    image = Image.fromarray(photos["astronaut"])
    inputs = processor(image, return_tensors="pt")
    with torch.no_grad():
        budgeted = loaded(**inputs)
        fixed = loaded(**inputs, budget=False)
    assert budgeted.exit_rung is not None and fixed.exit_rung is None

    def pipeline_scores():
        classifier = pipeline("image-classification", model=loaded, image_processor=processor)
        return [p["score"] for p in classifier(image, top_k=NUM_LABELS)]

    # the pipeline runs the same forward (batch 1, same kernels); at most the softmax differs: (n + 3) EPS32, n = 4
    tolerance = 7 * EPS32
    assert pipeline_scores() == pytest.approx(
        sorted(budgeted.logits.softmax(-1)[0].tolist(), reverse=True), abs=tolerance
    )
    loaded.config.use_budget = False  # the documented way to turn the thresholds off
    assert pipeline_scores() == pytest.approx(sorted(fixed.logits.softmax(-1)[0].tolist(), reverse=True), abs=tolerance)


def test_cli_predict_budget(calibrated_folder, photos, tmp_path, capsys):
    folder, saved = calibrated_folder
    image = tmp_path / "astronaut.png"
    Image.fromarray(photos["astronaut"]).save(image)
    assert cli.main(["predict", str(image), "--model", str(folder), "--budget", "1.0", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["image"] == str(image)
    assert "GFLOPs per image on the calibration split" in captured.err
    too_small = f"{saved.budget_expected_gflops / 2:.9f}"
    assert cli.main(["predict", str(image), "--model", str(folder), "--budget", too_small]) == 2
    assert "recalibrate for this budget" in capsys.readouterr().err
    assert cli.main(["predict", str(image), "--model", str(folder), "--budget", "1", "--k-ratio", "0.25"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    plain = tmp_path / "plain"
    make_model(dtype=torch.float32).save_pretrained(plain)
    assert cli.main(["predict", str(image), "--model", str(plain), "--budget", "1.0"]) == 2
    assert "no budget thresholds" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------- training
ROOT = Path(__file__).resolve().parents[1]
CLS_SCRIPT = ROOT / "examples/pytorch/image-classification/run_image_classification.py"
CLS_NT_SCRIPT = ROOT / "examples/pytorch/image-classification/run_image_classification_no_trainer.py"
COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """A 3-class imagefolder (noisy colour fields, 8 train / 6 validation images per class) and a tiny LookWhere."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 8), ("validation", 6)):
        for name, colour in COLOURS.items():
            folder = root / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = np.clip(rng.normal(0, 60, size=(80, 80, 3)) + np.array(colour), 0, 255).astype(np.uint8)
                Image.fromarray(image).save(folder / f"{i}.png")
    torch.manual_seed(0)
    LookWhereModel(make_tiny_config()).save_pretrained(root / "tiny")
    LookWhereImageProcessor(
        size={"height": SIZE, "width": SIZE}, low_res_size={"height": 56, "width": 56}
    ).save_pretrained(root / "tiny")
    return root


def _script_args(colours, output_dir, *extra):
    return [
        "--model_name_or_path", colours / "tiny", "--dataset_name", colours / "data", "--output_dir", output_dir,
        "--cache_dir", colours / "cache", "--per_device_train_batch_size", "8", "--seed", "0", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "script, extra, message",
    [
        (CLS_SCRIPT, ["--k_ratios", "0.1,0.05"], "the rungs must be increasing and distinct, e.g. 0.05,0.1"),
        (CLS_NT_SCRIPT, ["--k_ratios", "0.1,0.1"], "the rungs must be increasing and distinct"),
        (CLS_SCRIPT, ["--k_ratios", "0.1,1.5"], "every ratio must be in (0, 1]"),
        (CLS_NT_SCRIPT, ["--k_ratios", "ten"], "must be comma-separated numbers"),
        (CLS_SCRIPT, ["--calibrate_budget", "-1"], "--calibrate_budget must be a positive number"),
    ],
)
def test_bad_anytime_training_arguments_stop_before_training(colours, monkeypatch, capsys, script, extra, message):
    out = colours / f"never_{script.stem}"
    argv = _script_args(colours, out, *extra)
    if "no_trainer" not in script.name:
        argv += ["--do_train", "--report_to", "none"]
    monkeypatch.setattr(sys, "argv", [str(script), *map(str, argv)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error and f"{script.name}: error: " in error, error
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_multi_rung_training_trains_every_rung_and_calibrates_a_budget(colours):
    out = colours / "multi_rung"
    config = make_tiny_config(high_res=SIZE, glance_head=True, anytime_k_ratios=RATIOS, num_labels=3)
    rung_gflops = [f / 1e9 for f in anytime_rung_flops(config, (4, 4), [6, 16, 32], 3, True)]
    budget = (rung_gflops[1] + rung_gflops[2]) / 2
    argv = _script_args(
        colours, out, "--do_train", "--do_eval", "--num_train_epochs", "2", "--learning_rate", "3e-3",
        "--k_ratios", ",".join(map(str, RATIOS)), "--glance_head", "--calibrate_budget", f"{budget!r}",
        "--report_to", "none", "--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true",
        "--dataloader_num_workers", "0",
    )  # fmt: skip
    run_script_in_process(CLS_SCRIPT, argv, os.getcwd(), colours / "hf_home")  # as `python CLS_SCRIPT ...` does
    saved = json.loads((out / "config.json").read_text())
    assert saved["train_all_rungs"] and saved["glance_head"] and saved["anytime_k_ratios"] == RATIOS
    assert len(saved["budget_thresholds"]) == 3 and saved["budget_target_gflops"] == budget
    assert saved["budget_expected_gflops"] <= budget
    assert saved["budget_rung_gflops"] == pytest.approx(rung_gflops, rel=1e-12)
    results = json.loads((out / "all_results.json").read_text())
    assert results["budget_expected_gflops"] == saved["budget_expected_gflops"]
    # the glance head was trained and saved; the folder runs budgeted in the pipeline
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert "glance_classifier.weight" in load_file(out / "model.safetensors")
    image = Image.open(colours / "data" / "validation" / "red" / "0.png").convert("RGB")
    predictions = pipeline("image-classification", model=str(out))(image, top_k=3)
    processor = LookWhereImageProcessor.from_pretrained(out)
    with torch.no_grad():
        probs = model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
    for prediction in predictions:
        expected = probs[model.config.label2id[prediction["label"]]].item()
        assert prediction["score"] == pytest.approx(expected, rel=0, abs=6 * EPS32)


@pytest.mark.slow
def test_budgeted_folder_runs_with_trust_remote_code_alone(calibrated_folder, tmp_path):
    """The exit rule lives in the model file, so a calibrated folder exits early in a process that never imports
    lookwhere_hf (the model code is copied into the folder), with the same exits and logits."""
    folder, _ = calibrated_folder
    pixel_values = images(12, seed=9, dtype=torch.float32)
    torch.save(pixel_values, tmp_path / "pixels.pt")
    model = LookWhereForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = model(pixel_values)
    script = f"""
import sys, torch
torch.set_num_threads({torch.get_num_threads()})
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    out = model(torch.load({str(tmp_path / "pixels.pt")!r}))
assert "lookwhere_hf" not in sys.modules
torch.save({{"logits": out.logits, "exit_rung": out.exit_rung, "flops": out.flops}}, {str(tmp_path / "out.pt")!r})
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt")
    assert torch.equal(remote["exit_rung"], expected.exit_rung) and torch.equal(remote["flops"], expected.flops)
    assert len(set(expected.exit_rung.tolist())) >= 2  # the budget really splits the batch
    # same code, weights, inputs and thread count: the same kernels, so the same float32 logits
    torch.testing.assert_close(remote["logits"], expected.logits, rtol=0, atol=0)


@pytest.mark.slow
def test_multi_rung_no_trainer_run_resumes_to_the_same_weights(colours):
    """Multi-rung training (`--k_ratios` + `--glance_head`) resumed from a mid-epoch checkpoint ends at exactly the
    weights of the uninterrupted run, glance head included."""
    full, resumed = colours / "rungs_full", colours / "rungs_resumed"

    def run(output_dir, *extra):  # in this process, as `python CLS_NT_SCRIPT ...` at one thread with HF_HOME there
        argv = _script_args(
            colours, output_dir, "--learning_rate", "3e-3", "--lr_scheduler_type", "constant",
            "--max_train_steps", "4", "--k_ratios", ",".join(map(str, RATIOS)), "--glance_head", *extra,
        )  # fmt: skip
        return run_script_in_process(CLS_NT_SCRIPT, argv, os.getcwd(), colours / "hf_home")

    run(full, "--checkpointing_steps", "2")
    assert "Resuming from" in run(resumed, "--resume_from_checkpoint", full / "step_2")
    final, again, halfway = (load_file(p / "model.safetensors") for p in (full, resumed, full / "step_2"))
    assert (final["glance_classifier.weight"] - halfway["glance_classifier.weight"]).abs().max() > 1e-3
    for name in final:  # same kernels, data and order: exact
        torch.testing.assert_close(again[name], final[name], rtol=0, atol=0)
    assert json.loads((resumed / "config.json").read_text())["train_all_rungs"] is True
