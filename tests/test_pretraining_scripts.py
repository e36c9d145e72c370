"""End to end: examples/pytorch/pretraining/run_pretraining.py (Trainer) and run_pretraining_no_trainer.py (accelerate).

A tiny random DINOv2-with-registers teacher and generated images (an imagefolder and a `save_to_disk` dataset) are
written to tmp dirs. One-process runs happen in-process (fast); the two-process runs use `torchrun` and
`accelerate launch` with the gloo backend on CPU.
"""

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EPS32
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    ViTConfig,
    ViTModel,
)

from lookwhere_hf import LookWhereForImageClassification, LookWhereModel
from lookwhere_hf.training import PretrainingDataArguments, PretrainingModelArguments, load_pretraining_dataset

SCRIPTS = Path(__file__).resolve().parents[1] / "examples" / "pytorch" / "pretraining"
# With 2 processes on a 2-core machine, one thread each (also much faster for tiny models on a shared CPU).
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# The attention key biases get no gradient in exact arithmetic (q . b_k is the same for every key of a query, and a
# softmax ignores a common shift): their float gradients are rounding noise, which AdamW normalizes into steps of up
# to ~lr, so their values depend on the order of every sum. Comparisons across reduction orders leave them out.
NOISE_ONLY = ("attention.k_proj.bias",)
# Weights after 6 AdamW steps (lr 1e-3), 2 processes x batch 2 vs 1 process x batch 4: the gradients differ by the
# rounding of the batch and all-reduce sums (a relative c u for a sum of condition number c), which changes an AdamW
# step of size ~lr by ~c u lr; a synchronization bug changes whole steps (~lr). 0.1 lr = 1e-4 sits between the two
# with orders of magnitude to spare on either side (c up to ~1e5).
DDP_ATOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def scripts():
    """The `main` functions of the two scripts (each script stands alone: no imports between them)."""
    return tuple(
        runpy.run_path(str(SCRIPTS / f"{name}.py"))["main"]
        for name in ("run_pretraining", "run_pretraining_no_trainer")
    )


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretraining_assets")
    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=4,
        patch_size=14,
        image_size=112,
        num_register_tokens=4,
        initializer_range=0.2,
    )
    Dinov2WithRegistersModel(config).save_pretrained(root / "teacher")
    rng = np.random.default_rng(0)
    (root / "images" / "train").mkdir(parents=True)
    arrays = []
    for i in range(16):
        img = np.full((120, 130, 3), 30, np.uint8) + rng.integers(0, 20, (120, 130, 3)).astype(np.uint8)
        for _ in range(2):
            side = rng.integers(16, 40)
            y, x = rng.integers(0, 120 - side), rng.integers(0, 130 - side)
            img[y : y + side, x : x + side] = rng.integers(120, 255, 3)
        Image.fromarray(img).save(root / "images" / "train" / f"{i:02d}.png")
        arrays.append(img)
    import datasets

    images = [Image.fromarray(a) for a in arrays[:8]]
    features = datasets.Features({"image": datasets.Image()})
    datasets.Dataset.from_dict({"image": images}, features=features).save_to_disk(root / "saved")
    datasets.Dataset.from_dict(
        {"picture": images}, features=datasets.Features({"picture": datasets.Image()})
    ).save_to_disk(root / "wrong_column")
    (root / "empty").mkdir()
    return root


def common_args(assets, out, batch=4, steps=6):
    return [
        "--teacher_name_or_path", str(assets / "teacher"), "--train_dir", str(assets / "images"),
        "--image_size", "112", "--low_res_size", "56", "--selector_depth", "1", "--k_min", "4", "--k_max", "32",
        "--per_device_train_batch_size", str(batch), "--learning_rate", "1e-3", "--seed", "7",
        "--output_dir", str(out),
    ]  # fmt: skip


TRAINER_ARGS = ["--max_steps", "6", "--save_steps", "3", "--logging_steps", "1", "--use_cpu", "--report_to", "none"]
NO_TRAINER_ARGS = ["--max_train_steps", "6", "--checkpointing_steps", "3", "--logging_steps", "1", "--cpu"]


def weights(folder):
    return load_file(Path(folder) / "model.safetensors")


def trainer_state(folder):
    return json.loads((Path(folder) / "trainer_state.json").read_text())


def max_diff(a, b, skip=()):
    assert set(a) == set(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if not k.endswith(skip))


