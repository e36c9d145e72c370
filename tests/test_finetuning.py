"""The fine-tuning example scripts end to end (subprocesses), and the shared pieces in lookwhere_hf.training.

Data are generated into tmp_path as local folders:

- classification: an imagefolder with three classes whose rule is the colour of the (noisy) image: red / green /
  blue. The rule holds at every position, so any patches the (frozen, random) selector picks carry it.
- segmentation: 112x112 noisy grey images with one red 42x42 square; the mask is 1 on the square. Trained with
  k_ratio 0.5 so half the patches are computed and the rest filled by LookWhere's dense spreading.

Models start from a tiny random LookWhere (hidden 32, 112 px / 56 px) saved with `save_pretrained`.
"""

import json
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EPS32, make_tiny_config, run_script_in_process
from PIL import Image
from safetensors.torch import load_file

from lookwhere_hf import (
    LookWhereForImageClassification,
    LookWhereForSemanticSegmentation,
    LookWhereImageProcessor,
    LookWhereModel,
)
from lookwhere_hf.training import (
    SEMANTIC_SEGMENTATION,
    TRAINER_CHECKPOINT,
    ArgumentError,
    ClassificationTransform,
    DataTrainingArguments,
    ModelArguments,
    SeededDataset,
    SegmentationDataArguments,
    SegmentationTransform,
    build_model_and_processor,
    collate_fn,
    load_datasets,
    load_image_mask_pairs,
    prepare_classification_labels,
    prepare_segmentation_labels,
    resolve_checkpoint,
    set_model_resolution,
)
from lookwhere_hf.training.data import reduce_mask_labels

ROOT = Path(__file__).resolve().parents[1]
CLS_SCRIPT = ROOT / "examples/pytorch/image-classification/run_image_classification.py"
CLS_NT_SCRIPT = ROOT / "examples/pytorch/image-classification/run_image_classification_no_trainer.py"
SEG_SCRIPT = ROOT / "examples/pytorch/semantic-segmentation/run_semantic_segmentation.py"
SEG_NT_SCRIPT = ROOT / "examples/pytorch/semantic-segmentation/run_semantic_segmentation_no_trainer.py"
COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
SQUARE = 42


# --------------------------------------------------------------------------------------------- data and models
def _write_classification(root: Path, rng) -> None:
    for split, per_class in (("train", 8), ("validation", 4)):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                h, w = rng.integers(60, 100, size=2)
                image = np.clip(rng.normal(0, 40, size=(h, w, 3)) + np.array(colour), 0, 255).astype(np.uint8)
                Image.fromarray(image).save(folder / f"{i}.png")


