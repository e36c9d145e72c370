"""The fine-tuning scripts train LookupViT through the same flags as LookWhere: the family comes from the checkpoint
(`--model_name_or_path`), from `--init_from_vit`, or from `--model_family lookupvit` with `--init_from_dinov2`;
`--compressed_grids` is the training set and `--compressed_grid` the evaluation grid saved in the config.

The data (colour imagefolder, red-square segmentation pairs) and the subprocess helpers come from
`test_finetuning.py`. Models: a tiny random LookupViT (hidden 32, 112 px / patch 14 = an 8 x 8 token grid, compressed
grids 2x2, 3x3, 4x4), and tiny DINOv2-with-registers / ViT checkpoints to build LookupViTs from.
"""

import json
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_finetuning import (
    CLS_NT_SCRIPT,
    CLS_SCRIPT,
    COMMON,
    SEG_NT_SCRIPT,
    SEG_SCRIPT,
    TRAINER_COMMON,
    _check_classification_pipeline,
    _check_segmentation_pipeline,
    _results,
    _run_here,
    _validation_images,
    workspace,  # noqa: F401  (the module-scoped data fixture)
)
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
    BeitImageProcessor,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

from lookwhere_hf import (
    LookupViTConfig,
    LookupViTForImageClassification,
    LookupViTForSemanticSegmentation,
    LookupViTModel,
    lookupvit_image_processor,
)
from lookwhere_hf.training import (
    IMAGE_CLASSIFICATION,
    SEMANTIC_SEGMENTATION,
    ArgumentError,
    ClassificationModelArguments,
    ModelArguments,
    build_model_and_processor,
)
from lookwhere_hf.training.arguments import lookupvit_grids, parse_grids
from lookwhere_hf.training.model_setup import set_lookupvit_sizes

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=112, patch_size=14)


def _tiny_lookupvit_config(**kwargs) -> LookupViTConfig:
    return LookupViTConfig(
        **{**TINY, "compressed_grid": 4, "compressed_grids": [2, 3, 4], "lookup_mlp_ratio": 0.5, **kwargs}
    )


@pytest.fixture(scope="module")
def models(workspace):  # noqa: F811
    """Saved folders: `tiny_lookupvit` (a bare LookupViTModel + its processor), `tiny_dinov2` (a DINOv2-with-registers
    classifier, like the Sparse Digits teacher), `tiny_vit` (a ViTModel with a ViT processor: mean / std 0.5)."""
    root = workspace["root"]
    torch.manual_seed(0)
    lookupvit = LookupViTModel(_tiny_lookupvit_config())
    lookupvit.save_pretrained(root / "tiny_lookupvit")
    lookupvit_image_processor(lookupvit.config).save_pretrained(root / "tiny_lookupvit")
    dinov2 = Dinov2WithRegistersForImageClassification(
        Dinov2WithRegistersConfig(**TINY, intermediate_size=128, num_register_tokens=2, num_labels=5)
    )
    dinov2.save_pretrained(root / "tiny_dinov2")
    ViTModel(ViTConfig(**TINY, intermediate_size=96), add_pooling_layer=False).save_pretrained(root / "tiny_vit")
    ViTImageProcessor(size={"height": 112, "width": 112}).save_pretrained(root / "tiny_vit")
    return {name: root / f"tiny_{name}" for name in ("lookupvit", "dinov2", "vit")} | {"root": root}


def _logged_losses(output: str) -> list[float]:
    """The training losses a script printed, in order (Trainer: `{'loss': '0.69', ...}`; no_trainer: JSON lines
    `{"step": 1, "loss": 0.69, ...}`), wherever a progress bar left them on a line."""
    pattern = r"\{'loss': '([-+.0-9eE]+)'|\{\"step\": \d+, \"loss\": ([-+.0-9eE]+)"
    return [float(trainer or loop) for trainer, loop in re.findall(pattern, output)]


def _assert_loss_falls(output: str) -> None:
    losses = _logged_losses(output)
    assert len(losses) >= 4, output[-3000:]
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.8 * first, losses


def _saved_grids(output_dir: Path) -> tuple[list, list]:
    config = json.loads((output_dir / "config.json").read_text())
    assert config["model_type"] == "lookupvit"
    return config["compressed_grid"], config["compressed_grids"]