@pytest.fixture(scope="module")
def trainer_run(scripts, assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("trainer") / "out"
    scripts[0](common_args(assets, out) + TRAINER_ARGS)
    return out, trainer_state(out)["log_history"]


# ----------------------------------------------------------------------------------------------------- Trainer
def test_trainer_logs_every_component_and_saves_the_student_only(trainer_run, assets):
    out, history = trainer_run
    steps = [entry for entry in history if "loss_cls" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3, 4, 5, 6]
    for entry in steps:
        for name in ("loss", "loss_cls", "loss_dense", "loss_map", "top_k_agreement"):
            assert np.isfinite(entry[name])
        # the logged total is the weighted sum of the logged components (weights 1, 1, 0.1)
        # components logged rounded to 6 decimals (5e-7 each, 2.1 x that weighted), the total in float32 (a few u)
        assert entry["loss"] == pytest.approx(
            entry["loss_cls"] + entry["loss_dense"] + 0.1 * entry["loss_map"], rel=8 * EPS32, abs=1.05e-6
        )

    student_keys = {f"lookwhere.{name}" for name in LookWhereModel.from_pretrained(out).state_dict()}
    for folder in (out, out / "checkpoint-3", out / "checkpoint-6"):
        # exactly the student's tensors: no teacher weights in any checkpoint
        assert set(weights(folder)) == student_keys
    assert (out / "preprocessor_config.json").exists()

    # A pretraining checkpoint loads directly into the downstream classes, with the student's weights.
    saved = weights(out / "checkpoint-3")
    base = LookWhereModel.from_pretrained(out / "checkpoint-3")
    clf = LookWhereForImageClassification.from_pretrained(out / "checkpoint-3", num_labels=5)
    for name, tensor in saved.items():
        short = name[len("lookwhere.") :]
        assert torch.equal(base.state_dict()[short], tensor)
        assert torch.equal(clf.lookwhere.state_dict()[short], tensor)
    assert max_diff(saved, weights(out / "checkpoint-6")) > 1e-4  # training changed the weights


def test_trainer_resume_matches_uninterrupted_run(scripts, assets, trainer_run, tmp_path):
    full, _ = trainer_run
    # An interrupted run: its output folder holds only checkpoint-3 (checkpoints do not depend on later steps).
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(full / "checkpoint-3", out / "checkpoint-3")
    scripts[0](common_args(assets, out) + TRAINER_ARGS + ["--resume_from_checkpoint", "last"])
    assert trainer_state(out)["global_step"] == 6
    # Exact: the same kernels on the same data in the same order (augmentation seeded per image and epoch, k per step).
    assert max_diff(weights(out), weights(full)) == 0


@pytest.mark.slow
def test_trainer_two_processes_match_one_process_with_double_batch(assets, trainer_run, tmp_path):
    full, _ = trainer_run
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(SCRIPTS / "run_pretraining.py")]
    result = subprocess.run(
        cmd + common_args(assets, out, batch=2) + TRAINER_ARGS,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert max_diff(weights(out), weights(full), skip=NOISE_ONLY) < DDP_ATOL


def test_trainer_streaming_from_a_saved_dataset(scripts, assets, tmp_path):
    out = tmp_path / "stream"
    args = [*common_args(assets, out), "--max_steps", "2", "--logging_steps", "1", "--use_cpu", "--report_to", "none"]
    args[args.index("--train_dir") : args.index("--train_dir") + 2] = ["--dataset_name", str(assets / "saved")]
    scripts[0]([*args, "--streaming", "--no_augment"])
    state = trainer_state(out)
    assert state["global_step"] == 2
    assert [e["step"] for e in state["log_history"] if "loss_map" in e] == [1, 2]
    assert all(name.startswith("lookwhere.") for name in weights(out))


# ----------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "change, message",
    [
        ({"--train_dir": "{root}/missing"}, "--train_dir '.*missing': no such folder"),
        ({"--train_dir": "{root}/empty"}, "--train_dir '.*empty': could not load it"),
        ({"--train_dir": None, "--dataset_name": "{root}/wrong_column"}, "'image' is not a column.*picture"),
        ({"--train_dir": None, "--dataset_name": "{root}/saved", "--image_column_name": "pixels"}, "is not a column"),
        ({"--train_dir": None, "--dataset_name": "{root}/saved", "--train_split": "test"}, "no split 'test'.*'train'"),
        ({"--k_min": "40", "--k_max": "20"}, "k_min <= --k_max"),
        ({"--k_min": "80", "--k_max": "90"}, "exceeds the 64 patches"),
        ({"--image_size": "120"}, "--image_size 120 is not a positive multiple of the patch size 14: use e.g. 112"),
        ({"--low_res_size": "126"}, "--low_res_size 126 must not exceed --image_size 112"),
        ({"--teacher_name_or_path": "{root}/vit"}, "is a 'vit' model; it needs a DINOv2-with-registers"),
        ({"--teacher_name_or_path": "{root}/nowhere"}, "--teacher_name_or_path '.*nowhere': no such folder"),
        ({"--teacher_name_or_path": None}, "No teacher given"),
        ({"--selector_depth": "5"}, "selector_depth"),
        ({"--streaming": ""}, "needs --max_steps"),
    ],
)
def test_bad_inputs_fail_before_training(scripts, assets, tmp_path, change, message):
    if not (assets / "vit").exists():
        vit = ViTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=112,
            patch_size=14,
        )
        ViTModel(vit).save_pretrained(assets / "vit")
    args = [*common_args(assets, tmp_path / "out"), "--max_steps", "-1", "--use_cpu", "--report_to", "none"]
    for flag, value in change.items():
        if flag in args:
            i = args.index(flag)
            del args[i : i + 2]
        if value is not None:
            args += [flag] + ([value.format(root=assets)] if value else [])
    with pytest.raises(ValueError, match=message):
        scripts[0](args)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_student_that_does_not_fit_the_teacher_is_rejected(scripts, assets, trainer_run, tmp_path):
    """--model_name_or_path (continue from a student) with a teacher of another width."""
    wide = Dinov2WithRegistersConfig(
        hidden_size=48, num_hidden_layers=1, num_attention_heads=2, patch_size=14, image_size=112, num_register_tokens=4
    )
    Dinov2WithRegistersModel(wide).save_pretrained(tmp_path / "wide")
    args = [*common_args(assets, tmp_path / "out"), "--max_steps", "1", "--use_cpu", "--report_to", "none"]
    args[args.index("--teacher_name_or_path") + 1] = str(tmp_path / "wide")
    with pytest.raises(ValueError, match="hidden size"):
        scripts[0]([*args, "--model_name_or_path", str(trainer_run[0])])