def _square_sample(rng, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    image = np.clip(rng.normal(128, 30, size=(size, size, 3)), 0, 255)
    mask = np.zeros((size, size), np.uint8)
    y, x = rng.integers(0, size - SQUARE, size=2)
    image[y : y + SQUARE, x : x + SQUARE] = (220, 30, 30)
    mask[y : y + SQUARE, x : x + SQUARE] = 1
    return image.astype(np.uint8), mask


def _write_segmentation(root: Path, rng) -> None:
    for split, count in (("train", 24), ("validation", 8)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(count):
            image, mask = _square_sample(rng)
            Image.fromarray(image).save(root / split / "images" / f"{i:03d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i:03d}.png")
    (root / "id2label.json").write_text(json.dumps({"0": "background", "1": "square"}))


def _tiny_processor(size: int = 112, low: int = 56) -> LookWhereImageProcessor:
    return LookWhereImageProcessor(size={"height": size, "width": size}, low_res_size={"height": low, "width": low})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetuning")
    rng = np.random.default_rng(0)
    _write_classification(root / "colours", rng)
    _write_segmentation(root / "squares", rng)
    torch.manual_seed(0)
    LookWhereModel(make_tiny_config()).save_pretrained(root / "tiny")
    _tiny_processor().save_pretrained(root / "tiny")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(root / "hf_home"),  # dataset / module caches in tmp, not in the home directory
        "OMP_NUM_THREADS": "1",  # tiny models: threads only contend on a shared CPU
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    return {"root": root, "env": env}


COMMON = ["--dataloader_num_workers", "0", "--per_device_train_batch_size", "8", "--seed", "0"]
TRAINER_COMMON = ["--report_to", "none", "--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true"]


def _run(workspace, args, launcher=None) -> str:
    command = (launcher or [sys.executable]) + [str(a) for a in args]
    done = subprocess.run(
        command, check=False, env=workspace["env"], capture_output=True, text=True, timeout=300, cwd=workspace["root"]
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{output[-6000:]}"
    return output


def _run_here(workspace, args) -> str:
    """`_run` without a launcher, in this process (no fresh interpreter's start-up): the same script, arguments,
    working directory, thread count and caches; its printed output."""
    script, *argv = args
    return run_script_in_process(script, argv, workspace["root"], workspace["env"]["HF_HOME"])


def _results(output_dir: Path) -> dict:
    return json.loads((output_dir / "all_results.json").read_text())


def _validation_images(root: Path, task: str) -> list[Image.Image]:
    if task == "classification":
        return [Image.open(root / "colours" / "validation" / name / "0.png").convert("RGB") for name in COLOURS]
    return [Image.open(p).convert("RGB") for p in sorted((root / "squares" / "validation" / "images").iterdir())[:2]]


def _check_classification_pipeline(output_dir: Path, images) -> None:
    """The saved folder loads through `pipeline` and gives the probabilities of a manual forward."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    classifier = pipeline("image-classification", model=str(output_dir))
    model = AutoModelForImageClassification.from_pretrained(output_dir).eval()
    processor = AutoImageProcessor.from_pretrained(output_dir)
    for image in images:
        with torch.no_grad():
            probs = model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
        predictions = classifier(image, top_k=len(COLOURS))
        assert len(predictions) == len(COLOURS)
        for prediction in predictions:
            expected = probs[model.config.label2id[prediction["label"]]].item()
            # the same logits; two float32 softmaxes over n = 3 classes differ by <= (n + 3) EPS32
            assert prediction["score"] == pytest.approx(expected, rel=0, abs=6 * EPS32)


def _check_segmentation_pipeline(output_dir: Path, images) -> None:
    """The saved folder loads through `pipeline` and gives the masks of a manual forward + post-processing."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

    segmenter = pipeline("image-segmentation", model=str(output_dir))
    model = AutoModelForSemanticSegmentation.from_pretrained(output_dir).eval()
    processor = AutoImageProcessor.from_pretrained(output_dir)
    for image in images:
        with torch.no_grad():
            outputs = model(**processor(image, return_tensors="pt"))
        class_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0].numpy()
        segments = segmenter(image)
        assert {s["label"] for s in segments} == {model.config.id2label[i] for i in np.unique(class_map)}
        for segment in segments:
            expected = (class_map == model.config.label2id[segment["label"]]).astype(np.uint8) * 255
            np.testing.assert_array_equal(np.array(segment["mask"]), expected)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_image_classification_trainer_learns_colours_and_saves_a_pipeline_folder(workspace):
    root, out = workspace["root"], workspace["root"] / "cls_trainer"
    output = _run_here(
        workspace,
        [
            CLS_SCRIPT,
            "--model_name_or_path",
            root / "tiny",
            "--dataset_name",
            root / "colours",
            "--output_dir",
            out,
            "--do_train",
            "--do_eval",
            "--num_train_epochs",
            "3",
            "--learning_rate",
            "3e-3",
            "--image_size",
            "126",
            "--k_ratio",
            "0.25",
            *COMMON,
            *TRAINER_COMMON,
        ],
    )
    results = _results(out)
    # 3 balanced classes: chance is 1/3. The colour rule is learnt in 9 steps.
    assert results["eval_accuracy"] >= 0.9, results
    assert "eval_accuracy" in json.loads((out / "eval_results.json").read_text())
    assert str(out) in output and "accuracy = " in output
    # --image_size / --k_ratio are in the saved config and processor; the position embeddings were resized.
    config = json.loads((out / "config.json").read_text())
    assert config["extractor_config"]["image_size"] == 126 and config["k_ratio"] == 0.25
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"height": 126, "width": 126}
    assert load_file(out / "model.safetensors")["lookwhere.extractor.embeddings.position_embeddings"].shape == (
        1,
        81,
        32,
    )
    # --freeze_selector (default): the selector weights are the starting ones.
    start = LookWhereModel.from_pretrained(root / "tiny").selector.state_dict()
    tuned = LookWhereForImageClassification.from_pretrained(out).lookwhere.selector.state_dict()
    for name, tensor in start.items():
        torch.testing.assert_close(tuned[name], tensor, rtol=0, atol=0)
    _check_classification_pipeline(out, _validation_images(root, "classification"))


@pytest.mark.slow
def test_image_classification_no_trainer_resumes_to_the_same_weights(workspace):
    """An uninterrupted 6-step run saves `step_2`, `step_4`, `step_6` (3 steps per epoch: 24 images / batch 8); a
    second run resumes from `step_4`, in the middle of the second epoch, and trains to step 6. With a constant learning
    rate `step_4` holds exactly what a run stopped at step 4 would have saved. The resumed run, which loads its data
    in 2 worker processes, must end at the same weights: data order, skipped batches, optimizer and scheduler state
    restored, and every image's augmentation seeded by (seed, epoch, index) wherever it is fetched."""
    root = workspace["root"]
    full, resumed = root / "cls_nt_full", root / "cls_nt_resumed"
    args = [
        CLS_NT_SCRIPT,
        "--model_name_or_path",
        root / "tiny",
        "--dataset_name",
        root / "colours",
        "--learning_rate",
        "3e-3",
        "--lr_scheduler_type",
        "constant",
        "--max_train_steps",
        "6",
        *COMMON,
    ]
    _run_here(workspace, [*args, "--output_dir", full, "--checkpointing_steps", "2"])
    assert sorted(p.name for p in full.glob("step_*")) == ["step_2", "step_4", "step_6"]
    resume = ["--output_dir", resumed, "--resume_from_checkpoint", full / "step_4", "--dataloader_num_workers", "2"]
    output = _run_here(workspace, args + resume)
    assert "Resuming from" in output

    final, again, halfway = (load_file(p / "model.safetensors") for p in (full, resumed, full / "step_4"))
    moved = max((final[k] - halfway[k]).abs().max().item() for k in final)
    assert moved > 1e-3  # the last two steps changed the weights (an AdamW step moves a weight by ~lr = 3e-3) ...
    for name in final:  # ... and the resumed run made exactly the same changes
        torch.testing.assert_close(again[name], final[name], rtol=0, atol=0)  # same kernels, data, order: exact
    results_full, results_resumed = _results(full), _results(resumed)
    assert results_resumed["train_steps"] == results_full["train_steps"] == 6
    assert results_resumed["eval_accuracy"] == results_full["eval_accuracy"] >= 0.9
    assert json.loads((resumed / "eval_results.json").read_text())["eval_accuracy"] == results_full["eval_accuracy"]
    _check_classification_pipeline(resumed, _validation_images(root, "classification"))


@pytest.mark.slow
def test_semantic_segmentation_trainer_learns_the_square(workspace):
    root, out = workspace["root"], workspace["root"] / "seg_trainer"
    output = _run_here(
        workspace,
        [
            SEG_SCRIPT,
            "--model_name_or_path",
            root / "tiny",
            "--dataset_name",
            root / "squares",
            "--output_dir",
            out,
            "--do_train",
            "--do_eval",
            "--num_train_epochs",
            "10",
            "--learning_rate",
            "3e-3",
            "--k_ratio",
            "0.5",
            "--freeze_selector",
            "False",
            *COMMON,
            *TRAINER_COMMON,
        ],
    )
    results = _results(out)
    # Predicting background everywhere gives mean IoU 0.43 (square IoU 0); the square covers 14% of the image.
    assert results["eval_mean_iou"] >= 0.65, results
    assert results["eval_iou_square"] >= 0.4 and results["eval_iou_background"] >= 0.85, results
    assert "mean_iou = " in output and str(out) in output
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "background", "1": "square"} and config["freeze_selector"] is False
    # --freeze_selector False: the selector backbone trained (through the CLS/register tokens it hands the
    # extractor); its scoring head gets no gradient (top-k is not differentiable) and stays as it was.
    start = LookWhereModel.from_pretrained(root / "tiny").selector.state_dict()
    tuned = LookWhereForSemanticSegmentation.from_pretrained(out).lookwhere.selector.state_dict()
    assert (tuned["encoder.layer.0.mlp.fc1.weight"] - start["encoder.layer.0.mlp.fc1.weight"]).abs().max() > 1e-3
    torch.testing.assert_close(tuned["head.fc2.weight"], start["head.fc2.weight"], rtol=0, atol=0)
    _check_segmentation_pipeline(out, _validation_images(root, "segmentation"))