def _assert_eval_grid(output_dir: Path, auto_class, grid: tuple[int, int]) -> None:
    """The saved folder loads, its processor is LookupViT's one view, and an eval forward runs at the saved grid."""
    model = auto_class.from_pretrained(output_dir).eval()
    processor = AutoImageProcessor.from_pretrained(output_dir)
    assert isinstance(processor, BeitImageProcessor) and not hasattr(processor, "low_res_size")
    size = processor.size["height"]
    with torch.no_grad():
        assert tuple(model(torch.zeros(1, 3, size, size)).compressed_grid[0].tolist()) == tuple(grid)


# --------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_classification_trainer_fine_tunes_a_lookupvit_checkpoint(models, workspace):  # noqa: F811
    root, out = models["root"], models["root"] / "lv_cls_trainer"
    output = _run_here(
        workspace,
        [
            CLS_SCRIPT, "--model_name_or_path", models["lookupvit"], "--dataset_name", root / "colours",
            "--output_dir", out, "--do_train", "--do_eval", "--num_train_epochs", "3", "--learning_rate", "3e-3",
            "--image_size", "126", "--compressed_grids", "2,3x4,5", "--compressed_grid", "3x4", "--logging_steps", "1",
            *COMMON, *TRAINER_COMMON,
        ],
    )  # fmt: skip
    _assert_loss_falls(output)
    assert _results(out)["eval_accuracy"] >= 0.9  # 3 balanced classes: chance is 1/3
    assert "compressed grids 2x2, 3x4, 5x5 (one drawn per training forward), evaluation grid 3x4" in output
    # the flags reach the config; 126 px = a 9 x 9 token grid, the largest grid 5x5 holds the compressed positions
    assert _saved_grids(out) == ([3, 4], [[2, 2], [3, 4], [5, 5]])
    weights = load_file(out / "model.safetensors")
    assert weights["lookupvit.embeddings.lookup_position_embeddings"].shape == (1, 81, 32)
    assert weights["lookupvit.embeddings.compressed_position_embeddings"].shape == (1, 25, 32)
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"height": 126, "width": 126}
    _assert_eval_grid(out, AutoModelForImageClassification, (3, 4))
    _check_classification_pipeline(out, _validation_images(root, "classification"))


@pytest.mark.slow
def test_classification_no_trainer_from_dinov2_resumes_to_the_same_weights(models, workspace):  # noqa: F811
    """A LookupViT built from a DINOv2-with-registers classifier (`--model_family lookupvit`), trained with a random
    grid per step. An uninterrupted 6-step run saves `step_2`, `step_4`, `step_6` (3 steps per epoch); a second run
    resumes from `step_4` (mid-epoch, data in 2 worker processes) and must end at the same weights: the grid draws
    continue from the restored RNG state, so they are the uninterrupted run's."""
    root = models["root"]
    full, resumed = root / "lv_cls_nt_full", root / "lv_cls_nt_resumed"
    args = [
        CLS_NT_SCRIPT, "--init_from_dinov2", models["dinov2"], "--model_family", "lookupvit",
        "--compressed_grids", "2,3,4", "--dataset_name", root / "colours", "--learning_rate", "3e-3",
        "--lr_scheduler_type", "constant", "--max_train_steps", "6", "--logging_steps", "1", *COMMON,
    ]  # fmt: skip
    output = _run_here(workspace, [*args, "--output_dir", full, "--checkpointing_steps", "2"])
    _assert_loss_falls(output)
    assert sorted(p.name for p in full.glob("step_*")) == ["step_2", "step_4", "step_6"]
    output = _run_here(
        workspace,
        [*args, "--output_dir", resumed, "--resume_from_checkpoint", full / "step_4", "--dataloader_num_workers", "2"],
    )
    assert "Resuming from" in output
    final, again, halfway = (load_file(p / "model.safetensors") for p in (full, resumed, full / "step_4"))
    moved = max((final[k] - halfway[k]).abs().max().item() for k in final)
    assert moved > 1e-3  # the last two steps changed the weights (an AdamW step moves a weight by ~lr = 3e-3) ...
    for name in final:  # ... and the resumed run made exactly the same changes
        torch.testing.assert_close(again[name], final[name], rtol=0, atol=0)
    # without --compressed_grid the evaluation grid is the largest training grid (DINOv2 has none of its own)
    assert _saved_grids(resumed) == ([4, 4], [[2, 2], [3, 3], [4, 4]])
    assert _results(resumed)["eval_accuracy"] == _results(full)["eval_accuracy"] >= 0.9
    _assert_eval_grid(resumed, AutoModelForImageClassification, (4, 4))
    _check_classification_pipeline(resumed, _validation_images(root, "classification"))