# ----------------------------------------------------------------------------------------------------- no_trainer
@pytest.mark.slow
def test_no_trainer_resume_and_two_processes(scripts, assets, tmp_path, capsys):
    no_trainer = scripts[1]
    full = tmp_path / "full"
    no_trainer(common_args(assets, full) + NO_TRAINER_ARGS)
    log = capsys.readouterr().out
    assert '"loss_map"' in log and '"top_k_agreement"' in log and "Saved the pretrained student" in log
    assert set(weights(full / "step_3")) == set(weights(full))  # student only in the accelerate checkpoints too
    assert all(name.startswith("lookwhere.") for name in weights(full))

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "step_3", resumed / "step_3")
    no_trainer(common_args(assets, resumed) + NO_TRAINER_ARGS + ["--resume_from_checkpoint", "last"])
    assert max_diff(weights(resumed), weights(full)) == 0  # exact, as for the Trainer

    ddp = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    script = str(SCRIPTS / "run_pretraining_no_trainer.py")
    result = subprocess.run(
        [*launcher, script, *common_args(assets, ddp, batch=2), *NO_TRAINER_ARGS],
        env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert max_diff(weights(ddp), weights(full), skip=NOISE_ONLY) < DDP_ATOL


def test_train_dir_with_split_folders_trains_on_the_chosen_split_only(assets, tmp_path):
    """`--train_dir` is one imagefolder: its train/ and validation/ sub-folders are splits, not one pool of images
    (a benchmark passes its data root, whose validation and test images must not be pretrained on)."""
    for split, count in (("train", 3), ("validation", 2)):
        (tmp_path / split).mkdir()
        for i in range(count):
            shutil.copy(assets / "images" / "train" / f"{i:02d}.png", tmp_path / split / f"{i}.png")
    for split, count in (("train", 3), ("validation", 2)):
        data_args = PretrainingDataArguments(train_dir=str(tmp_path), train_split=split, no_augment=True)
        hub = PretrainingModelArguments(cache_dir=str(tmp_path / "cache"))
        dataset = load_pretraining_dataset(data_args, hub, lambda batch: batch, seed=0)
        assert len(dataset) == count