@pytest.mark.slow
def test_semantic_segmentation_no_trainer_under_accelerate_launch_two_processes(workspace):
    """`accelerate launch` without a config file, 2 CPU processes (gloo). accelerate 1.15 only starts several CPU
    processes with `--multi_gpu` (its `--cpu` flag runs a single process unless MPI is set up); the script then
    chooses CPU distributed training itself."""
    root, out = workspace["root"], workspace["root"] / "seg_nt_2proc"
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
    ]
    output = _run(
        workspace,
        [
            SEG_NT_SCRIPT,
            "--model_name_or_path",
            root / "tiny",
            "--dataset_name",
            root / "squares",
            "--output_dir",
            out,
            "--num_train_epochs",
            "12",
            "--learning_rate",
            "3e-3",
            "--k_ratio",
            "0.5",
            "--per_device_eval_batch_size",
            "4",
            "--dataloader_num_workers",
            "0",
            "--per_device_train_batch_size",
            "4",
            "--seed",
            "0",
        ],
        launcher=launcher,
    )
    assert "(2 processes x 4 x 1 accumulation)" in output
    results = _results(out)
    assert results["train_steps"] == 36  # 24 images / (2 processes x 4) = 3 steps per epoch, 12 epochs
    assert results["eval_mean_iou"] >= 0.65 and results["eval_iou_square"] >= 0.4, results
    assert json.loads((out / "eval_results.json").read_text())["eval_mean_iou"] == results["eval_mean_iou"]
    _check_segmentation_pipeline(out, _validation_images(root, "segmentation"))