@pytest.mark.slow
def test_segmentation_trainer_from_vit_resumes_to_the_same_weights(models, workspace):  # noqa: F811
    """A LookupViT segmenter built from a ViT (`--init_from_vit`), with the ViT's normalization in the saved processor.
    Trainer checkpoints every 2 steps of 6 (3 per epoch); resuming from `checkpoint-4` (its RNG state restored, so the
    grid draws continue as in the uninterrupted run) ends at the same weights."""
    root = models["root"]
    full, resumed = root / "lv_seg_trainer_full", root / "lv_seg_trainer_resumed"
    args = [
        SEG_SCRIPT, "--init_from_vit", models["vit"], "--compressed_grids", "2,4", "--compressed_grid", "4",
        "--dataset_name", root / "squares", "--do_train", "--do_eval", "--learning_rate", "3e-3",
        "--lr_scheduler_type", "constant", "--max_steps", "6", "--logging_steps", "1", *COMMON,
        "--report_to", "none", "--eval_strategy", "no", "--disable_tqdm", "true", "--save_strategy", "steps",
        "--save_steps", "2",
    ]  # fmt: skip
    output = _run_here(workspace, [*args, "--output_dir", full])
    _assert_loss_falls(output)
    output = _run_here(workspace, [*args, "--output_dir", resumed, "--resume_from_checkpoint", full / "checkpoint-4"])
    assert "Resuming training from checkpoint with epoch 1 and global step 4" in output
    final, again, halfway = (load_file(p / "model.safetensors") for p in (full, resumed, full / "checkpoint-4"))
    assert max((final[k] - halfway[k]).abs().max().item() for k in final) > 1e-3
    for name in final:
        torch.testing.assert_close(again[name], final[name], rtol=0, atol=0)
    assert _saved_grids(resumed) == ([4, 4], [[2, 2], [4, 4]])
    processor = json.loads((resumed / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == processor["image_std"] == [0.5, 0.5, 0.5]  # the ViT's, not ImageNet's
    _assert_eval_grid(resumed, AutoModelForSemanticSegmentation, (4, 4))
    _check_segmentation_pipeline(resumed, _validation_images(root, "segmentation"))


@pytest.mark.slow
def test_segmentation_no_trainer_learns_the_square_with_a_lookupvit(models, workspace):  # noqa: F811
    root, out = models["root"], models["root"] / "lv_seg_nt"
    output = _run_here(
        workspace,
        [
            SEG_NT_SCRIPT, "--model_name_or_path", models["lookupvit"], "--dataset_name", root / "squares",
            "--output_dir", out, "--num_train_epochs", "10", "--learning_rate", "3e-3", "--compressed_grid", "3",
            "--logging_steps", "1", *COMMON,
        ],
    )  # fmt: skip
    _assert_loss_falls(output)
    results = _results(out)
    # Predicting background everywhere gives mean IoU 0.43 (square IoU 0); the square covers 14% of the image.
    assert results["eval_mean_iou"] >= 0.65 and results["eval_iou_square"] >= 0.4, results
    assert _saved_grids(out) == ([3, 3], [[2, 2], [3, 3], [4, 4]])  # the checkpoint's training grids kept
    _assert_eval_grid(out, AutoModelForSemanticSegmentation, (3, 3))
    _check_segmentation_pipeline(out, _validation_images(root, "segmentation"))


# --------------------------------------------------------------------------------------------- argument errors
def _run_in_process(script: Path, args, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", [str(script), *[str(a) for a in args]])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "script, source, extra, message",
    [
        (CLS_SCRIPT, "lookupvit", ["--k_ratio", "0.5"], "--k_ratio: LookWhere flag(s), but --model_name_or_path"),
        (
            SEG_NT_SCRIPT,
            "lookupvit",
            ["--freeze_selector", "False"],
            "LookupViT's compute setting is --compressed_grid",
        ),
        (
            CLS_NT_SCRIPT,
            "lookupvit",
            ["--glance_head", "--low_res_size", "56"],
            "--low_res_size, --glance_head: LookWhere flag(s)",
        ),
        (SEG_SCRIPT, "lookwhere", ["--compressed_grids", "2,3"], "LookWhere's compute setting is --k_ratio"),
        (
            CLS_SCRIPT,
            "dinov2",
            ["--compressed_grid", "3"],
            "add --model_family lookupvit, or drop --compressed_grid.",
        ),
        (
            CLS_SCRIPT,
            "lookupvit",
            ["--model_family", "lookwhere"],
            "is a lookupvit checkpoint, and the checkpoint decides",
        ),
        (SEG_SCRIPT, "vit", ["--model_family", "lookwhere"], "LookWhere is built from DINOv2-with-registers"),
        (SEG_NT_SCRIPT, "vit_is_dinov2", [], "is a 'dinov2_with_registers' model; it needs a ViT checkpoint"),
        (
            CLS_NT_SCRIPT,
            "lookupvit",
            ["--compressed_grids", "2,9"],
            "`--compressed_grids` 9x9 is larger than the lookup",
        ),
        (
            CLS_SCRIPT,
            "lookupvit",
            ["--image_size", "42"],
            "`--compressed_grids` 4x4 is larger than the lookup token grid 3x3",
        ),
        (SEG_SCRIPT, "lookupvit", ["--compressed_grids", "4,2"], "in increasing size, e.g. 2,4"),
        (CLS_SCRIPT, "lookupvit", ["--compressed_grid", "5"], "--compressed_grid 5x5 is not one of the training grids"),
        (CLS_SCRIPT, "lookupvit", ["--compressed_grid", "2,3"], "is one grid (the evaluation one)"),
        (SEG_SCRIPT, "lookupvit", ["--init_from_vit", "{vit}"], "Pass either --model_name_or_path or --init_from_vit"),
    ],
)
def test_bad_lookupvit_arguments_stop_before_training(models, monkeypatch, capsys, script, source, extra, message):
    root = models["root"]
    sources = {
        "lookupvit": ["--model_name_or_path", models["lookupvit"]],
        "lookwhere": ["--model_name_or_path", root / "tiny"],
        "dinov2": ["--init_from_dinov2", models["dinov2"]],
        "vit": ["--init_from_vit", models["vit"]],
        "vit_is_dinov2": ["--init_from_vit", models["dinov2"]],
    }
    out = root / f"never_lv_{script.stem}"
    dataset = root / ("colours" if "classification" in script.name else "squares")
    argv = [*sources[source], *(str(a).format(vit=models["vit"]) for a in extra), "--dataset_name", dataset]
    argv += ["--output_dir", out, "--cache_dir", root / "cache"]
    if "no_trainer" not in script.name:
        argv += ["--do_train", "--do_eval", "--report_to", "none"]
    error = _run_in_process(script, argv, monkeypatch, capsys)
    assert message in error, error
    assert f"{script.name}: error: " in error
    assert not out.exists()


# --------------------------------------------------------------------------------------------- argument handling
def test_parse_grids_accepts_sizes_and_pairs_in_increasing_order():
    assert parse_grids("--compressed_grids", "4,6,8") == [(4, 4), (6, 6), (8, 8)]
    assert parse_grids("--compressed_grids", "2, 3x4 ,4") == [(2, 2), (3, 4), (4, 4)]  # 4 < 12 < 16 tokens
    assert parse_grids("--compressed_grids", "3x4,4x3") == [(3, 4), (4, 3)]  # equal token counts: by height
    for value, match in [
        ("8,4,6", "in increasing size, e.g. 4,6,8"),
        ("4,4", "list each grid once"),
        ("4,x", "each grid must be s"),
        ("4,6.5", "each grid must be s"),
        ("2x3x4", "each grid must be s"),
        ("", "each grid must be s"),
        ("0,2", "sizes >= 1"),
    ]:
        with pytest.raises(ArgumentError, match=match):
            parse_grids("--compressed_grids", value)


def test_lookupvit_grids_defaults(models):
    from transformers import AutoConfig

    lookupvit = AutoConfig.from_pretrained(models["lookupvit"])  # eval grid 4, training grids 2, 3, 4
    dinov2 = AutoConfig.from_pretrained(models["dinov2"])

    def grids(config, **flags):
        return lookupvit_grids(ModelArguments(**flags), config)

    assert grids(lookupvit) == ((4, 4), [(2, 2), (3, 3), (4, 4)])  # the checkpoint's
    assert grids(lookupvit, compressed_grid="2") == ((2, 2), [(2, 2), (3, 3), (4, 4)])
    assert grids(lookupvit, compressed_grids="3,4") == ((4, 4), [(3, 3), (4, 4)])  # its eval grid is in the set
    assert grids(lookupvit, compressed_grids="2,3") == ((3, 3), [(2, 2), (3, 3)])  # else the largest
    assert grids(dinov2, compressed_grids="2,3x4") == ((3, 4), [(2, 2), (3, 4)])
    assert grids(dinov2, compressed_grid="5") == ((5, 5), [(5, 5)])  # one grid: trains and evaluates at it
    assert grids(dinov2) == ((7, 7), [(7, 7)])  # LookupViTConfig's default
    with pytest.raises(ArgumentError, match="--compressed_grid 3x3 is not one of the training grids 2x2, 4x4"):
        grids(lookupvit, compressed_grids="2,4", compressed_grid="3")


def test_build_lookupvit_from_its_checkpoint_with_larger_grids_and_image_size(models):
    args = ClassificationModelArguments(
        model_name_or_path=str(models["lookupvit"]), image_size=140, compressed_grids="3,6", compressed_grid="6"
    )
    model, processor = build_model_and_processor(IMAGE_CLASSIFICATION, args, {0: "a", 1: "b"})
    assert isinstance(model, LookupViTForImageClassification) and model.config.num_labels == 2
    assert (model.config.image_size, model.config.compressed_grid, model.config.compressed_grids) == (
        140, [6, 6], [[3, 3], [6, 6]],
    )  # fmt: skip
    assert isinstance(processor, BeitImageProcessor) and processor.size["height"] == 140
    start = LookupViTModel.from_pretrained(models["lookupvit"]).embeddings
    embeddings = model.lookupvit.embeddings
    assert embeddings.lookup_position_embeddings.shape == (1, 100, 32)  # 140 / 14 = 10 x 10
    assert embeddings.compressed_position_embeddings.shape == (1, 36, 32)  # stored at the largest grid, 6 x 6
    assert embeddings.compressed_position_embeddings.requires_grad
    assert set_lookupvit_sizes(model, 140, (6, 6), [(3, 3), (6, 6)]) == []  # nothing left to change
    # the compressed positions, stored at the old largest grid 4 x 4, resized bicubically (no antialias) to 6 x 6
    source = start.compressed_position_embeddings.reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(source, size=(6, 6), mode="bicubic", align_corners=False, antialias=False)
    expected = expected.permute(0, 2, 3, 1).reshape(1, 36, 32)
    torch.testing.assert_close(embeddings.compressed_position_embeddings, expected, rtol=0, atol=0)  # the same op
    pixels = torch.randn(1, 3, 140, 140)
    with torch.no_grad():
        assert model.eval()(pixels).compressed_grid[0].tolist() == [6, 6]


def test_build_lookupvit_from_dinov2_and_from_vit(models):
    args = ModelArguments(init_from_dinov2=str(models["dinov2"]), model_family="lookupvit", compressed_grids="2,3")
    model, processor = build_model_and_processor(SEMANTIC_SEGMENTATION, args, {0: "bg", 1: "fg"})
    assert isinstance(model, LookupViTForSemanticSegmentation)
    assert model.config.compressed_grids == [[2, 2], [3, 3]] and model.config.compressed_grid == [3, 3]
    dinov2 = Dinov2WithRegistersForImageClassification.from_pretrained(models["dinov2"]).dinov2_with_registers
    copied = model.lookupvit.encoder.layer[1].compressed_layer.mlp.fc1.weight
    torch.testing.assert_close(copied, dinov2.encoder.layer[1].mlp.fc1.weight, rtol=0, atol=0)
    # the DINOv2 folder ships no processor: LookupViT's one view with ImageNet normalization
    assert isinstance(processor, BeitImageProcessor) and list(processor.image_mean) == [0.485, 0.456, 0.406]

    args = ModelArguments(init_from_vit=str(models["vit"]), compressed_grid="2", image_size=98)
    model, processor = build_model_and_processor(IMAGE_CLASSIFICATION, args, {0: "a", 1: "b", 2: "c"})
    assert isinstance(model, LookupViTForImageClassification) and model.config.compressed_grids == [[2, 2]]
    assert model.config.image_size == 98 and model.lookupvit.embeddings.lookup_position_embeddings.shape == (1, 49, 32)
    assert list(processor.image_mean) == list(processor.image_std) == [0.5, 0.5, 0.5]  # the ViT's processor
    assert processor.size["height"] == 98

    with pytest.raises(ValueError, match="Unknown task 'depth-estimation'"):
        build_model_and_processor("depth-estimation", args, {0: "a"})
    two_views = ModelArguments(
        model_name_or_path=str(models["lookupvit"]), image_processor_name=str(models["root"] / "tiny")
    )
    with pytest.raises(ArgumentError, match="makes LookWhere's two views; LookupViT takes one view"):
        build_model_and_processor(IMAGE_CLASSIFICATION, two_views, {0: "a"})


def test_lookupvit_fine_tunes_with_a_dinov2_style_processor(models, tmp_path):
    """`--image_processor_name` of a processor that resizes the shorter side and centre-crops (what
    `AutoImageProcessor` gives for a DINOv2 checkpoint): the input size is its crop, in training and evaluation."""
    from PIL import Image
    from transformers import BitImageProcessor

    from lookwhere_hf.image_processing import processor_output_size
    from lookwhere_hf.training import ClassificationTransform

    crop = TINY["image_size"]
    BitImageProcessor(size={"shortest_edge": 128}, crop_size={"height": crop, "width": crop}).save_pretrained(
        tmp_path / "dinov2_style"
    )
    lookupvit = str(models["lookupvit"])
    args = ModelArguments(model_name_or_path=lookupvit, image_processor_name=str(tmp_path / "dinov2_style"))
    model, processor = build_model_and_processor(IMAGE_CLASSIFICATION, args, {0: "a", 1: "b"})
    assert processor_output_size(processor) == (crop, crop)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8))
    for train in (True, False):
        torch.manual_seed(0)
        batch = ClassificationTransform(processor, "image", "label", train=train)({"image": [image], "label": [1]})
        assert tuple(batch["pixel_values"][0].shape) == (3, crop, crop)
    with torch.no_grad():
        logits = model.eval()(pixel_values=torch.stack(batch["pixel_values"])).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()

    BitImageProcessor(size={"shortest_edge": 128}, crop_size={"height": 100, "width": 100}).save_pretrained(
        tmp_path / "off_grid"
    )
    args = ModelArguments(model_name_or_path=lookupvit, image_processor_name=str(tmp_path / "off_grid"))
    with pytest.raises(ArgumentError, match="resizes to 100x100, not a multiple of the patch size 14"):
        build_model_and_processor(IMAGE_CLASSIFICATION, args, {0: "a", 1: "b"})
    # --image_size, the flag that message names, sets what the model sees: the crop too
    args = ModelArguments(model_name_or_path=lookupvit, image_processor_name=str(tmp_path / "off_grid"), image_size=98)
    model, processor = build_model_and_processor(IMAGE_CLASSIFICATION, args, {0: "a", 1: "b"})
    assert processor_output_size(processor) == (98, 98) and model.config.image_size == 98


def test_family_flags_given_are_the_flags_away_from_their_defaults():
    args = ClassificationModelArguments(freeze_selector=False, glance_head=True, compressed_grid="3", image_size=98)
    assert args.family_flags_given() == {
        "lookwhere": ("freeze_selector", "glance_head"),
        "lookupvit": ("compressed_grid",),
    }
    assert ModelArguments().family_flags_given() == {"lookwhere": (), "lookupvit": ()}