# --------------------------------------------------------------------------------------------- argument errors
def _run_in_process(script: Path, args, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", [str(script), *[str(a) for a in args]])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "script, change, message",
    [
        (CLS_SCRIPT, {"--dataset_name": "{root}/missing_folder"}, "no such folder"),
        (CLS_SCRIPT, {"--label_column_name": "species"}, "--label_column_name 'species' is not a column"),
        (
            CLS_SCRIPT,
            {"--image_size": "100"},
            "--image_size 100 is not a positive multiple of the patch size 14: use e.g. 98 or 112",
        ),
        (CLS_NT_SCRIPT, {"--k_ratio": "1.5"}, "--k_ratio 1.5 is out of range"),
        (SEG_SCRIPT, {"--k_ratio": "0"}, "must be in (0, 1]"),
        (SEG_NT_SCRIPT, {"--low_res_size": "50"}, "--low_res_size 50 is not a positive multiple"),
        (SEG_SCRIPT, {"--model_name_or_path": None}, "No model given"),
        (CLS_SCRIPT, {"--init_from_dinov2": "{root}/tiny"}, "Pass either --model_name_or_path or --init_from_dinov2"),
        (SEG_SCRIPT, {"--model_name_or_path": "{root}/colours"}, "could not load its config.json"),
        (CLS_NT_SCRIPT, {"--push_to_hub": "true"}, "--push_to_hub needs the Hub, but HF_HUB_OFFLINE is set"),
        (SEG_NT_SCRIPT, {"--checkpointing_steps": "often"}, "--checkpointing_steps must be a positive number"),
        (CLS_NT_SCRIPT, {"--resume_from_checkpoint": "{root}/colours"}, "expected a checkpoint folder named step_<N>"),
        (CLS_SCRIPT, {"--dataset_name": None}, "No dataset given"),
        (CLS_NT_SCRIPT, {"--dataset_name": "someone/not_a_cached_dataset"}, "could not load it"),
        (SEG_SCRIPT, {"--model_name_or_path": "someone/not_a_cached_model"}, "unreachable offline"),
    ],
)
def test_bad_arguments_stop_before_training(workspace, monkeypatch, capsys, script, change, message):
    root = workspace["root"]
    dataset = root / ("colours" if "classification" in script.name else "squares")
    out = root / f"never_{script.stem}"
    args = {
        "--model_name_or_path": root / "tiny",
        "--dataset_name": dataset,
        "--output_dir": out,
        "--cache_dir": root / "cache",
    }
    args.update({key: (value.format(root=root) if value else value) for key, value in change.items()})
    argv = [item for key, value in args.items() if value is not None for item in (key, value)]
    if "no_trainer" not in script.name:
        argv += ["--do_train", "--do_eval", "--report_to", "none"]
    error = _run_in_process(script, argv, monkeypatch, capsys)
    assert message in error, error
    assert f"{script.name}: error: " in error
    assert not (out / "model.safetensors").exists() and not (out / "all_results.json").exists()


# --------------------------------------------------------------------------------------------- shared pieces
def test_set_model_resolution_resizes_weights_config_and_keeps_the_head(tmp_path):
    model = LookWhereForImageClassification(make_tiny_config(num_labels=2)).eval()
    head_outputs = model.lookwhere.selector.head.fc2.out_features
    changes = set_model_resolution(model, image_size=140, low_res_size=70)
    assert len(changes) == 2
    assert model.config.high_res_size == 140 and model.config.low_res_size == 70
    assert model.lookwhere.extractor.embeddings.position_embeddings.shape == (1, 100, 32)
    assert model.lookwhere.selector.embeddings.position_embeddings.shape == (1, 25, 32)
    assert model.config.selector_upsample_factor**2 == head_outputs  # the selector head keeps its r * r outputs
    pixels = torch.randn(1, 3, 140, 140)
    with torch.no_grad():
        logits = model(pixels).logits
    model.save_pretrained(tmp_path)
    reloaded = LookWhereForImageClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.high_res_size == 140 and reloaded.config.low_res_size == 70
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels).logits, logits, rtol=0, atol=0)  # same weights and kernels


def test_build_model_from_dinov2_and_from_lookwhere(tmp_path):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    teacher = Dinov2WithRegistersModel(
        Dinov2WithRegistersConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            patch_size=14,
            image_size=112,
            num_register_tokens=4,
        )
    )
    teacher.save_pretrained(tmp_path / "dinov2")
    args = ModelArguments(init_from_dinov2=str(tmp_path / "dinov2"), selector_depth=1, low_res_size=56, k_ratio=0.5)
    model, processor = build_model_and_processor(SEMANTIC_SEGMENTATION, args, {0: "bg", 1: "fg"})
    assert isinstance(model, LookWhereForSemanticSegmentation) and model.config.id2label == {0: "bg", 1: "fg"}
    assert model.config.high_res_size == 112 and model.config.low_res_size == 56 and model.config.k_ratio == 0.5
    assert processor.size["height"] == 112 and processor.low_res_size["height"] == 56
    assert not any(p.requires_grad for p in model.lookwhere.selector.parameters())  # --freeze_selector default
    copied = model.lookwhere.extractor.encoder.layer[1].mlp.fc1.weight
    torch.testing.assert_close(copied, teacher.encoder.layer[1].mlp.fc1.weight, rtol=0, atol=0)

    # From LookWhere weights, with another label count, the selector unfrozen and a new size.
    model.save_pretrained(tmp_path / "lw")
    args = ModelArguments(
        model_name_or_path=str(tmp_path / "lw"), freeze_selector=False, image_size=98, ignore_mismatched_sizes=True
    )
    model, processor = build_model_and_processor(SEMANTIC_SEGMENTATION, args, {0: "a", 1: "b", 2: "c"})
    assert model.config.num_labels == 3 and model.classifier.out_features == 3
    # the selector's backbone trains; its head gets no gradient through top-k and stays frozen
    trainable = {name for name, p in model.lookwhere.selector.named_parameters() if p.requires_grad}
    assert trainable == {
        name for name, _ in model.lookwhere.selector.named_parameters() if not name.startswith("head.")
    }
    assert model.config.high_res_size == 98 and processor.size["height"] == 98
    with pytest.raises(ArgumentError, match="ignore_mismatched_sizes"):
        build_model_and_processor(
            SEMANTIC_SEGMENTATION,
            ModelArguments(model_name_or_path=str(tmp_path / "lw")),
            {i: str(i) for i in range(5)},
        )


def test_segmentation_transform_keeps_masks_aligned(tmp_path):
    rng = np.random.default_rng(1)
    samples = [_square_sample(rng) for _ in range(6)]
    # Non-square inputs, so that the random crops change aspect ratio as well as position.
    images = [Image.fromarray(np.concatenate([image, image[:, :40]], axis=1)) for image, _ in samples]
    masks = [Image.fromarray(np.concatenate([mask, mask[:, :40]], axis=1)) for _, mask in samples]
    transform = SegmentationTransform(_tiny_processor(), "image", "label", train=True)
    torch.manual_seed(0)
    batch = transform({"image": images * 3, "label": masks * 3})
    for pixels, labels in zip(batch["pixel_values"], batch["labels"], strict=True):
        assert pixels.shape == (3, 112, 112) and labels.shape == (112, 112) and labels.dtype == torch.int64
        red = pixels[0] > 1.0  # normalized red channel: the square is far above the grey background
        agreement = (red == (labels == 1)).float().mean().item()
        assert agreement > 0.97, agreement  # only pixels on the square's border may differ (nearest vs bicubic)
    assert set(torch.cat([label.flatten() for label in batch["labels"]]).unique().tolist()) <= {0, 1}
    assert batch["low_res_pixel_values"][0].shape == (3, 56, 56)

    np.testing.assert_array_equal(reduce_mask_labels(np.array([[0, 1, 2, 255]])), [[255, 0, 1, 255]])
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    images[0].save(tmp_path / "images" / "a.png")
    with pytest.raises(ArgumentError, match="have no mask"):
        load_image_mask_pairs(tmp_path)
    masks[0].save(tmp_path / "masks" / "a.png")
    pairs = load_image_mask_pairs(tmp_path)
    assert pairs.column_names == ["image", "label"] and len(pairs) == 1


def test_load_datasets_from_saved_folders_train_dirs_and_held_out_split(workspace, tmp_path):
    import datasets

    root = workspace["root"]
    model_args = ModelArguments(model_name_or_path=str(root / "tiny"), cache_dir=str(tmp_path / "cache"))
    # A dataset saved with save_to_disk, string labels in another column, no validation split.
    images = [Image.fromarray(np.full((20, 20, 3), c, np.uint8)) for c in (0, 100, 200, 250) * 5]
    saved = datasets.Dataset.from_dict({"picture": images, "species": ["cat", "dog", "emu", "dog"] * 5})
    saved.save_to_disk(tmp_path / "saved")
    data_args = DataTrainingArguments(
        dataset_name=str(tmp_path / "saved"),
        image_column_name="picture",
        label_column_name="species",
        train_val_split=0.25,
        max_train_samples=10,
    )
    dataset = load_datasets(data_args, model_args, task="image-classification", seed=0)
    assert len(dataset["train"]) == 10 and len(dataset["validation"]) == 5  # 25% of 20 held out, then 10 kept
    dataset, id2label = prepare_classification_labels(dataset, "species")
    assert id2label == {0: "cat", 1: "dog", 2: "emu"}
    assert isinstance(dataset["validation"].features["species"], datasets.ClassLabel)

    # --train_dir / --validation_dir imagefolders.
    data_args = DataTrainingArguments(
        train_dir=str(root / "colours" / "train"),
        validation_dir=str(root / "colours" / "validation"),
        max_eval_samples=5,
    )
    dataset = load_datasets(data_args, model_args, task="image-classification")
    assert len(dataset["train"]) == 24 and len(dataset["validation"]) == 5
    assert prepare_classification_labels(dataset, "label")[1] == {0: "blue", 1: "green", 2: "red"}

    # Segmentation: a saved dataset with an "annotation" column is found without --label_column_name, and the
    # classes are counted from the masks (no id2label.json), after --reduce_labels.
    pairs = load_image_mask_pairs(root / "squares" / "validation").rename_column("label", "annotation")
    pairs = pairs.map(lambda ex: {"annotation": Image.fromarray(np.array(ex["annotation"]) + 1)})
    datasets.DatasetDict({"train": pairs, "validation": pairs}).save_to_disk(tmp_path / "saved_seg")
    seg_args = SegmentationDataArguments(dataset_name=str(tmp_path / "saved_seg"), reduce_labels=True)
    dataset = load_datasets(seg_args, model_args, task="semantic-segmentation")
    assert seg_args.label_column_name == "annotation" and len(dataset["validation"]) == 8
    assert prepare_segmentation_labels(dataset, seg_args) == {0: "class_0", 1: "class_1"}
    # The local images/ + masks/ layout with train/ and validation/ and an id2label.json.
    seg_args = SegmentationDataArguments(dataset_name=str(root / "squares"))
    dataset = load_datasets(seg_args, model_args, task="semantic-segmentation")
    assert (len(dataset["train"]), len(dataset["validation"])) == (24, 8)
    assert prepare_segmentation_labels(dataset, seg_args) == {0: "background", 1: "square"}


def test_seeded_dataset_augments_an_example_the_same_in_any_order_batch_or_worker(workspace):
    """The random crop / flip of example i is a function of (seed, epoch, i): the same whatever was fetched before,
    in which batch, in which data-loader worker; the global RNG is left as it was."""
    import datasets

    folder = workspace["root"] / "colours" / "train" / "red"
    images = [Image.open(path).convert("RGB") for path in sorted(folder.iterdir())[:6]]
    dataset = datasets.Dataset.from_dict({"image": images, "label": [0] * 6})
    dataset.set_transform(ClassificationTransform(_tiny_processor(), "image", "label", train=True))
    seeded = SeededDataset(dataset, seed=3)

    state = torch.get_rng_state()
    in_order = [seeded[i]["pixel_values"] for i in range(6)]
    assert torch.equal(torch.get_rng_state(), state)
    backwards = [seeded[i]["pixel_values"] for i in reversed(range(6))][::-1]
    loader = torch.utils.data.DataLoader(seeded, batch_size=4, num_workers=2, collate_fn=collate_fn)
    batched = torch.cat([batch["pixel_values"] for batch in loader])
    for i in range(6):
        torch.testing.assert_close(backwards[i], in_order[i], rtol=0, atol=0)
        torch.testing.assert_close(batched[i], in_order[i], rtol=0, atol=0)
    # the crops really are random: other examples, another epoch, another seed give other crops
    assert not torch.equal(in_order[0], in_order[1])
    seeded.set_epoch(1)
    assert not torch.equal(seeded[0]["pixel_values"], in_order[0])
    assert not torch.equal(SeededDataset(dataset, seed=4)[0]["pixel_values"], in_order[0])


def test_resolve_checkpoint_latest_and_wrong_folders(tmp_path):
    for name in ("checkpoint-2", "step_4", "checkpoint-10", "epoch_0", "notes"):
        (tmp_path / name).mkdir()
    for age, name in enumerate(("checkpoint-10", "checkpoint-2", "epoch_0", "step_4", "notes")):
        os.utime(tmp_path / name, (1_000_000 + age, 1_000_000 + age))  # newest last
    assert resolve_checkpoint(None, str(tmp_path)) is None
    assert resolve_checkpoint("latest", str(tmp_path)) == tmp_path / "step_4"
    assert resolve_checkpoint("last", str(tmp_path), TRAINER_CHECKPOINT) == tmp_path / "checkpoint-2"
    assert resolve_checkpoint("latest", str(tmp_path / "nothing_here")) is None  # starts from scratch
    assert resolve_checkpoint(str(tmp_path / "epoch_0"), str(tmp_path)) == tmp_path / "epoch_0"
    with pytest.raises(ArgumentError, match="named checkpoint-<N>"):
        resolve_checkpoint(str(tmp_path / "step_4"), str(tmp_path), TRAINER_CHECKPOINT)
    with pytest.raises(ArgumentError, match="named step_<N> or epoch_<N>"):
        resolve_checkpoint(str(tmp_path / "notes"), str(tmp_path))
